"""Operations: the canary rows that prove each queue's workers consume, and the event outbox."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Index,
    Integer,
    String,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.models.base import Base, utcnow


class QueueCanary(Base):
    """Proof that a queue's workers consume: a canary task per queue stamps its row."""

    __tablename__ = "queue_canaries"
    queue: Mapped[str] = mapped_column(String(32), primary_key=True)
    sent_at: Mapped[datetime | None]
    consumed_at: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(String(200))


class OutboxEvent(Base):
    """An event written in the same transaction as the state change it announces.

    ``position`` is the public order (and, formatted as ``ms-seq``, the CloudEvents and SSE
    id): the relay gives it out after the commit, under one lock, so a consumer paging by it
    never misses an event whose transaction committed late. ``published_at`` is set once the
    relay has handed the event to every sink; a crash before that re-publishes it with the
    same position.
    """

    __tablename__ = "event_outbox"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    position: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    type: Mapped[str] = mapped_column(String(64))
    facility_id: Mapped[int] = mapped_column(Integer, index=False)
    data: Mapped[dict] = mapped_column(JSON, default=dict)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None]

    __table_args__ = (
        # The relay's work list: rows without a position yet (few, so a partial index).
        Index("ix_event_outbox_pending", "id", postgresql_where=text("position IS NULL"),
              sqlite_where=text("position IS NULL")),
        Index("ix_event_outbox_unpublished", "position",
              postgresql_where=text("published_at IS NULL AND position IS NOT NULL"),
              sqlite_where=text("published_at IS NULL AND position IS NOT NULL")),
        # A facility's replay pages by position.
        Index("ix_event_outbox_facility_position", "facility_id", "position"),
        Index("ix_event_outbox_occurred_at", "occurred_at"),
    )
