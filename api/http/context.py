"""Per-app resources and per-request accessors (session, current user)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.http.limits import RateLimiter
from config import Settings
from pipeline.db.engine import make_autocommit_engine
from pipeline.ops.telemetry import Telemetry
from pipeline.storage import ObjectStore


@dataclass
class Resources:
    settings: Settings
    session_factory: sessionmaker[Session]
    store: ObjectStore
    limiter: RateLimiter
    telemetry: Telemetry


def resources() -> Resources:
    return current_app.extensions["relaypacs"]


def db() -> Session:
    if "session" not in g:
        g.session = resources().session_factory()
    return g.session


def snapshot_db() -> Session:
    """A session for a read-only view of the primary's current state, outside a transaction
    (psycopg2 autocommit): the view pays no BEGIN and ROLLBACK round trips. Each statement
    sees what was committed when it started, as it would inside a READ COMMITTED transaction;
    nothing it reads may be written through it. Closed at the end of the request."""
    if "snapshot_session" not in g:
        g.snapshot_session = resources().session_factory(bind=autocommit_engine())
    return g.snapshot_session


def autocommit_engine() -> Engine:
    """The app's engine for reads outside a transaction (its own pool: pipeline.db.engine)."""
    engine = current_app.extensions.get("relaypacs.autocommit")
    if engine is None:
        engine = current_app.extensions.setdefault(
            "relaypacs.autocommit", make_autocommit_engine(resources().session_factory.kw["bind"]))
    return engine


def kick_relay() -> None:
    """Wake this process's event relay after a commit made outside a session (whose events
    the session's after-commit hook would otherwise have announced): api/app.py."""
    relay = current_app.extensions.get("relaypacs.relay")
    if relay is not None:
        relay.kick()


def read_db() -> Session:
    """A session for analytics and listings: on a healthy read replica when
    RELAYPACS_DATABASE_REPLICA_URLS names any, else the request's primary session."""
    if "read_session" not in g:
        router = current_app.extensions.get("relaypacs.replicas")
        if router is None:
            from pipeline.db.read_replicas import ReplicaRouter

            settings = resources().settings
            router = current_app.extensions["relaypacs.replicas"] = ReplicaRouter(
                settings.database_replica_urls, max_lag_seconds=settings.replica_max_lag_seconds)
        g.read_session = router.read_session() or db()
    return g.read_session


def close_read_session(_exc: BaseException | None = None) -> None:
    """Teardown for blueprints that use ``read_db`` (the primary session closes itself)."""
    session = g.pop("read_session", None)
    if session is not None and session is not g.get("session"):
        session.close()
