"""export.run_state_changed and export.notification on the real stack: a worker on the
``exports`` queue (PostgreSQL, Redis, moto_server, an aiosmtpd server on loopback) runs a
report that fails against a refusing mail server, then is replayed and mailed; every state
the run goes through is on the Redis event stream, scoped to the report's facility, with a
notification for the failure and one for the mail."""

from __future__ import annotations

import json

import pytest
import redis
import requests

from pipeline.ops import events
from tests.integration.services import poll_for
from tests.integration.test_scheduled_exports import exports_worker, mailbox  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration
FACILITY = "Report Events Clinic"


def _run_events(client: redis.Redis, run_id: int) -> list[dict]:
    rows = client.xrange(events.STREAM_KEY, min="-", max="+")
    found = [json.loads(fields[b"e"]) for _, fields in rows]
    return [e for e in found if e.get("run_id") == run_id]


def test_export_run_states_and_notifications_are_published(
        api_server, make_user, redis_url, mailbox, exports_worker):  # noqa: F811 - fixtures
    box, _ = mailbox
    headers = {"Authorization": f"Bearer {make_user(FACILITY, 'qa_manager')}"}
    body = {"name": "Events QA", "metrics": ["uploads"], "grouping": ["day"], "formats": ["csv"],
            "recipients": ["qa@events.test"], "schedule": "weekly", "timezone": "UTC"}
    created = requests.post(f"{api_server.url}/api/v1/exports", json=body, headers=headers, timeout=10)
    assert created.status_code == 201, created.text
    report = created.json()
    client = redis.Redis.from_url(redis_url)

    box.failing = True
    queued = requests.post(f"{api_server.url}/api/v1/exports/{report['id']}/run", headers=headers, timeout=10)
    assert queued.status_code == 202
    run_id = queued.json()["id"]
    failed = poll_for(lambda: (found := _run_events(client, run_id))
                       and any(e.get("kind") == "export_failed" for e in found) and found, "the failure")
    statuses = [e["status"] for e in failed if e["type"] == events.EXPORT_RUN_STATE_CHANGED]
    assert statuses == ["queued", "working", "retrying", "working", "failed"]
    assert all(e["facility_id"] == report["facility_id"] for e in failed)

    box.failing = False
    replay = requests.post(f"{api_server.url}/api/v1/exports/{report['id']}/runs/{run_id}/replay",
                           headers=headers, timeout=10)
    assert replay.status_code == 202
    done = poll_for(lambda: (found := _run_events(client, run_id))
                     and any(e.get("kind") == "export_sent" for e in found) and found, "the mail")
    statuses = [e["status"] for e in done if e["type"] == events.EXPORT_RUN_STATE_CHANGED]
    assert statuses[5:] == ["queued", "working", "succeeded"]
    sent = next(e for e in done if e.get("kind") == "export_sent")
    assert sent["type"] == events.EXPORT_NOTIFICATION and sent["recipients"] == 1
    assert len(box.messages) >= 1
