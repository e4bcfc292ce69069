"""The database session every ``relaypacs`` command group opens: one helper, so a check that
applies to all of them (the schema, the connection) is written once.

Kept out of ``api/cli/__init__.py``: the group modules import it, and ``__init__`` imports them.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from config import load_settings


def open_session() -> Session:
    """A session on the configured database; the caller commits and closes it (``with``)."""
    from pipeline.db.engine import make_engine, make_session_factory

    return make_session_factory(make_engine(load_settings().database_url))()
