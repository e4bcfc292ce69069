"""Where instances go: destinations, their health (the shared circuit breaker), routing rules, one
delivery row per instance and destination, and the rewritten renditions that went out.
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
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.models.base import Base, utcnow


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    # Dead letter: refused for good, or gave up after the retry cap; kept with the reason,
    # never retried by itself, replayable (relaypacs deliveries retry).
    FAILED = "failed"


class Destination(Base):
    __tablename__ = "destinations"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # stowrs | dimse | folder
    # Kind-specific settings: url/user, aet/host/port, path. Never a secret: safe to show.
    options: Mapped[dict] = mapped_column(JSON, default=dict)
    # The password and bearer token, as one Fernet token of a JSON object: decrypted only
    # where a sender is built (pipeline.delivery.destinations.credentials).
    sealed_secrets: Mapped[str | None] = mapped_column(Text)
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


class DeliverySender(Base):
    """A forwarding run at work: its claim (the Celery task id), the study and destination it
    sends, and a heartbeat its worker process refreshes every few seconds while it runs.

    A run that ends removes its row. A row whose heartbeat stopped is a dead sender (a killed
    worker): the re-drive takes its study over at once. A row that keeps beating is a sender
    alive however slow, and its deliveries are never claimed by another run."""

    __tablename__ = "delivery_senders"
    claim: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    destination_id: Mapped[int] = mapped_column(ForeignKey("destinations.id", ondelete="CASCADE"))
    worker: Mapped[str] = mapped_column(String(200))  # host:pid, for operators
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
