"""Forwarding: deliver a study's instances to one destination, exactly once each.

Delivery rows are the ledger. A run claims the pending rows of one (study, destination)
with its claim key (the Celery task id, so a redelivered task takes its own rows back),
sends them in batches of original bytes, and records each instance's outcome before the
next batch. A destination that is down leaves the rows pending for a later retry: an
outage delays work and never loses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from pipeline import renditions as renditions_for
from pipeline.destinations import InstanceOutcome, Sender, TransientDestinationError
from pipeline.models import (
    TERMINAL_UPLOAD_STATES,
    Batch,
    BatchState,
    Delivery,
    DeliveryState,
    Destination,
    Instance,
    Study,
    Upload,
    utcnow,
)
from pipeline.storage import ObjectStore

# A row claimed this long ago by a run that never finished is taken over by the next run.
STALE_CLAIM = timedelta(minutes=30)


@dataclass
class ForwardResult:
    delivered: int = 0
    failed: int = 0
    deferred: int = 0
    transient_error: TransientDestinationError | None = None
    batches: list[int] = field(default_factory=list)


def destinations_for(session: Session, facility_id: int) -> list[Destination]:
    return list(
        session.scalars(
            select(Destination)
            .where(
                Destination.enabled.is_(True),
                or_(Destination.facility_id.is_(None), Destination.facility_id == facility_id),
            )
            .order_by(Destination.id)
        )
    )


def plan_deliveries(session: Session, batch: Batch) -> list[tuple[int, int]]:
    """Create the missing delivery rows for the batch's instances; return the (study,
    destination) pairs that have pending work."""
    destinations = destinations_for(session, batch.facility_id)
    instances = session.execute(
        select(Instance.id, Instance.study_id).where(Instance.batch_id == batch.id)
    ).all()
    existing = set(
        session.execute(
            select(Delivery.instance_id, Delivery.destination_id).where(
                Delivery.instance_id.in_([i.id for i in instances])
            )
        ).all()
    ) if instances else set()
    for destination in destinations:
        for instance_id, study_id in instances:
            if (instance_id, destination.id) not in existing:
                session.add(
                    Delivery(
                        instance_id=instance_id,
                        destination_id=destination.id,
                        study_id=study_id,
                        batch_id=batch.id,
                    )
                )
    session.flush()
    return [
        (row.study_id, row.destination_id)
        for row in session.execute(
            select(Delivery.study_id, Delivery.destination_id)
            .where(Delivery.batch_id == batch.id, Delivery.state == DeliveryState.PENDING)
            .group_by(Delivery.study_id, Delivery.destination_id)
        )
    ]


def uploads_settled(session: Session, batch_id: int) -> bool:
    """True when no upload of the batch is still being received, assembled or parsed."""
    busy = session.scalar(
        select(func.count())
        .select_from(Upload)
        .where(Upload.batch_id == batch_id, Upload.state.not_in(list(TERMINAL_UPLOAD_STATES)))
    )
    return busy == 0


def claim_completed_batch(session: Session, batch_id: int, now: datetime | None = None) -> bool:
    """Move a completed, settled batch to forwarding exactly once across all processes."""
    if not uploads_settled(session, batch_id):
        return False
    result = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.state == BatchState.COMPLETED)
        .values(state=BatchState.FORWARDING, forwarding_started_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def quiet_open_batches(session: Session, quiet: timedelta, now: datetime | None = None) -> list[Batch]:
    """Open batches idle for ``quiet`` whose uploads are settled: forward what they hold
    (as Mercure does for series), without closing them to more uploads."""
    now = now or utcnow()
    batches = session.scalars(
        select(Batch).where(Batch.state == BatchState.OPEN, Batch.last_activity_at < now - quiet)
    ).all()
    return [b for b in batches if uploads_settled(session, b.id)]


def claim_deliveries(
    session: Session, study_id: int, destination_id: int, claim: str, now: datetime | None = None
) -> list[Delivery]:
    now = now or utcnow()
    session.execute(
        update(Delivery)
        .where(
            Delivery.study_id == study_id,
            Delivery.destination_id == destination_id,
            or_(
                Delivery.state == DeliveryState.PENDING,
                and_(Delivery.state == DeliveryState.SENDING, Delivery.claim == claim),
                and_(Delivery.state == DeliveryState.SENDING, Delivery.updated_at < now - STALE_CLAIM),
            ),
        )
        .values(state=DeliveryState.SENDING, claim=claim, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return list(
        session.scalars(
            select(Delivery)
            .where(
                Delivery.study_id == study_id,
                Delivery.destination_id == destination_id,
                Delivery.state == DeliveryState.SENDING,
                Delivery.claim == claim,
            )
            .order_by(Delivery.id)
            .execution_options(populate_existing=True)
        )
    )


def _apply(delivery: Delivery, outcome: InstanceOutcome | None, max_attempts: int, now: datetime,
           created_at: datetime) -> str:
    delivery.attempts += 1
    delivery.updated_at = now
    delivery.claim = None
    if outcome is None:
        outcome = InstanceOutcome("", False, None, "destination reported no outcome", True)
    delivery.status_code = outcome.status_code
    if outcome.stored:
        delivery.state = DeliveryState.DELIVERED
        delivery.reason = outcome.reason
        delivery.delivered_at = now
        if created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=now.tzinfo)
        delivery.latency_ms = int((now - created_at).total_seconds() * 1000)
        return "delivered"
    if outcome.retryable and delivery.attempts < max_attempts:
        delivery.state = DeliveryState.PENDING
        delivery.reason = outcome.reason
        return "deferred"
    delivery.state = DeliveryState.FAILED
    delivery.reason = (
        outcome.reason if not outcome.retryable
        else f"gave up after {delivery.attempts} attempts: {outcome.reason}"
    )
    return "failed"


def release(deliveries: Sequence[Delivery], reason: str, max_attempts: int) -> None:
    """Hand claimed rows back after a whole-request failure (counted as an attempt)."""
    now = utcnow()
    for delivery in deliveries:
        delivery.attempts += 1
        delivery.claim = None
        delivery.updated_at = now
        delivery.reason = reason[:1000]
        delivery.state = (
            DeliveryState.PENDING if delivery.attempts < max_attempts else DeliveryState.FAILED
        )


def forward_study(
    session: Session,
    store: ObjectStore,
    sender: Sender,
    *,
    study_id: int,
    destination_id: int,
    claim: str,
    batch_size: int,
    max_attempts: int,
    checkpoint: Callable[[], None],
) -> ForwardResult:
    """Send every pending instance of a study to one destination, ``batch_size`` at a time.

    ``checkpoint`` commits: called after the claim and after each batch so progress is
    visible and a crash loses at most one batch of bookkeeping (re-sent as a duplicate,
    which PACS count as success).
    """
    study = session.get(Study, study_id)
    assert study is not None
    deliveries = claim_deliveries(session, study_id, destination_id, claim)
    checkpoint()
    result = ForwardResult()
    for start in range(0, len(deliveries), batch_size):
        group = deliveries[start : start + batch_size]
        instances = {
            i.id: i
            for i in session.scalars(
                select(Instance).where(Instance.id.in_([d.instance_id for d in group]))
            )
        }
        renditions = {
            d.id: renditions_for.prepare(session, store, instances[d.instance_id]) for d in group
        }
        try:
            outcomes = sender.send(study.study_instance_uid, [r.outgoing for r in renditions.values()])
        except TransientDestinationError as exc:
            release(deliveries[start:], f"destination unavailable: {exc}", max_attempts)
            checkpoint()
            result.deferred += len(deliveries) - start
            result.transient_error = exc
            return result
        by_uid = {o.sop_instance_uid: o for o in outcomes}
        now = utcnow()
        for delivery in group:
            instance = instances[delivery.instance_id]
            verdict = _apply(
                delivery, by_uid.get(instance.sop_instance_uid), max_attempts, now,
                instance.created_at,
            )
            delivery.sent_object_key = renditions[delivery.id].object_key
            delivery.sent_sha256 = renditions[delivery.id].sha256
            setattr(result, verdict, getattr(result, verdict) + 1)
        result.batches.append(len(group))
        checkpoint()
    return result


def settle_batch(session: Session, batch_id: int) -> bool:
    """A forwarding batch with no pending or in-flight delivery is done."""
    batch = session.get(Batch, batch_id)
    if batch is None or batch.state != BatchState.FORWARDING:
        return False
    open_rows = session.scalar(
        select(func.count())
        .select_from(Delivery)
        .where(
            Delivery.batch_id == batch_id,
            Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING]),
        )
    )
    if open_rows == 0 and uploads_settled(session, batch_id):
        batch.state = BatchState.DONE
        session.flush()
        return True
    return False
