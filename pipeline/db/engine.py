"""Engine and session factory for the gateway database (PostgreSQL, or SQLite embedded)."""

from __future__ import annotations

import time

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

# A pooled PostgreSQL connection is pinged before use only when it sat idle longer than this.
# A connection returned by the previous request a moment ago is alive in all but a race with a
# server restart (that request then fails once and the pool replaces every connection), while
# pinging it on every checkout (pool_pre_ping) costs each request a round trip, three for a tus
# PATCH that commits twice.
PING_AFTER_IDLE_SECONDS = 1.0


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
    engine = create_engine(database_url, pool_size=10, max_overflow=20, **batching)
    _ping_when_idle(engine)
    return engine


def make_autocommit_engine(engine: Engine, *, pool_size: int = 10, max_overflow: int = 20) -> Engine:
    """A second engine, with its own pool, whose connections stay in autocommit: reads that
    need no transaction (the polled batch status) pay neither BEGIN/ROLLBACK nor, as an
    ``execution_options(isolation_level=...)`` view of the main pool would, the SET that
    puts a borrowed connection back to the default isolation when it is returned."""
    if engine.dialect.name != "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    reads = create_engine(engine.url, isolation_level="AUTOCOMMIT", pool_size=pool_size,
                          max_overflow=max_overflow)
    _ping_when_idle(reads)
    return reads


def _ping_when_idle(engine: Engine) -> None:
    """pool_pre_ping, for connections that sat idle only (SQLAlchemy's documented checkout
    hook: raising DisconnectionError makes the pool retry with a new connection)."""

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn, record) -> None:  # noqa: ANN001
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_conn, record, _proxy) -> None:  # noqa: ANN001
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since <= PING_AFTER_IDLE_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as error:
            raise exc.DisconnectionError(f"connection dropped while idle: {error}") from error
        if not alive:
            raise exc.DisconnectionError("connection dropped while idle")


def _driver(database_url: str) -> str:
    scheme = database_url.split("://", 1)[0]
    # postgresql:// and postgres:// mean psycopg2, SQLAlchemy's default PostgreSQL driver.
    return "psycopg2" if scheme in ("postgresql", "postgres") else scheme


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)
