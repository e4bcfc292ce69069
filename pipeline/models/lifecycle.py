"""Storage lifecycle: every kept object with its tier and state, restore requests, and the record
of each lifecycle run.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.models.base import Base, utcnow


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
