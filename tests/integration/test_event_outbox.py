"""The event outbox on the real services: PostgreSQL (two writers, the advisory lock), the
Redis stream, RabbitMQ (a topic exchange of the test's own) and the SSE server.

- a rolled-back transaction emits nothing;
- a transaction that commits late gets a later id, so paging by id misses nothing;
- a relay process killed (SIGKILL) between publish and mark: the next relay sends the same
  ids again (RabbitMQ sees each twice, the Redis stream holds each once);
- a RabbitMQ consumer receives every event of a batch, in order;
- a week of events, replayed after the Redis window: strictly increasing ids through
  /api/v1/events/history, and the live SSE stream resumes an old Last-Event-ID from PostgreSQL.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from kombu import Connection, Exchange, Queue
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from config import load_settings
from pipeline.db.engine import make_engine
from pipeline.db.migrate import upgrade_database
from pipeline.models import OutboxEvent, utcnow
from pipeline.ops import events, outbox
from tests.integration.analytics_services import EventsServer, SseReader

pytestmark = pytest.mark.integration

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture(scope="module")
def engine(postgres_url):
    upgrade_database(postgres_url)
    return make_engine(postgres_url)


@pytest.fixture
def exchange() -> Iterator[tuple[str, Queue, Connection]]:
    """A topic exchange and a queue bound to every key, both the test's own."""
    name = f"relaypacs.test-events.{uuid.uuid4().hex[:10]}"
    conn = Connection(AMQP_URL, connect_timeout=5)
    ex = Exchange(name, type="topic", durable=True)  # as the relay declares it; deleted after
    queue = Queue(f"{name}.all", ex, routing_key="#")  # outlives each consumer; deleted after
    queue(conn.default_channel).declare()
    try:
        yield name, queue, conn
    finally:
        queue(conn.default_channel).delete()
        ex(conn.default_channel).delete()
        conn.release()


def _drain(conn: Connection, queue: Queue, marker: str, expected: int, timeout: float = 20.0) -> list[dict]:
    """Messages of this test (``marker`` in data.upload_id) until ``expected`` arrived."""
    got: list[dict] = []
    with conn.SimpleQueue(queue) as simple:
        while len(got) < expected:
            message = simple.get(timeout=timeout)
            body = json.loads(message.body)
            message.ack()
            if str(body["data"].get("upload_id", "")).startswith(marker):
                got.append({"message_id": message.properties.get("message_id"), **body})
    return got


def _record(engine, marker: str, count: int, facility: int = 1, at=None) -> None:  # noqa: ANN001
    with Session(engine) as session:
        outbox.record(session, [events.Event(events.UPLOAD_INITIATED, facility, {"upload_id": f"{marker}{n}"},
                                             **({"at": at(n)} if at else {})) for n in range(count)])
        session.commit()


def _no_follow_up(batch) -> None:  # noqa: ANN001 - these tests' events start no work
    return None


def _relay(engine, redis_url: str, exchange_name: str | None = None) -> outbox.Relay:  # noqa: ANN001
    return outbox.Relay(engine, outbox.sinks_for(redis_url, AMQP_URL if exchange_name else None,
                                                 exchange_name or "", _no_follow_up))


def _stream_ids(redis_url: str, marker: str) -> list[str]:
    rows = redis.Redis.from_url(redis_url).xrange(events.STREAM_KEY)
    return [sid.decode() for sid, fields in rows
            if json.loads(fields[b"e"])["data"].get("upload_id", "").startswith(marker)]


def test_rollback_emits_nothing_and_a_late_commit_gets_a_later_id(engine, redis_url):
    marker = f"late-{uuid.uuid4().hex[:6]}-"
    relay = _relay(engine, redis_url)
    with Session(engine) as rolled_back:
        outbox.record(rolled_back, events.Event(events.UPLOAD_INITIATED, 1, {"upload_id": f"{marker}gone"}))
        rolled_back.flush()
        rolled_back.rollback()
    slow = Session(engine)
    outbox.record(slow, events.Event(events.UPLOAD_INITIATED, 1, {"upload_id": f"{marker}slow"}))
    slow.flush()  # its INSERT (and row id) comes first; its commit comes last
    _record(engine, f"{marker}fast", 1)
    relay.drain()
    slow.commit()
    slow.close()
    relay.drain()
    ids = _stream_ids(redis_url, marker)
    assert len(ids) == 2  # the rolled-back one never went out
    with Session(engine) as session:
        rows = session.scalars(select(OutboxEvent).where(
            OutboxEvent.data["upload_id"].as_string().like(f"{marker}%"))).all()
    by_name = {r.data["upload_id"]: r.position for r in rows}
    assert set(by_name) == {f"{marker}slow", f"{marker}fast0"}
    assert by_name[f"{marker}slow"] > by_name[f"{marker}fast0"]
    assert ids == [outbox.format_id(by_name[f"{marker}fast0"]), outbox.format_id(by_name[f"{marker}slow"])]


def test_a_relay_run_is_four_statements_whatever_it_carries(engine, redis_url):  # noqa: ANN001
    """On PostgreSQL a run is: take the lock, position and read the batch (one statement),
    publish (the sinks' floor and one Redis pipeline), mark the batch sent, let the lock go,
    on one autocommit connection: no BEGIN or COMMIT (was 5 statements, 4 BEGIN/COMMIT
    pairs and two connections a run)."""
    from tests.integration.request_costs import RequestCosts

    marker = f"cost-{uuid.uuid4().hex[:6]}-"
    relay = _relay(engine, redis_url)
    relay.drain()  # whatever other tests left, and the relay's connection made
    _record(engine, marker, 50)
    costs = RequestCosts(relay._autocommit(), engine)
    with costs.active():
        assert relay.run_once() == 50
    assert costs.sql == 4, costs.statements
    assert dict(costs.counts) == {"sql": 4, "redis": 2}
    assert len(_stream_ids(redis_url, marker)) == 50
    assert relay.run_once() == 0


def test_a_redis_that_lost_the_script_still_gets_every_event(engine, tmp_path):  # noqa: ANN001
    """The stream's Lua goes by EVALSHA in one pipeline; a Redis restarted since (no script)
    answers NOSCRIPT, and the batch goes again after the script is loaded."""
    from tests.integration.services import free_port, start_private_redis

    port = free_port()
    server = start_private_redis(port, dict(os.environ), tmp_path / "redis.log")
    try:
        url = f"redis://127.0.0.1:{port}/0"
        relay = _relay(engine, url)
        relay.drain()  # whatever other tests left
        marker = f"noscript-{uuid.uuid4().hex[:6]}-"
        _record(engine, marker, 3)
        redis.Redis.from_url(url).script_flush()
        assert relay.run_once() == 3
        assert len(_stream_ids(url, marker)) == 3
    finally:
        server.stop()


def _killed_relay(database_url: str, redis_url: str, exchange_name: str) -> None:
    """Publish to Redis and RabbitMQ, then die by SIGKILL before marking anything sent."""

    class Kill:
        def floor(self) -> int:
            return 0

        def send(self, batch) -> None:  # noqa: ANN001
            os.kill(os.getpid(), signal.SIGKILL)

    engine = make_engine(database_url)
    sinks = [*outbox.sinks_for(redis_url, AMQP_URL, exchange_name, _no_follow_up), Kill()]
    outbox.Relay(engine, sinks).run_once()


def test_a_relay_killed_between_publish_and_mark_sends_again_with_the_same_ids(
        engine, postgres_url, redis_url, exchange):
    name, queue, conn = exchange
    marker = f"kill-{uuid.uuid4().hex[:6]}-"
    _relay(engine, redis_url, name).drain()  # whatever other tests left, out of the way
    _record(engine, marker, 5)
    process = multiprocessing.get_context("spawn").Process(
        target=_killed_relay, args=(postgres_url, redis_url, name))
    process.start()
    process.join(60)
    assert process.exitcode == -signal.SIGKILL
    first = _drain(conn, queue, marker, 5)
    with Session(engine) as session:
        unsent = session.scalars(select(OutboxEvent.position).where(
            OutboxEvent.data["upload_id"].as_string().like(f"{marker}%"),
            OutboxEvent.published_at.is_(None))).all()
    assert len(unsent) == 5  # published, never marked
    assert _relay(engine, redis_url, name).drain() >= 5
    again = _drain(conn, queue, marker, 5)
    assert [m["message_id"] for m in again] == [m["message_id"] for m in first] == [m["id"] for m in first]
    assert [outbox.parse_id(m["id"]) for m in first] == sorted(unsent)
    assert _stream_ids(redis_url, marker) == [m["id"] for m in first]  # in the stream once


def test_a_rabbitmq_consumer_receives_every_event_of_a_batch(engine, redis_url, exchange):
    name, queue, conn = exchange
    marker = f"batch-{uuid.uuid4().hex[:6]}-"
    _record(engine, marker, 300)
    _relay(engine, redis_url, name).drain()
    got = _drain(conn, queue, marker, 300)
    assert sorted(m["data"]["upload_id"] for m in got) == sorted(f"{marker}{n}" for n in range(300))
    positions = [outbox.parse_id(m["id"]) for m in got]
    assert positions == sorted(set(positions))
    assert all(m["type"] == events.UPLOAD_INITIATED and m["specversion"] == "1.0" for m in got)


def test_replay_after_a_week_long_window(engine, postgres_url, redis_url, gateway_env, it_dir, tmp_path):
    from api import create_app
    from pipeline.accounts.users import create_user

    marker = f"week-{uuid.uuid4().hex[:6]}-"
    settings = load_settings({"RELAYPACS_DATABASE_URL": postgres_url, "RELAYPACS_REDIS_URL": redis_url,
                              "RELAYPACS_VAR_DIR": str(tmp_path), "RELAYPACS_BROKER_URL": "memory://"})
    with Session(engine) as session:
        user_a, token = create_user(session, f"{marker}a@example.test", f"Outbox {marker} A", "uploader")
        user_b, _ = create_user(session, f"{marker}b@example.test", f"Outbox {marker} B", "uploader")
        session.commit()
        facility_a, facility_b = user_a.facility_id, user_b.facility_id
    client = create_app(settings).test_client()
    relay = _relay(engine, redis_url)
    relay.drain()
    start = redis.Redis.from_url(redis_url).xrevrange(events.STREAM_KEY, count=1)
    start_id = start[0][0].decode() if start else "0-0"
    # Eight days of events, two facilities, committed in many transactions.
    week_ago = utcnow() - timedelta(days=8)
    for day in range(8):
        def at(n: int, d: int = day):  # noqa: ANN202
            return week_ago + timedelta(days=d, minutes=n)

        _record(engine, f"{marker}a{day}-", 30, facility_a, at=at)
        _record(engine, f"{marker}b{day}-", 5, facility_b, at=at)
        relay.drain()
    redis.Redis.from_url(redis_url).xtrim(events.STREAM_KEY, maxlen=20)  # the window is now the last 20

    seen, after = [], start_id
    while True:
        body = client.get(f"/api/v1/events/history?after={after}&limit=50",
                          headers={"Authorization": f"Bearer {token}"}).get_json()
        seen += body["events"]
        after = body["after"]
        if not body["more"]:
            break
    ours = [e for e in seen if e["data"]["upload_id"].startswith(marker)]
    assert len(ours) == 240 and all(e["facility"] == facility_a for e in seen)
    positions = [outbox.parse_id(e["id"]) for e in seen]
    assert all(b > a for a, b in zip(positions, positions[1:], strict=False))

    # The live stream: a Last-Event-ID from before the window resumes from PostgreSQL.
    server = EventsServer(gateway_env, it_dir / "logs" / "events-outbox.log").start()
    try:
        reader = SseReader(server.url, token, last_event_id=start_id)
        try:
            reader.wait_for(lambda e: e.get("upload_id") == f"{marker}a7-29", "the newest event", timeout=30)
            replayed = [e for e in reader.events if str(e.get("upload_id", "")).startswith(marker)]
            assert [e["id"] for e in replayed] == [e["id"] for e in ours]
        finally:
            reader.close()
    finally:
        server.stop()
    with Session(engine) as session:  # leave no week-old rows for other tests' prune checks
        session.execute(update(OutboxEvent).where(OutboxEvent.data["upload_id"].as_string().like(f"{marker}%"))
                        .values(occurred_at=utcnow()))
        session.commit()
