"""Operations: the canary rows that prove each queue's workers consume."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.models.base import Base


class QueueCanary(Base):
    """Proof that a queue's workers consume: a canary task per queue stamps its row."""

    __tablename__ = "queue_canaries"
    queue: Mapped[str] = mapped_column(String(32), primary_key=True)
    sent_at: Mapped[datetime | None]
    consumed_at: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(String(200))
