"""The database session every ``relaypacs`` command group opens: one helper, so a check that
applies to all of them (the schema, the connection) is written once.

Kept out of ``api/cli/__init__.py``: the group modules import it, and ``__init__`` imports them.
"""

from __future__ import annotations

import click
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from config import load_settings


def open_session() -> Session:
    """A session on the configured database, whose schema is at head; the caller commits and
    closes it (``with``). An unmigrated database gets one clear message naming
    ``relaypacs db upgrade`` instead of a "no such table" traceback."""
    from pipeline.db.engine import make_engine, make_session_factory
    from pipeline.db.migrate import schema_problem

    engine = make_engine(load_settings().database_url)
    try:
        problem = schema_problem(engine)
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc  # the driver's words, not the SQL
        raise click.ClickException(f"cannot reach the database: {reason}") from exc
    if problem:
        raise click.ClickException(problem)
    return make_session_factory(engine)()
