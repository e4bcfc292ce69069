"""Which forwarding runs are alive: each run registers its claim with a heartbeat, its worker
process refreshes the heartbeat while the run works, and a run silent for longer than the
stale age is dead.

A killed worker leaves its study half sent, and on Redis its task message comes back only
after the broker's visibility timeout (hours). The heartbeat lets the re-drive tell that dead
run from a slow one within seconds: a dead run's study is handed to a new run, whose claim
takes the dead run's in-flight rows; a run that keeps beating is never taken over, however
long its PACS takes to answer. Heartbeats are rows in PostgreSQL, beside the deliveries they
guard, so taking over and claiming are decided in the same transactions.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from pipeline.models import Delivery, DeliverySender, utcnow

# A run whose heartbeat is this old is dead. Heartbeats come every sixth of it, so a live
# run misses five before it is taken for dead. Settings override it.
STALE_AFTER = timedelta(seconds=30)


def heartbeat_interval(stale_after: timedelta) -> float:
    """Seconds between two heartbeats of a live run: a sixth of the stale age."""
    return max(stale_after.total_seconds() / 6, 0.2)


def register(session: Session, claim: str, study_id: int, destination_id: int, worker: str,
             now: datetime | None = None) -> None:
    """The run with ``claim`` starts on (study, destination): alive from now. A task that
    comes back (a retry, or a redelivery after its worker died) registers its claim again."""
    now = now or utcnow()
    values = {"study_id": study_id, "destination_id": destination_id, "worker": worker[:200],
              "started_at": now, "heartbeat_at": now}
    dialect = session.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        statement = insert(DeliverySender).values(claim=claim, **values)
        session.execute(statement.on_conflict_do_update(index_elements=["claim"], set_=values))
        return
    row = session.get(DeliverySender, claim)
    if row is None:
        session.add(DeliverySender(claim=claim, **values))
    else:
        for key, value in values.items():
            setattr(row, key, value)


def beat(session: Session, claims: Collection[str], now: datetime | None = None) -> int:
    """Refresh the heartbeat of ``claims`` (the runs of one worker process)."""
    if not claims:
        return 0
    result = session.execute(
        update(DeliverySender).where(DeliverySender.claim.in_(list(claims)))
        .values(heartbeat_at=now or utcnow())
        .execution_options(synchronize_session=False))
    return result.rowcount or 0


def release(session: Session, claim: str) -> None:
    """The run with ``claim`` ended (done, or waiting for a retry that registers again)."""
    session.execute(delete(DeliverySender).where(DeliverySender.claim == claim)
                    .execution_options(synchronize_session=False))


def live_claims(stale_after: timedelta, now: datetime) -> ColumnElement[bool]:
    """True for a delivery whose claim belongs to a run that is still beating."""
    beating = select(DeliverySender.claim).where(DeliverySender.heartbeat_at >= now - stale_after)
    return Delivery.claim.in_(beating.scalar_subquery())


def take_over_dead(session: Session, stale_after: timedelta = STALE_AFTER,
                   now: datetime | None = None) -> list[tuple[int, int]]:
    """Forget the runs whose heartbeat stopped and return their (study, destination) pairs,
    for new runs to finish: their in-flight rows are then claimable at once (no live claim),
    their pending rows as always. Only a process frozen for the whole stale age is taken for
    dead while alive: then the request it had on the wire may go twice, which a PACS stores
    once."""
    now = now or utcnow()
    dead = select(DeliverySender).where(DeliverySender.heartbeat_at < now - stale_after)
    if session.get_bind().dialect.name == "postgresql":
        dead = dead.with_for_update(skip_locked=True)
    rows = list(session.scalars(dead))
    pairs = sorted({(row.study_id, row.destination_id) for row in rows})
    for row in rows:
        session.delete(row)
    session.flush()
    return pairs
