"""Sender heartbeats: a run whose heartbeat stopped is taken over, a run that beats never is,
and the claim of in-flight rows follows the same rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from pipeline.delivery import forwarding, senders
from pipeline.models import Delivery, DeliverySender, DeliveryState, Destination, Instance
from tests.storage_seed import facility_user, seed_study

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
STALE = timedelta(seconds=30)


def _study_in_flight(session, claim: str, in_flight: int = 2, pending: int = 3):
    facility_id, user_id = facility_user(session, "Heartbeat Clinic")
    seeded = seed_study(session, None, facility_id=facility_id, user_id=user_id, created_at=T0,
                        sizes=[100] * (in_flight + pending))
    destination = Destination(name=f"pacs-{claim}", kind="folder", options={"path": "/nowhere"})
    session.add(destination)
    session.flush()
    for n, instance_id in enumerate(seeded.instance_ids):
        sending = n < in_flight
        session.add(Delivery(
            instance_id=instance_id, destination_id=destination.id, study_id=seeded.study_id,
            batch_id=session.get(Instance, instance_id).batch_id,
            state=DeliveryState.SENDING if sending else DeliveryState.PENDING,
            claim=claim if sending else None, attempts=1 if sending else 0,
            updated_at=T0, created_at=T0))
    senders.register(session, claim, seeded.study_id, destination.id, "host:1", now=T0)
    session.commit()
    return seeded.study_id, destination.id


def _claim(session, study_id, destination_id, now):
    return forwarding.claim_deliveries(session, study_id, destination_id, "new-run", 20, limit=40,
                                       stale_after=STALE, now=now)


def test_a_beating_sender_keeps_its_rows_however_long_its_request_takes(session):
    study_id, destination_id = _study_in_flight(session, "slow-run")
    for seconds in (10, 20, 30, 40, 50):  # its worker beats every 5 s in real life
        senders.beat(session, ["slow-run"], now=T0 + timedelta(seconds=seconds))
    now = T0 + timedelta(minutes=10)  # in flight far beyond the stale age
    senders.beat(session, ["slow-run"], now=now - timedelta(seconds=5))
    session.commit()

    assert senders.take_over_dead(session, STALE, now=now) == []
    claimed = _claim(session, study_id, destination_id, now)
    assert len(claimed) == 3 and {d.attempts for d in claimed} == {0}  # only the pending rows
    mine = session.scalars(select(Delivery).where(Delivery.claim == "slow-run")).all()
    assert len(mine) == 2 and {d.state for d in mine} == {DeliveryState.SENDING}


def test_a_silent_sender_is_taken_over_and_its_rows_claimed(session):
    study_id, destination_id = _study_in_flight(session, "killed-run")
    now = T0 + STALE + timedelta(seconds=1)

    assert senders.take_over_dead(session, STALE, now=now - timedelta(seconds=2)) == []
    assert senders.take_over_dead(session, STALE, now=now) == [(study_id, destination_id)]
    assert session.scalars(select(DeliverySender)).all() == []
    assert senders.take_over_dead(session, STALE, now=now) == []  # handed over once
    claimed = _claim(session, study_id, destination_id, now)
    assert len(claimed) == 5 and {d.claim for d in claimed} == {"new-run"}


def test_in_flight_rows_of_a_run_without_heartbeat_go_after_the_stale_age(session):
    """Rows claimed by a run that never registered (a worker from before heartbeats)."""
    study_id, destination_id = _study_in_flight(session, "old-run", pending=0)
    senders.release(session, "old-run")
    session.commit()
    assert _claim(session, study_id, destination_id, T0 + STALE - timedelta(seconds=1)) == []
    assert len(_claim(session, study_id, destination_id, T0 + STALE + timedelta(seconds=1))) == 2


def test_a_redelivered_task_registers_its_claim_again_and_takes_its_own_rows(session):
    study_id, destination_id = _study_in_flight(session, "task-1")
    later = T0 + timedelta(minutes=3)
    senders.register(session, "task-1", study_id, destination_id, "host:2", now=later)
    session.commit()
    row = session.get(DeliverySender, "task-1")
    assert (row.worker, row.heartbeat_at) == ("host:2", later)
    own = forwarding.claim_deliveries(session, study_id, destination_id, "task-1", 20, limit=40,
                                      stale_after=STALE, now=later)
    assert len(own) == 5


def test_heartbeats_come_six_times_within_the_stale_age():
    assert senders.heartbeat_interval(STALE) == 5.0
    assert senders.heartbeat_interval(timedelta(seconds=3)) == 0.5
