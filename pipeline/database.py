"""Engine and session factory for the gateway database (PostgreSQL, or SQLite embedded), and
whether its schema is at the newest migration (the CLI and the API refuse work until it is)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
UPGRADE_HINT = "run `relaypacs db upgrade`"


def make_engine(database_url: str) -> Engine:
    if database_url.startswith("sqlite"):
        engine = create_engine(
            database_url, connect_args={"check_same_thread": False, "timeout": 30}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            # WAL lets the demo's API thread read while a worker thread writes.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # values_plus_batch: the ORM's flush of many UPDATEs (a forwarding batch's attempts and
    # outcomes, 40 rows at a time) goes out as one execute_batch round trip instead of one
    # statement per row. Nothing here reads rowcount after an executemany.
    batching = {"executemany_mode": "values_plus_batch"} if "psycopg2" in _driver(database_url) else {}
    return create_engine(database_url, pool_pre_ping=True, pool_size=10, max_overflow=20, **batching)


def _driver(database_url: str) -> str:
    scheme = database_url.split("://", 1)[0]
    # postgresql:// and postgres:// mean psycopg2, SQLAlchemy's default PostgreSQL driver.
    return "psycopg2" if scheme in ("postgresql", "postgres") else scheme


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)



@cache
def _migrations() -> tuple[frozenset[str], frozenset[str]]:
    """(head revisions, every revision) of the migrations shipped with this code."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", "pipeline:migrations")
    script = ScriptDirectory.from_config(cfg)
    return (frozenset(script.get_heads()),
            frozenset(rev.revision for rev in script.walk_revisions()))


def schema_problem(engine: Engine) -> str | None:
    """None when the schema is at the newest migration, else what is wrong and what to run.

    A revision this code does not know counts as newer (the next release migrated before
    this process was replaced), not as a reason to refuse work."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    heads, known = _migrations()
    if not current:
        return f"the database has no schema yet: {UPGRADE_HINT}"
    behind = sorted(rev for rev in current if rev in known and rev not in heads)
    if not behind:
        return None
    return (f"the database schema is at revision {', '.join(behind)}, this release needs "
            f"{', '.join(sorted(heads))}: {UPGRADE_HINT}")


class SchemaGuard:
    """Whether a long-running process may serve: checked at start, then again at most once
    every ``recheck_seconds`` while the schema is not at head (a migration may be running:
    refuse work, do not crash-loop), and never again once it is."""

    def __init__(self, engine: Engine, recheck_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.recheck_seconds = recheck_seconds
        self.clock = clock
        self._at_head = False
        self._problem: str | None = None
        self._checked_at: float | None = None
        self._lock = threading.Lock()

    def problem(self) -> str | None:
        """None to go ahead; else the message to refuse the work with."""
        if self._at_head:
            return None
        now = self.clock()
        if self._checked_at is not None and now - self._checked_at < self.recheck_seconds:
            return self._problem
        if not self._lock.acquire(blocking=False):
            return self._problem  # another thread is looking right now
        try:
            self._checked_at = now
            try:
                self._problem = schema_problem(self.engine)
            except SQLAlchemyError as exc:
                # Unreachable is not "behind": let the work fail its own way (/readyz says
                # database error) and look again at the next interval.
                log.warning("schema check failed: %s", type(exc).__name__)
                self._problem = None
                return None
            self._at_head = self._problem is None
            return self._problem
        finally:
            self._lock.release()
