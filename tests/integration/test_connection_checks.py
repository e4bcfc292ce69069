"""The pool checks a PostgreSQL connection only when it has sat idle: a busy API reuses a
connection it returned a moment ago without a ping round trip, and a connection the server
dropped while it sat in the pool is still replaced before any request uses it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from pipeline.db import engine as engines
from tests.integration.request_costs import RequestCosts
from tests.integration.services import (
    _admin_connection,
    create_database,
    database_url,
    drop_database,
    ensure_postgres,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(monkeypatch) -> Iterator:  # noqa: ANN001
    monkeypatch.setattr(engines, "PING_AFTER_IDLE_SECONDS", 0.3)
    ensure_postgres()
    name = create_database("relaypacs_ping_")
    engine = engines.make_engine(database_url(name))
    try:
        yield engine
    finally:
        engine.dispose()
        drop_database(name)


def _backend_pid(engine) -> int:  # noqa: ANN001
    with engine.connect() as conn:
        return conn.scalar(text("SELECT pg_backend_pid()"))


def test_a_connection_back_from_a_busy_request_is_reused_without_a_ping(engine):  # noqa: ANN001
    _backend_pid(engine)
    costs = RequestCosts(engine)
    with costs.active():
        for _ in range(5):
            _backend_pid(engine)
    assert costs.counts["ping"] == 0 and costs.sql == 5


def test_a_connection_dropped_while_idle_is_replaced_before_use(engine):  # noqa: ANN001
    first = _backend_pid(engine)
    with contextlib.closing(_admin_connection()) as admin, admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (first,))
    time.sleep(0.4)  # idle past PING_AFTER_IDLE_SECONDS
    costs = RequestCosts(engine)
    with costs.active():
        second = _backend_pid(engine)  # no error: the ping found it dead, a new one served
    assert second != first and costs.counts["ping"] >= 1
