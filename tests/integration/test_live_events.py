"""Live events on the real stack: a tus upload through the API and a Celery worker publishes
upload.* and study.forwarded on Redis; ``relaypacs events`` streams them over SSE to the
callers allowed to see them, and ``Last-Event-ID`` replays what a client missed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from pipeline.ops.events import ALLOWED_FIELDS
from tests.integration.analytics_services import EventsServer, SseReader
from tests.integration.gateway_client import Gateway
from tests.sample_data import synthetic_study

pytestmark = pytest.mark.integration

FACILITY = "Events Clinic"


@pytest.fixture(scope="module")
def events_server(gateway_env, it_dir) -> Iterator[EventsServer]:
    server = EventsServer(gateway_env, it_dir / "logs" / "events.log").start()
    try:
        yield server
    finally:
        server.stop(grace=10)


@pytest.fixture(scope="module")
def destination(add_stow_destination):
    return add_stow_destination("orthanc-events", facility=FACILITY)


def upload_batch(gateway: Gateway, files: list[bytes]) -> int:
    batch_id = gateway.open_batch(label="events")
    for i, data in enumerate(files):
        gateway.upload(batch_id, data, f"e{i}.dcm", chunk=16 * 1024)
    gateway.complete(batch_id)
    gateway.wait_state(batch_id, "done")
    return batch_id


def test_pipeline_events_reach_the_right_sse_clients_and_resume(
    events_server, api_server, worker, destination, orthanc_clean, make_user
):
    uploader = make_user(FACILITY, "uploader")
    admin = make_user("Events HQ", "admin")
    stranger = make_user("Events Elsewhere", "qa_manager")
    own = SseReader(events_server.url, uploader)
    everything = SseReader(events_server.url, admin)
    other = SseReader(events_server.url, stranger)
    assert (own.status, everything.status, other.status) == (200, 200, 200)
    gateway = Gateway(api_server.url, uploader)
    try:
        files = synthetic_study(2)
        batch_id = upload_batch(gateway, files)
        mine = lambda e: e.get("batch_id") == batch_id  # noqa: E731
        forwarded = own.wait_for(lambda e: e["type"] == "study.forwarded", "study.forwarded")
        assert sum(e["delivered"] for e in forwarded) == 2
        kinds = [e["type"] for e in own.events if mine(e)]
        assert kinds.count("upload.initiated") == 2 and kinds.count("upload.completed") == 2
        assert kinds.count("upload.chunk_received") >= 2 * (len(files[0]) // (16 * 1024))
        # Completion comes after the chunk that completed it, in stream order.
        for upload_id in {e["upload_id"] for e in own.events if mine(e)}:
            order = [e["type"] for e in own.events if e.get("upload_id") == upload_id]
            assert order[0] == "upload.initiated" and order[-1] == "upload.completed"
        everything.wait_for(lambda e: e["type"] == "study.forwarded" and e["facility_id"] == forwarded[0][
            "facility_id"], "admin sees it")
        # Ids and counts only: no file names, no patient data. (A CloudEvents envelope whose
        # data holds them, with the same fields flat beside it for older consumers.)
        envelope = {"id", "event", "type", "facility_id", "at", "specversion", "source", "time", "facility",
                    "datacontenttype", "data"}
        for event in own.events:
            assert set(event) - envelope <= ALLOWED_FIELDS and set(event["data"]) <= ALLOWED_FIELDS
        assert not [e for e in other.events if e["facility_id"] == forwarded[0]["facility_id"]]

        # A client that drops out resumes where it stopped.
        last_seen = own.events[-1]["id"]
        own.close()
        second = upload_batch(gateway, synthetic_study(1))
        resumed = SseReader(events_server.url, uploader, last_event_id=last_seen)
        missed = resumed.wait_for(lambda e: e.get("batch_id") == second and e["type"] == "upload.completed",
                                  "replayed upload.completed")
        assert missed
        ids = [e["id"] for e in resumed.events]
        assert last_seen not in ids and len(ids) == len(set(ids))
        assert resumed.events[0]["type"] == "upload.initiated"
        resumed.close()
    finally:
        for reader in (own, everything, other):
            reader.close()


def test_events_need_a_valid_token(events_server):
    response = requests.get(f"{events_server.url}/api/v1/events", timeout=5)
    assert response.status_code == 401
    assert response.json()["error"]["status"] == 401
    bad = requests.get(f"{events_server.url}/api/v1/events", timeout=5,
                       headers={"Authorization": "Bearer rp_not-a-token"})
    assert bad.status_code == 401
