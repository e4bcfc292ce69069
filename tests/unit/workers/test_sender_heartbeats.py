"""The process's heartbeat thread beats for the claims it holds, and only while it holds them."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from pipeline.delivery import senders
from pipeline.models import DeliverySender
from tests.storage_seed import facility_user, seed_study
from workers import runtime, sender_heartbeats


@pytest.fixture
def worker_runtime(settings, configure_runtime):
    return configure_runtime(settings.with_overrides(claim_stale_seconds=1))  # beats every 0.2 s


def test_a_held_claim_beats_until_the_run_ends(worker_runtime):
    from pipeline.models import Destination

    with runtime.session_scope() as session:
        facility_id, user_id = facility_user(session, "Beat Clinic")
        seeded = seed_study(session, None, facility_id=facility_id, user_id=user_id,
                            created_at=datetime(2026, 1, 1, tzinfo=UTC), sizes=[10])
        destination = Destination(name="beat-pacs", kind="folder", options={"path": "/x"})
        session.add(destination)
        session.flush()
        pair = (seeded.study_id, destination.id)

    def heartbeat() -> datetime | None:
        with runtime.session_scope() as session:
            row = session.get(DeliverySender, "task-9")
            return row.heartbeat_at if row else None

    with sender_heartbeats.sending("task-9", *pair):
        first = heartbeat()
        assert first is not None
        assert "task-9" in sender_heartbeats.heartbeats().held()
        time.sleep(0.7)  # no statement of the run in between: only the thread beats
        assert heartbeat() > first
    assert heartbeat() is None
    assert sender_heartbeats.heartbeats().held() == set()
    assert senders.heartbeat_interval(sender_heartbeats.stale_after()) == pytest.approx(0.2)
