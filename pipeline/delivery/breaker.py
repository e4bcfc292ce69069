"""Per-destination circuit breaker, kept in the database so every pacs worker shares it.

closed --(N consecutive whole-request failures)--> open: no work is sent, deliveries wait
without spending attempts; after ``probe_after`` a probe (C-ECHO or a cheap HTTP request)
decides: it answers -> half_open, the next real request decides closed/open; it fails ->
open again with a longer wait (doubling, capped).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.models import BreakerState, DestinationHealth, utcnow

FAILURES_TO_OPEN = 3
FIRST_PROBE_AFTER = timedelta(seconds=5)
MAX_PROBE_AFTER = timedelta(minutes=10)


@dataclass(frozen=True)
class Gate:
    send: bool  # go ahead with real work
    probe: bool  # the destination must answer a probe first
    wait_seconds: float  # when not sending: come back after this long


def health(session: Session, destination_id: int, *, lock: bool = True) -> DestinationHealth:
    """The breaker row, created on first use; locked (FOR UPDATE) when about to change it."""
    row = session.get(DestinationHealth, destination_id, with_for_update=lock or None)
    if row is not None:
        return row
    try:
        # Several pacs workers may meet a new destination at once: one insert wins.
        with session.begin_nested():
            session.add(DestinationHealth(destination_id=destination_id, state=BreakerState.CLOSED,
                                          consecutive_failures=0, probe_interval_seconds=0))
    except IntegrityError:
        pass
    row = session.get(DestinationHealth, destination_id, with_for_update=lock or None,
                      populate_existing=True)
    assert row is not None
    return row


def gate(session: Session, destination_id: int, now: datetime | None = None) -> Gate:
    now = now or utcnow()
    row = health(session, destination_id, lock=False)
    if row.state != BreakerState.OPEN:
        return Gate(send=True, probe=False, wait_seconds=0)
    due = row.next_probe_at or now
    if due > now:
        return Gate(send=False, probe=False, wait_seconds=(due - now).total_seconds())
    return Gate(send=False, probe=True, wait_seconds=0)


def record_failure(session: Session, destination_id: int, error: str,
                   now: datetime | None = None) -> DestinationHealth:
    """A whole request (or a probe) failed."""
    now = now or utcnow()
    row = health(session, destination_id)
    row.consecutive_failures += 1
    row.last_error = error[:1000]
    if row.state == BreakerState.CLOSED and row.consecutive_failures < FAILURES_TO_OPEN:
        row.updated_at = now
        session.flush()
        return row
    if row.state == BreakerState.OPEN:
        interval = min(row.probe_interval_seconds * 2, MAX_PROBE_AFTER.total_seconds())
    else:
        interval = FIRST_PROBE_AFTER.total_seconds()
        row.opened_at = now
    row.state = BreakerState.OPEN
    row.probe_interval_seconds = interval
    row.next_probe_at = now + timedelta(seconds=interval)
    row.updated_at = now
    session.flush()
    return row


def record_probe_success(session: Session, destination_id: int, now: datetime | None = None) -> None:
    row = health(session, destination_id)
    row.state = BreakerState.HALF_OPEN
    row.updated_at = now or utcnow()
    session.flush()


def record_success(session: Session, destination_id: int, now: datetime | None = None) -> None:
    # Read without a lock first: the common case (closed, no failures) changes nothing and
    # must not serialise every pacs worker on this row.
    row = health(session, destination_id, lock=False)
    if row.state != BreakerState.CLOSED or row.consecutive_failures:
        row = health(session, destination_id)
        row.state = BreakerState.CLOSED
        row.consecutive_failures = 0
        row.opened_at = None
        row.next_probe_at = None
        row.updated_at = now or utcnow()
        session.flush()
