"""Events: the contract (ids and counts only), scoping, SSE framing, the in-process bus, the
API's hooks after commits, and the read-replica router's choices."""

from __future__ import annotations

import base64
import json

import pytest
from sqlalchemy import create_engine

from beat_schedule import BEAT_SCHEDULE
from pipeline.db.read_replicas import ReplicaRouter
from pipeline.ops import events


def test_events_carry_ids_and_counts_only():
    event = events.Event(events.UPLOAD_COMPLETED, 3, {"upload_id": "abc", "offset": 10, "length": 10})
    assert '"facility_id":3' in event.to_json()
    with pytest.raises(ValueError, match="not allowed"):
        events.Event(events.UPLOAD_COMPLETED, 3, {"filename": "DOE^JOHN.dcm"})
    with pytest.raises(ValueError, match="unknown event type"):
        events.Event("upload.renamed", 3)


def test_scoping_and_framing():
    assert events.visible_to({"facility_id": 2}, frozenset({2}))
    assert not events.visible_to({"facility_id": 2}, frozenset({3}))
    assert events.visible_to({"facility_id": 2}, None)  # admins: every facility
    # A reader assigned to facilities 3 and 2 sees both, not 4.
    assert events.visible_to({"facility_id": 2}, frozenset({3, 2}))
    assert not events.visible_to({"facility_id": 4}, frozenset({3, 2}))
    frame = events.sse_frame("17-0", '{"a":1}', "upload.completed").decode()
    assert frame == 'id: 17-0\nevent: upload.completed\ndata: {"a":1}\n\n'
    assert events.stream_id_key("17-2") > events.stream_id_key("17-1") > events.stream_id_key("9-9")


def test_in_process_bus_replays_after_an_id_in_order():
    bus = events.InProcessEventBus()
    ids = [bus.publish(events.Event(events.UPLOAD_INITIATED, 1, {"upload_id": str(n)})) for n in range(5)]
    assert len(set(ids)) == 5
    assert [i for i, _ in bus.read_after(ids[1])] == ids[2:]
    assert bus.read_after(ids[-1]) == []


def test_publishing_never_raises():
    class Down:
        def publish(self, event):  # noqa: ANN001, ANN202
            raise ConnectionError("redis is down")

    events.publish_safely(Down(), events.Event(events.STUDY_FORWARDED, 1, {"study_id": 1}))


def test_tus_requests_write_their_events_with_their_commits(client, make_token, enqueued):
    bus = events.event_bus(None)  # no RELAYPACS_REDIS_URL in unit tests: the in-process bus
    start = bus.publish(events.Event(events.UPLOAD_INITIATED, 0))
    headers = {"Authorization": f"Bearer {make_token('Events Unit')}", "Tus-Resumable": "1.0.0"}
    batch = client.post("/api/v1/batches", json={}, headers=headers).get_json()["id"]
    b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    meta = f"filename {b64('a.dcm')},batch_id {b64(str(batch))}"
    created = client.post("/api/v1/files", headers={**headers, "Upload-Length": "8", "Upload-Metadata": meta})
    location = created.headers["Location"]
    for offset in (0, 4):
        answer = client.patch(location, data=b"DICM"[:4], headers={
            **headers, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"})
        assert answer.status_code == 204
    seen = [json.loads(payload) for _, payload in bus.read_after(start)]
    kinds = [e["type"] for e in seen if e.get("batch_id") == batch]
    assert kinds == ["upload.initiated", "upload.chunk_received", "upload.chunk_received", "upload.completed"]
    assert seen[-1]["offset"] == seen[-1]["length"] == 8


def test_replica_router_skips_what_is_down(tmp_path):
    good = f"sqlite:///{tmp_path / 'replica.sqlite'}"
    router = ReplicaRouter([good, "sqlite:////nonexistent/dir/x.sqlite"], check_every=0)
    for _ in range(4):
        session = router.read_session()
        assert session is not None and str(session.get_bind().url) == good
        session.close()
    assert [s["ok"] for s in router.status()] == [True, False]
    assert ReplicaRouter([], check_every=0).read_session() is None


def test_replica_router_caches_health_between_checks(tmp_path):
    calls = []
    clock = iter(range(100)).__next__

    def engine(url: str):  # noqa: ANN202
        calls.append(url)
        return create_engine(url)

    router = ReplicaRouter([f"sqlite:///{tmp_path / 'r.sqlite'}"], check_every=10,
                           clock=lambda: clock() * 1.0, engine_factory=engine)
    router.healthy()
    first = router.replicas[0].health
    router.healthy()
    assert router.replicas[0].health is first  # within 10 s: no new check


def test_beat_runs_the_stats_refresh_on_the_analytics_queue():
    from config.celery import TASK_ROUTES

    entry = BEAT_SCHEDULE["analytics-refresh-stats"]
    assert entry["task"] == "analytics.refresh_stats" and entry["schedule"] <= 300
    assert TASK_ROUTES["analytics.*"] == {"queue": "analytics"}


def test_export_run_events_and_notifications():
    working = events.export_run_events(4, 9, 21, "working")
    assert [json.loads(e.to_json())["type"] for e in working] == ["export.run_state_changed"]
    assert json.loads(working[0].to_json())["status"] == "working"
    sent = [json.loads(e.to_json()) for e in events.export_run_events(
        4, 9, 21, "succeeded", recipients_notified=2, notified_now=True)]
    assert [e["type"] for e in sent] == ["export.run_state_changed", "export.notification"]
    assert sent[1] | {"at": None} == {"type": "export.notification", "facility_id": 4, "at": None,
                                      "kind": "export_sent", "export_id": 9, "run_id": 21, "recipients": 2}
    # A redelivered success (mailed earlier) is a status change, not a second notification.
    again = events.export_run_events(4, 9, 21, "succeeded", recipients_notified=2, notified_now=False)
    assert len(again) == 1
    failed = [json.loads(e.to_json()) for e in events.export_run_events(4, 9, 21, "failed")]
    assert failed[1]["kind"] == "export_failed" and failed[1]["facility_id"] == 4


def test_report_status_changed_carries_from_and_to():
    event = json.loads(events.report_status_changed(3, 8, "final", "amended").to_json())
    assert event | {"at": None} == {"type": "report.status_changed", "facility_id": 3, "at": None,
                                    "report_id": 8, "from": "final", "to": "amended"}
    assert json.loads(events.report_status_changed(3, 8, None, "final").to_json())["from"] is None


def test_run_now_publishes_the_queued_state(client, make_token, monkeypatch):
    from api.exports import definitions as exports_api

    monkeypatch.setattr(exports_api.chains, "enqueue_export_run", lambda run_id: None)  # no worker here
    bus = events.event_bus(None)
    start = bus.publish(events.Event(events.UPLOAD_INITIATED, 0))
    token = make_token("Events Exports", role="qa_manager")
    headers = {"Authorization": f"Bearer {token}"}
    body = {"name": "Weekly", "metrics": ["uploads"], "grouping": ["day"], "formats": ["csv"],
            "schedule": "weekly", "timezone": "UTC"}
    export = client.post("/api/v1/exports", json=body, headers=headers).get_json()
    run = client.post(f"/api/v1/exports/{export['id']}/run", headers=headers).get_json()
    seen = [json.loads(p) for _, p in bus.read_after(start)]
    changes = [e for e in seen if e["type"] == "export.run_state_changed"]
    assert len(changes) == 1
    # A CloudEvents envelope, with the earlier flat fields beside it for older consumers.
    assert changes[0]["data"] == {"export_id": export["id"], "run_id": run["id"], "status": "queued"}
    assert changes[0]["facility"] == changes[0]["facility_id"] == export["facility_id"]
    assert {k: changes[0][k] for k in ("export_id", "run_id", "status")} == changes[0]["data"]
    assert changes[0]["specversion"] == "1.0" and changes[0]["id"] == seen[-1]["id"]
