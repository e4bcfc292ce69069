"""1,000 concurrent SSE clients on one ``relaypacs events`` process: every stream gets what it
may see (admins both facilities, a facility's users only theirs), and the memory each open
stream costs is reported."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from pipeline.ops import events
from tests.integration.analytics_services import EventsServer
from tests.integration.services import LOOPBACK
from tests.integration.sse_load import hold_and_fan_out

pytestmark = pytest.mark.integration

CLIENTS = 1000


@pytest.fixture(scope="module")
def events_server(gateway_env, it_dir) -> Iterator[EventsServer]:
    server = EventsServer(gateway_env, it_dir / "logs" / "events-load.log").start()
    try:
        yield server
    finally:
        server.stop(grace=10)


def test_thousand_concurrent_streams(events_server, make_user, redis_url, gateway_env):
    import sqlalchemy as sa

    admin = make_user("Load HQ", "admin")
    local = make_user("Load Clinic", "uploader")
    other = make_user("Load Elsewhere", "uploader")  # noqa: F841 - makes the other facility exist
    engine = sa.create_engine(gateway_env["RELAYPACS_DATABASE_URL"])
    with engine.connect() as conn:
        ids = dict(conn.execute(sa.text(
            "SELECT name, id FROM facilities WHERE name IN ('Load Clinic', 'Load Elsewhere')")).all())
    engine.dispose()
    bus = events.RedisEventBus(redis_url)

    def publish(own: bool, n: int) -> None:
        facility = ids["Load Clinic" if own else "Load Elsewhere"]
        bus.publish(events.Event(events.UPLOAD_COMPLETED, facility, {"upload_id": f"load-{own}-{n}"}))

    result = asyncio.run(hold_and_fan_out(LOOPBACK, events_server.port, events_server.rss_kib, admin, local,
                                          publish, clients=CLIENTS, facility_ids=set(ids.values())))
    print("\nSSE load:", json.dumps(result))
    assert result["clients"] == CLIENTS
    assert result["admin_events"] == [10]
    assert result["facility_events"] == [5]
    assert result["facility_saw_other_facility"] is False
    # Memory per open stream stays small (measured ~10-30 KiB; a thread per client costs more).
    assert result["kib_per_client"] < 100
    assert result["fan_out_seconds"] < 10
