"""Storage job runs: one at a time per job, and a record of each (clock, counts, outcome).

One at a time, because two tiering runs over the same rows would copy the same objects
twice. On PostgreSQL the guard is a session advisory lock held on its own connection for the
run: a worker killed with ``kill -9`` drops the connection and PostgreSQL frees the lock at
once, so the next run never waits for a lease to expire. The embedded SQLite setup runs one
process and needs no guard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import text, update
from sqlalchemy.orm import Session

from pipeline.models import StorageRun, utcnow


def _lock_key(job: str) -> int:
    # Advisory locks take a signed 64-bit key; derive a stable one from the job name.
    digest = hashlib.sha256(f"relaypacs.storage.{job}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def exclusive(session: Session, job: str) -> Iterator[bool]:
    """Yield True while this process alone runs ``job``; False when another run holds it."""
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        yield True
        return
    engine = getattr(bind, "engine", bind)
    with engine.connect() as conn:
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": _lock_key(job)}).scalar())
        conn.commit()  # session-level lock: it outlives this transaction, not the connection
        try:
            yield got
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _lock_key(job)})
                conn.commit()


def start(session: Session, job: str, clock: datetime) -> StorageRun:
    """Record a run; earlier runs of the job still marked running were killed (we hold the lock)."""
    session.execute(
        update(StorageRun).where(StorageRun.job == job, StorageRun.state == "running")
        .values(state="interrupted").execution_options(synchronize_session=False)
    )
    run = StorageRun(job=job, state="running", clock=clock, started_at=utcnow(), counts={})
    session.add(run)
    session.flush()
    return run


def finish(run: StorageRun, counts: dict, state: str = "done", error: str | None = None) -> None:
    run.counts = dict(counts)
    run.state = state
    run.error = error
    run.finished_at = utcnow()
