"""Worker liveness that proves consumption: a canary task per queue stamps its row.

A process can be up while consuming nothing (seen after Redis reconnects), so readiness
asks "was the last canary sent to this queue eaten, and how long ago?".
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.models import QueueCanary, utcnow

# A canary not consumed within this long means the queue's workers are not working.
STALE_AFTER = timedelta(seconds=180)


def record_sent(session: Session, queues: tuple[str, ...], now: datetime | None = None) -> None:
    now = now or utcnow()
    for queue in queues:
        row = session.get(QueueCanary, queue)
        if row is None:
            session.add(QueueCanary(queue=queue, sent_at=now))
        else:
            row.sent_at = now
    session.flush()


def record_consumed(session: Session, queue: str, worker: str, now: datetime | None = None) -> None:
    row = session.get(QueueCanary, queue) or QueueCanary(queue=queue)
    row.consumed_at = now or utcnow()
    row.worker = worker[:200]
    session.add(row)
    session.flush()


def canary_report(session: Session, now: datetime | None = None) -> dict[str, dict]:
    """Per queue: seconds since a canary was last consumed, and whether that is stale."""
    now = now or utcnow()
    report = {}
    for row in session.scalars(select(QueueCanary).order_by(QueueCanary.queue)):
        age = (now - row.consumed_at).total_seconds() if row.consumed_at else None
        waiting = (
            row.sent_at is not None
            and (row.consumed_at is None or row.consumed_at < row.sent_at)
            and now - row.sent_at > STALE_AFTER
        )
        report[row.queue] = {"consumed_age_seconds": age, "stale": waiting, "worker": row.worker}
    return report
