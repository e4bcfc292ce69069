"""The database schema: who uploads (facility, user), what arrives (batch, upload, chunk),
what it is (study, series, instance) and where it goes (destination, delivery).

PostgreSQL is the source of truth in production; the same models run on SQLite for the
embedded demo. Every row a facility owns carries ``facility_id`` so queries can be scoped.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timestamps always come back timezone-aware in UTC, on PostgreSQL and SQLite alike
    (SQLite drops the zone; PostgreSQL returns the session's offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:  # noqa: ANN001
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:  # noqa: ANN001
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime}


class Role(enum.StrEnum):
    UPLOADER = "uploader"
    QA_MANAGER = "qa_manager"
    ADMIN = "admin"


class BatchState(enum.StrEnum):
    OPEN = "open"
    COMPLETED = "completed"  # the client said it sent everything
    FORWARDING = "forwarding"  # studies handed to the pacs queue
    DONE = "done"


class UploadState(enum.StrEnum):
    RECEIVING = "receiving"
    RECEIVED = "received"  # last byte in, assembly queued
    ASSEMBLED = "assembled"
    PARSED = "parsed"
    QUARANTINED = "quarantined"
    TERMINATED = "terminated"
    EXPIRED = "expired"


TERMINAL_UPLOAD_STATES = frozenset(
    {UploadState.PARSED, UploadState.QUARANTINED, UploadState.TERMINATED, UploadState.EXPIRED}
)


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    # Dead letter: refused for good, or gave up after the retry cap; kept with the reason,
    # never retried by itself, replayable (relaypacs deliveries retry).
    FAILED = "failed"


class Facility(Base):
    __tablename__ = "facilities"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"))
    # sha256 of a 256-bit random token: the token itself is shown once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    token_expires_at: Mapped[datetime | None]
    facility: Mapped[Facility] = relationship()


class Batch(Base):
    __tablename__ = "batches"
    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    label: Mapped[str | None] = mapped_column(String(200))
    template: Mapped[str | None] = mapped_column(String(200))
    overrides: Mapped[dict | None] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=BatchState.OPEN)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_activity_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]
    forwarding_started_at: Mapped[datetime | None]
    uploads: Mapped[list[Upload]] = relationship(back_populates="batch", order_by="Upload.id")


class Upload(Base):
    """One file sent over tus; its bytes live in staging chunks until assembled."""

    __tablename__ = "uploads"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    filename: Mapped[str] = mapped_column(String(255))
    length: Mapped[int] = mapped_column(BigInteger)
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[str] = mapped_column(String(16), default=UploadState.RECEIVING)
    # Optional whole-file digest the client declared in Upload-Metadata ("sha256 <b64>").
    declared_checksum: Mapped[str | None] = mapped_column(String(200))
    sha256: Mapped[str | None] = mapped_column(String(64))
    object_key: Mapped[str | None] = mapped_column(String(512))
    quarantine_reason: Mapped[str | None] = mapped_column(String(64))
    quarantine_detail: Mapped[str | None] = mapped_column(Text)
    # Lease held while one request appends a chunk; any API process may take it.
    lock_token: Mapped[str | None] = mapped_column(String(32))
    lock_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    batch: Mapped[Batch] = relationship(back_populates="uploads")
    chunks: Mapped[list[UploadChunk]] = relationship(
        order_by="UploadChunk.offset", cascade="all, delete-orphan"
    )


class UploadChunk(Base):
    """A staged PATCH body: stored as its own object so any process can serve the next."""

    __tablename__ = "upload_chunks"
    id: Mapped[int] = mapped_column(primary_key=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"))
    offset: Mapped[int] = mapped_column(BigInteger)
    length: Mapped[int] = mapped_column(BigInteger)
    object_key: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    __table_args__ = (UniqueConstraint("upload_id", "offset"),)


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    # Patient identifiers are PHI: kept for the PACS and the owning facility, never logged.
    patient_id: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))
    modality: Mapped[str | None] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.id")
    __table_args__ = (UniqueConstraint("facility_id", "study_instance_uid"),)


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")
    __table_args__ = (UniqueConstraint("study_id", "series_instance_uid"),)


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # The batch and upload that last brought this instance in.
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    series: Mapped[Series] = relationship(back_populates="instances")
    __table_args__ = (UniqueConstraint("facility_id", "sop_instance_uid"),)


class Destination(Base):
    __tablename__ = "destinations"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # stowrs | dimse | folder
    # Kind-specific settings: url/user/password, aet/host/port, path.
    options: Mapped[dict] = mapped_column(JSON, default=dict)
    # NULL: serves every facility.
    facility_id: Mapped[int | None] = mapped_column(ForeignKey("facilities.id"))
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"  # sending normally
    OPEN = "open"  # destination down: work waits, only probes go out
    HALF_OPEN = "half_open"  # a probe answered: one real request decides


class DestinationHealth(Base):
    """The circuit breaker of one destination, shared by every pacs worker."""

    __tablename__ = "destination_health"
    destination_id: Mapped[int] = mapped_column(ForeignKey("destinations.id"), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default=BreakerState.CLOSED)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    opened_at: Mapped[datetime | None]
    next_probe_at: Mapped[datetime | None]
    # Doubles with every failed probe, up to a cap; reset when the destination answers.
    probe_interval_seconds: Mapped[float] = mapped_column(default=0.0)
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RoutingRule(Base):
    """Send a facility's studies (optionally of one modality) to a destination.

    A facility with no rule sends everything to every destination that serves it."""

    __tablename__ = "routing_rules"
    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int | None] = mapped_column(ForeignKey("facilities.id"), index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    destination_id: Mapped[int] = mapped_column(ForeignKey("destinations.id"))
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class QueueCanary(Base):
    """Proof that a queue's workers consume: a canary task per queue stamps its row."""

    __tablename__ = "queue_canaries"
    queue: Mapped[str] = mapped_column(String(32), primary_key=True)
    sent_at: Mapped[datetime | None]
    consumed_at: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(String(200))


class Delivery(Base):
    """One instance to one destination: delivered exactly once, with every attempt counted."""

    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"))
    destination_id: Mapped[int] = mapped_column(ForeignKey("destinations.id"))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Who is sending it now: the Celery task id, so a redelivered task reclaims its rows.
    claim: Mapped[str | None] = mapped_column(String(64))
    status_code: Mapped[str | None] = mapped_column(String(16))  # HTTP or DICOM status
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    # When a deferred row may be tried again (backoff); NULL: now.
    next_attempt_at: Mapped[datetime | None]
    # Which stored bytes went out: the original, or a rewritten rendition of it.
    sent_object_key: Mapped[str | None] = mapped_column(String(512))
    sent_sha256: Mapped[str | None] = mapped_column(String(64))
    __table_args__ = (
        UniqueConstraint("instance_id", "destination_id"),
        Index("ix_deliveries_study_destination_state", "study_id", "destination_id", "state"),
    )


# --- templates, overrides, study organisation (issue 3) ---


class UploadTemplate(Base):
    """A facility's named set of DICOM attribute values for a common kind of exam."""

    __tablename__ = "upload_templates"
    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    # {keyword: value or [values]}, validated against the DICOM dictionary.
    attributes: Mapped[dict] = mapped_column(JSON, default=dict)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    updated_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("facility_id", "name"),)


class MetadataChange(Base):
    """Who changed what in a batch, and when: template applied, patient override, move.

    The template row also keeps the values as they were when applied, so a later edit of
    the template never changes a batch already under way."""

    __tablename__ = "metadata_changes"
    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))  # template | override | move
    subject: Mapped[str | None] = mapped_column(String(200))  # template name, PatientID, study
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class InstanceOrigin(Base):
    """Identity of an instance as its stored original says: what moves, overrides and
    problem detection compare against, without reading the object again."""

    __tablename__ = "instance_origins"
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))
    accession_number: Mapped[str | None] = mapped_column(String(16))


class InstanceRendition(Base):
    """A rewritten copy of an instance (a new object; the original is never changed)."""

    __tablename__ = "instance_renditions"
    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
    digest: Mapped[str] = mapped_column(String(64))  # of the original and the edits
    object_key: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    # Keywords set or removed, for the batch report (values stay in the object and the log).
    changed: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("instance_id", "digest"),)


# --- audit log (issue 9) ---


class AuditEvent(Base):
    """Who did what, when, from where. Append-only: the database refuses UPDATE and DELETE
    (triggers in the migration), so not even the application can rewrite history."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    facility_id: Mapped[int | None] = mapped_column(ForeignKey("facilities.id"), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[dict | None] = mapped_column(JSON)
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))


# --- analytics (issue 5) ---

# Upper bounds (ms) of the forwarding-latency histogram buckets; the last is open-ended.
# Histograms, unlike stored percentiles, add up across hours, users and facilities.
LATENCY_BUCKETS_MS = (250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000,
                      3_600_000, None)


# The measure columns a covering index carries (the names of _StatsMetrics' columns).
STATS_INCLUDE = ("uploads", "bytes", "studies", "quarantined", "delivered", "pending_deliveries",
                 "failed_deliveries", "latency_sum_ms", "latency_max_ms",
                 *(f"lat_b{i}" for i in range(len(LATENCY_BUCKETS_MS))))


class _StatsMetrics:
    """The measures shared by the hourly and the daily tables (all additive)."""

    uploads: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    studies: Mapped[int] = mapped_column(Integer, default=0)
    quarantined: Mapped[int] = mapped_column(Integer, default=0)
    delivered: Mapped[int] = mapped_column(Integer, default=0)
    pending_deliveries: Mapped[int] = mapped_column(Integer, default=0)
    failed_deliveries: Mapped[int] = mapped_column(Integer, default=0)
    latency_sum_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_max_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    lat_b0: Mapped[int] = mapped_column(Integer, default=0)
    lat_b1: Mapped[int] = mapped_column(Integer, default=0)
    lat_b2: Mapped[int] = mapped_column(Integer, default=0)
    lat_b3: Mapped[int] = mapped_column(Integer, default=0)
    lat_b4: Mapped[int] = mapped_column(Integer, default=0)
    lat_b5: Mapped[int] = mapped_column(Integer, default=0)
    lat_b6: Mapped[int] = mapped_column(Integer, default=0)
    lat_b7: Mapped[int] = mapped_column(Integer, default=0)
    lat_b8: Mapped[int] = mapped_column(Integer, default=0)
    lat_b9: Mapped[int] = mapped_column(Integer, default=0)
    lat_b10: Mapped[int] = mapped_column(Integer, default=0)
    lat_b11: Mapped[int] = mapped_column(Integer, default=0)


class HourlyStats(_StatsMetrics, Base):
    """Uploads of one hour (by creation), one facility, modality, upload state and user.

    Materialised by the analytics beat job from the raw rows (pipeline/analytics/stats.py); ``open``
    marks rows whose uploads or deliveries may still change, recomputed on every run."""

    __tablename__ = "hourly_stats"
    id: Mapped[int] = mapped_column(primary_key=True)
    hour: Mapped[datetime]
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"))
    modality: Mapped[str] = mapped_column(String(16), default="")
    status: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    open: Mapped[bool] = mapped_column(default=False)
    __table_args__ = (
        UniqueConstraint("hour", "facility_id", "modality", "status", "user_id",
                         name="uq_hourly_stats_key"),
        # Covering, facility first: one facility's (or user's) range is an index-only scan
        # instead of a heap page per row (a facility's hours are spread over the table).
        Index("ix_hourly_stats_facility_hour_cover", "facility_id", "hour",
              postgresql_include=["status", "modality", "user_id", *STATS_INCLUDE]),
        Index("ix_hourly_stats_user_hour_cover", "user_id", "hour",
              postgresql_include=["status", *STATS_INCLUDE]),
        Index("ix_hourly_stats_open", "open"),
    )


class DailyFacilityStats(_StatsMetrics, Base):
    """One facility's day, rolled up from hourly_stats: the admin overview reads a few
    hundred of these rows instead of tens of thousands of hourly ones."""

    __tablename__ = "daily_facility_stats"
    day: Mapped[datetime] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    __table_args__ = (
        Index("ix_daily_facility_stats_facility_day_cover", "facility_id", "day",
              postgresql_include=list(STATS_INCLUDE)),
    )


class WeeklyFacilityStats(_StatsMetrics, Base):
    """One facility's ISO week (Monday 00:00 UTC), rolled up from daily_facility_stats: a
    year by week reads 52 rows a facility instead of 365 (days at the range's edges that do
    not make a whole week still come from the daily rows)."""

    __tablename__ = "weekly_facility_stats"
    week: Mapped[datetime] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), primary_key=True)


class AnalyticsWatermark(Base):
    """How far the materialisation has looked at row changes (one row per job)."""

    __tablename__ = "analytics_watermarks"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


# Raw-row indexes for what stays on raw rows: finding changed rows since the watermark,
# a facility's or user's recent uploads (listings), and the naive per-modality queries.
Index("ix_uploads_created_facility", Upload.created_at, Upload.facility_id)
Index("ix_uploads_updated_at", Upload.updated_at)
Index("ix_uploads_user_created", Upload.user_id, Upload.created_at)
# The open-uploads limit counts a user's RECEIVING uploads on every tus creation: a partial
# index keeps that count to the few open ones instead of every upload the user ever sent.
Index("ix_uploads_user_receiving", Upload.user_id,
      postgresql_where=Upload.state == "receiving", sqlite_where=Upload.state == "receiving")
Index("ix_studies_created_modality", Study.created_at, Study.modality)
Index("ix_instances_upload_id", Instance.upload_id)
Index("ix_deliveries_updated_at", Delivery.updated_at)
Index("ix_deliveries_instance_state", Delivery.instance_id, Delivery.state)


# --- storage lifecycle (issue 6) ---


class StoredObjectKind(enum.StrEnum):
    INSTANCE = "instance"  # an instance's original, at its date-partitioned upload key
    BUNDLE = "bundle"  # a study's small instances in one tar, under the study's own prefix


class ObjectState(enum.StrEnum):
    KEPT = "kept"  # the object holds the bytes
    WRITING = "writing"  # a bundle being written (resumed by the next run if killed)
    BUNDLED = "bundled"  # bytes now in a bundle; deleting the own object is still to do
    RELEASED = "released"  # bundled, own object deleted
    REHYDRATED = "rehydrated"  # bundled, put back as its own object for a while (restore)
    MISSING = "missing"  # the catalogue names an object storage does not have


class DrState(enum.StrEnum):
    PENDING = "pending"
    COPIED = "copied"  # in the DR bucket, checksum verified
    FAILED = "failed"  # gave up after the retry cap; replayable
    REMOVED = "removed"  # not kept any more (bundled): its DR copy was deleted too


class RestoreState(enum.StrEnum):
    REQUESTED = "requested"  # recorded; the storage worker starts the S3 restore
    RESTORING = "restoring"  # S3 is restoring; expected_ready_at says when
    READY = "ready"  # readable; follow-up (re-forwarding) under way
    DONE = "done"
    FAILED = "failed"


class StoredObject(Base):
    """The catalogue of kept objects: what the lifecycle job decides from (never a listing).

    ``stored_at`` is the age reference (the upload's date); ``storage_class`` is what the
    object is in now; ``moving_to`` is set (and committed) before a copy starts, so a run
    killed half way knows which copies to check instead of repeating them."""

    __tablename__ = "stored_objects"
    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    object_key: Mapped[str] = mapped_column(String(512), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_class: Mapped[str] = mapped_column(String(32), default="STANDARD")
    state: Mapped[str] = mapped_column(String(16), default=ObjectState.KEPT)
    stored_at: Mapped[datetime]
    tiered_at: Mapped[datetime | None]
    moving_to: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text)
    # A bundled instance: the bundle that holds its bytes, and where (tar member data).
    bundle_id: Mapped[int | None] = mapped_column(ForeignKey("stored_objects.id"), index=True)
    bundle_offset: Mapped[int | None] = mapped_column(BigInteger)
    # Readable copies of cold bytes: S3's temporary restore, or a rehydrated bundle member.
    restored_until: Mapped[datetime | None]
    rehydrated_until: Mapped[datetime | None]
    # Disaster-recovery copy in the second bucket.
    dr_state: Mapped[str] = mapped_column(String(16), default=DrState.PENDING)
    dr_attempts: Mapped[int] = mapped_column(Integer, default=0)
    dr_next_attempt_at: Mapped[datetime | None]
    dr_copied_at: Mapped[datetime | None]
    dr_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (
        Index("ix_stored_objects_tiering", "state", "storage_class", "stored_at"),
        Index("ix_stored_objects_dr", "dr_state", "dr_next_attempt_at"),
    )


class RestoreRequest(Base):
    """Someone needs cold bytes back: a forward (dead letters replayed when ready) or a read."""

    __tablename__ = "restore_requests"
    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    # What was asked for, and the object that must come back for it (itself or its bundle).
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id"))
    stored_object_id: Mapped[int] = mapped_column(ForeignKey("stored_objects.id"), index=True)
    purpose: Mapped[str] = mapped_column(String(16))  # forward | read
    requested_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    state: Mapped[str] = mapped_column(String(16), default=RestoreState.REQUESTED, index=True)
    restore_tier: Mapped[str] = mapped_column(String(16), default="Standard")
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    expected_ready_at: Mapped[datetime | None]
    ready_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    detail: Mapped[str | None] = mapped_column(Text)


class StorageRun(Base):
    """One run of a storage job: when, for which clock, what it did; a killed run stays
    ``running`` until the next run of the same job marks it ``interrupted``."""

    __tablename__ = "storage_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    job: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="running")
    clock: Mapped[datetime]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    counts: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (Index("ix_storage_runs_job_started", "job", "started_at"),)


# --- reports and exports (issue 8) ---


class ReportRunState(enum.StrEnum):
    QUEUED = "queued"  # created by the dispatcher or "run now"; a task is on its way
    WORKING = "working"  # claimed by a worker; recovered after the working timeout
    RETRYING = "retrying"  # failed, another attempt is scheduled (error says why)
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # gave up after the retry cap; replayable through the API


class ReportDefinition(Base):
    """A QA manager's report: what to compute (metrics, filters, grouping), in which
    formats, for whom, and when (cron in an IANA timezone). ``next_due_at`` is what the
    dispatcher selects on; it is derived from the schedule, never edited by hand."""

    __tablename__ = "report_definitions"
    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    # The validated definition (pipeline/exports/definitions.py ReportSpec) as JSON.
    spec: Mapped[dict] = mapped_column(JSON, default=dict)
    cron: Mapped[str] = mapped_column(String(120))
    timezone: Mapped[str] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(default=True)
    next_due_at: Mapped[datetime | None]
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (
        UniqueConstraint("facility_id", "name", name="uq_report_definitions_facility_name"),
        Index("ix_report_definitions_due", "enabled", "next_due_at"),
    )


class ReportRun(Base):
    """One execution of a report for one due time. ``run_key`` (report and due time) is
    unique, so two dispatchers racing for the same slot create one row, one mail."""

    __tablename__ = "report_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("report_definitions.id", ondelete="CASCADE"),
                                           index=True)
    run_key: Mapped[str] = mapped_column(String(80), unique=True)
    trigger: Mapped[str] = mapped_column(String(16), default="schedule")  # schedule | manual
    due_at: Mapped[datetime]
    period_start: Mapped[datetime | None]
    period_end: Mapped[datetime | None]
    state: Mapped[str] = mapped_column(String(16), default=ReportRunState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    # {format-or-file name: object key}; kept across attempts so a retry re-sends, not rebuilds.
    artifacts: Mapped[dict] = mapped_column(JSON, default=dict)
    artifact_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    recipients_notified: Mapped[list] = mapped_column(JSON, default=list)
    # Set once the mail went out: a redelivered task never mails twice.
    notified_at: Mapped[datetime | None]
    delivery: Mapped[str | None] = mapped_column(String(16))  # attachment | link | none
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index("ix_report_runs_state_started", "state", "started_at"),)


# --- forecasts (issue 7) ---


class FacilityCalendar(Base):
    """A facility's closures for the forecast regressor: a country's public holidays (the
    ``holidays`` package) plus the facility's own closed days (ISO dates)."""

    __tablename__ = "facility_calendars"
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    country: Mapped[str | None] = mapped_column(String(8))
    subdivision: Mapped[str | None] = mapped_column(String(16))
    closed_days: Mapped[list] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class UploadForecast(Base):
    """One forecast run for one facility (``facility_id`` null: every facility together) and
    one measure (uploads or bytes): the model used, why, its backtest and the daily points."""

    __tablename__ = "upload_forecasts"
    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int | None] = mapped_column(ForeignKey("facilities.id"))
    metric: Mapped[str] = mapped_column(String(16))
    # "day": ``horizon`` days ahead; "hour": the next ``horizon`` hours (points carry "hour").
    granularity: Mapped[str] = mapped_column(String(8), default="day", server_default="day")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    horizon: Mapped[int] = mapped_column(Integer)
    # sarimax | seasonal_naive (daily); seasonal_naive | weekly_mean | profile (hourly)
    model: Mapped[str] = mapped_column(String(32))
    model_order: Mapped[list | None] = mapped_column(JSON)  # [[p, d, q], [P, D, Q, s]]
    aic: Mapped[float | None]
    train_start: Mapped[datetime | None]
    train_end: Mapped[datetime | None]
    fallback_reason: Mapped[str | None] = mapped_column(Text)
    regressors: Mapped[list] = mapped_column(JSON, default=list)
    candidates: Mapped[list] = mapped_column(JSON, default=list)
    backtest: Mapped[dict] = mapped_column(JSON, default=dict)
    points: Mapped[list] = mapped_column(JSON, default=list)
    __table_args__ = (Index("ix_upload_forecasts_facility_metric_created", "facility_id", "metric",
                            "created_at"),
                      Index("ix_upload_forecasts_granularity_facility_metric", "granularity", "facility_id",
                            "metric", "id"))
