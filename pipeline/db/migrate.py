"""Schema migrations: bring a database up to the newest Alembic revision, and tell whether a
database is there yet (the CLI and the API refuse work until it is, naming the command).

Alembic and SQLAlchemy only, so the CLI, the embedded demo and the tests share one way to
create or upgrade a schema without importing each other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)
UPGRADE_HINT = "run `relaypacs db upgrade`"

# The revisions ship inside the package, so an installed gateway finds them without a checkout.
SCRIPT_LOCATION = "pipeline.db:migrations"


def upgrade_database(database_url: str) -> None:
    """Apply every migration up to head (a SQLite file's folder is created first)."""
    from alembic import command
    from alembic.config import Config

    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    # Alembic's config is ConfigParser: a literal % in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(cfg, "head")


@cache
def _migrations() -> tuple[frozenset[str], frozenset[str]]:
    """(head revisions, every revision) of the migrations shipped with this code."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
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
