"""The event outbox on SQLite: events exist only when their transaction commits, positions are
given out after the commit in increasing order, a crash before the mark re-sends the same id,
the replay route is paginated and facility-scoped, and pruning is bounded."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from pipeline.db.engine import make_engine
from pipeline.models import OutboxEvent, utcnow
from pipeline.ops import events, outbox


class Recorder:
    """A sink that keeps what it was sent (and can fail after sending, like a relay killed
    between publish and mark)."""

    def __init__(self) -> None:
        self.sent: list[outbox.Outgoing] = []
        self.fail_after_send = False

    def floor(self) -> int:
        return 0

    def send(self, batch):  # noqa: ANN001, ANN201
        self.sent.extend(batch)
        if self.fail_after_send:
            raise ConnectionError("killed before the mark")


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'outbox.sqlite'}")
    OutboxEvent.__table__.create(engine)  # the table alone: the migrations cost seconds
    return engine


def _event(facility: int = 1, upload: str = "u") -> events.Event:
    return events.Event(events.UPLOAD_INITIATED, facility, {"upload_id": upload})


def test_ids_round_trip_and_refuse_garbage():
    position = outbox.parse_id("1765000000000-7")
    assert position is not None and outbox.format_id(position) == "1765000000000-7"
    assert outbox.parse_id("12") == 12 << outbox.SEQ_BITS
    for bad in ("", "x-1", "1-", "-1", "1-99999999", "1" * 20, "١٢-0"):
        assert outbox.parse_id(bad) is None, bad


def test_a_rolled_back_transaction_emits_nothing(engine):
    from sqlalchemy.orm import Session

    sink = Recorder()
    relay = outbox.Relay(engine, [sink])
    with Session(engine) as session:
        outbox.record(session, _event())
        session.flush()
        session.rollback()
    assert relay.drain() == 0 and sink.sent == []
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(OutboxEvent)) == 0


def test_a_late_commit_gets_a_later_id(engine):
    """Written first, committed last: its id is above the one that committed first, so a
    consumer that paged past the first never misses it."""
    from sqlalchemy.orm import Session

    sink = Recorder()
    relay = outbox.Relay(engine, [sink])
    slow = Session(engine)
    outbox.record(slow, _event(upload="slow"))
    slow.flush()  # its row id is the smaller one
    slow_row_id = slow.scalars(select(OutboxEvent.id)).one()
    slow.commit()  # SQLite has one writer: the "late" part is that the relay has not run yet
    slow.close()
    with Session(engine) as fast:
        outbox.record(fast, _event(upload="fast"))
        fast.commit()
    with Session(engine) as session:  # position the fast one alone, as if slow had not committed
        fast_row = session.scalars(select(OutboxEvent).where(OutboxEvent.id != slow_row_id)).one()
        fast_row.position = int(relay.clock() * 1000) << outbox.SEQ_BITS
        session.commit()
    relay.drain()
    ids = {json.loads(o.payload)["data"]["upload_id"]: outbox.parse_id(o.id) for o in sink.sent}
    assert ids["slow"] > ids["fast"]
    assert [o.id for o in sink.sent] == sorted((o.id for o in sink.sent), key=outbox.parse_id)


def test_a_crash_between_publish_and_mark_sends_again_with_the_same_id(engine):
    from sqlalchemy.orm import Session

    sink = Recorder()
    relay = outbox.Relay(engine, [sink])
    with Session(engine) as session:
        outbox.record(session, [_event(upload=str(n)) for n in range(3)])
        session.commit()
    sink.fail_after_send = True
    with pytest.raises(ConnectionError):
        relay.run_once()
    first = [o.id for o in sink.sent]
    sink.fail_after_send = False
    assert relay.drain() == 3
    assert [o.id for o in sink.sent] == first + first
    assert relay.drain() == 0  # marked now


def test_the_relay_thread_keeps_trying_after_failures_without_another_kick(engine):
    """The database (or broker) is away for several runs after the last commit: the thread
    keeps trying, backing off, and sends once it can, although no further commit kicks it
    (a committed upload.completed may be the only start of that file's chain)."""
    import threading
    import time

    from sqlalchemy.orm import Session

    sink = Recorder()
    relay = outbox.Relay(engine, [sink])
    with Session(engine) as session:
        outbox.record(session, [_event(upload=str(n)) for n in range(3)])
        session.commit()
    real_run_once, failures = relay.run_once, []

    def away_for_a_while():  # noqa: ANN202
        if len(failures) < 6:
            failures.append(1)
            raise ConnectionError("database away")
        return real_run_once()

    relay.run_once = away_for_a_while  # type: ignore[method-assign]
    thread = outbox.RelayThread(relay, failure_retry_seconds=0.005, max_failure_retry_seconds=0.02)
    thread.kick()  # the last commit's kick; none after it
    deadline = time.monotonic() + 10
    while len(sink.sent) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(failures) == 6 and len(sink.sent) == 3
    assert any(t.name == "event-relay" for t in threading.enumerate())


def test_envelope_is_cloudevents_with_the_old_flat_fields(engine):
    from sqlalchemy.orm import Session

    sink = Recorder()
    with Session(engine) as session:
        outbox.record(session, events.Event(events.STUDY_FORWARDED, 5, {"study_id": 9, "delivered": 2}))
        session.commit()
    outbox.Relay(engine, [sink]).drain()
    body = json.loads(sink.sent[0].payload)
    assert {k: body[k] for k in ("specversion", "id", "source", "type", "facility", "datacontenttype")} == {
        "specversion": "1.0", "id": sink.sent[0].id, "source": outbox.SOURCE, "type": "study.forwarded",
        "facility": 5, "datacontenttype": "application/json"}
    assert body["data"] == {"study_id": 9, "delivered": 2}
    assert body["facility_id"] == 5 and body["study_id"] == 9 and body["time"] == body["at"]


def test_prune_is_bounded_and_keeps_unsent_and_recent(engine):
    from sqlalchemy.orm import Session

    old = utcnow() - timedelta(days=9)
    with Session(engine) as session:
        session.add_all([OutboxEvent(type=events.UPLOAD_INITIATED, facility_id=1, data={}, occurred_at=old,
                                     position=n + 1, published_at=old) for n in range(25)])
        session.add(OutboxEvent(type=events.UPLOAD_INITIATED, facility_id=1, data={}, occurred_at=old))
        session.add(OutboxEvent(type=events.UPLOAD_INITIATED, facility_id=1, data={}, position=100,
                                published_at=utcnow()))
        session.commit()
        cutoff = outbox.retention_cutoff(keep_days=3)  # never less than a week
        assert cutoff < utcnow() - timedelta(days=6)
        assert outbox.prune_chunk(session, cutoff=cutoff, chunk=10) == 10
        session.commit()
        assert outbox.prune_chunk(session, cutoff=cutoff, chunk=100) == 15
        session.commit()
        assert session.scalar(select(func.count()).select_from(OutboxEvent)) == 2


def test_history_route_pages_in_order_and_keeps_to_the_facility(client, session, make_token):
    from pipeline.models import Facility, User

    token = make_token("History A")
    other = make_token("History B")
    admin = make_token("History Admin", role="admin")
    facility_a = session.scalar(select(Facility.id).where(Facility.name == "History A"))
    facility_b = session.scalar(select(Facility.id).where(Facility.name == "History B"))
    assert facility_a and facility_b and session.scalar(select(func.count()).select_from(User)) >= 3
    outbox.record(session, [_event(facility_a, f"a{n}") for n in range(5)] + [_event(facility_b, "b0")])
    session.commit()  # the app's relay publishes right after (in-process bus: inline)

    def page(tok: str, after: str = "0-0", limit: int = 2) -> dict:
        answer = client.get(f"/api/v1/events/history?after={after}&limit={limit}",
                            headers={"Authorization": f"Bearer {tok}"})
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()

    seen, after = [], "0-0"
    while True:
        body = page(token, after)
        seen += body["events"]
        after = body["after"]
        if not body["more"]:
            break
    assert [e["data"]["upload_id"] for e in seen] == [f"a{n}" for n in range(5)]
    positions = [outbox.parse_id(e["id"]) for e in seen]
    assert positions == sorted(set(positions))
    assert [e["data"]["upload_id"] for e in page(other, limit=100)["events"]] == ["b0"]
    assert len(page(admin, limit=100)["events"]) >= 6
    assert page(token, after=seen[-1]["id"])["events"] == []
    bad = client.get("/api/v1/events/history?after=1;drop", headers={"Authorization": f"Bearer {token}"})
    assert bad.status_code == 400 and "error" in bad.get_json()
    assert client.get("/api/v1/events/history").status_code == 401


def test_events_relay_command_sweeps_what_writers_left(tmp_path, monkeypatch):
    """A process that died after its commit never woke its relay: `relaypacs events-relay`
    publishes its events."""
    from click.testing import CliRunner
    from sqlalchemy.orm import Session

    from api.cli.services import events_relay

    url = f"sqlite:///{tmp_path / 'orphans.sqlite'}"
    engine = make_engine(url)
    OutboxEvent.__table__.create(engine)
    with Session(engine) as session:  # not a factory with the after-commit relay: nobody kicks
        outbox.record(session, [_event(upload="orphan-1"), _event(upload="orphan-2")])
        session.commit()
    monkeypatch.setenv("RELAYPACS_DATABASE_URL", url)
    monkeypatch.setenv("RELAYPACS_VAR_DIR", str(tmp_path))
    monkeypatch.delenv("RELAYPACS_REDIS_URL", raising=False)
    monkeypatch.delenv("RELAYPACS_EVENTS_AMQP_URL", raising=False)
    result = CliRunner().invoke(events_relay, ["--once"])
    assert result.exit_code == 0 and "2 events published" in result.output, result.output
    assert CliRunner().invoke(events_relay, ["--once"]).output.startswith("0 events")
