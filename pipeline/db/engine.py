"""Engine and session factory for the gateway database (PostgreSQL, or SQLite embedded)."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


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
