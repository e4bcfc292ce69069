"""Forwarding: deliver a study's instances to one destination, exactly once each.

Delivery rows are the ledger. A run first asks the destination's circuit breaker; then it
claims the due pending rows of one (study, destination) with its claim key (the Celery
task id, so a redelivered task takes its own rows back), and sends them in batches of
original bytes, recording each instance's outcome before the next batch.

Attempts are counted when a batch is about to go out (and committed first), so a worker
that dies while sending still spends an attempt: a poison instance that crashes workers
ends as a dead letter instead of looping. A destination that is down spends nothing: the
rows wait, and the breaker probes it until it answers.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from pipeline.delivery import breaker, senders
from pipeline.delivery import renditions as renditions_for
from pipeline.delivery.destinations import (
    InstanceOutcome,
    OutgoingInstance,
    Sender,
    TransientDestinationError,
)
from pipeline.models import Delivery, DeliveryState, Instance, InstanceVersion, Study, utcnow
from pipeline.storage import ObjectArchived, ObjectMissing, ObjectStore

# A row in flight whose run has not beaten its heartbeat for this long has a dead sender;
# the next run takes it over. Settings override it.
STALE_CLAIM = senders.STALE_AFTER


def retry_delay(attempt: int, cap: float = 1800.0) -> float:
    """Exponential, capped, with "equal jitter": never less than half the step, so an
    outage is waited out rather than hammered, and many workers do not retry in step."""
    step = min(cap, 5.0 * 2 ** max(attempt - 1, 0))
    return step / 2 + random.uniform(0, step / 2)


# Objects of one batch are read concurrently, up to this many bytes held in memory; bigger
# ones stream from storage while the request is sent.
PREFETCH_BYTES = 64 * 1024 * 1024
PREFETCH_THREADS = 8
_readers: ThreadPoolExecutor | None = None


def _read_all(instance: OutgoingInstance) -> bytes:
    with instance.open() as body:
        return body.read()


def prefetch(outgoing: list[OutgoingInstance]) -> list[OutgoingInstance]:
    """Read a batch's objects in parallel before the request: storage latency then overlaps
    instead of stalling the STOW body one object at a time. A failed read falls back to the
    lazy open, so its error surfaces where it always did."""
    global _readers
    if _readers is None:
        _readers = ThreadPoolExecutor(max_workers=PREFETCH_THREADS, thread_name_prefix="prefetch")
    budget = PREFETCH_BYTES
    futures = {}
    for instance in outgoing:
        if instance.size <= budget:
            budget -= instance.size
            futures[instance.sop_instance_uid] = _readers.submit(_read_all, instance)
    ready = []
    for instance in outgoing:
        future = futures.get(instance.sop_instance_uid)
        try:
            data = future.result() if future is not None else None
        except Exception:  # noqa: BLE001 - the sender will open it again and report why
            data = None
        ready.append(instance if data is None
                     else replace(instance, open=lambda data=data: io.BytesIO(data)))
    return ready


@dataclass
class ForwardResult:
    delivered: int = 0
    failed: int = 0
    deferred: int = 0
    # Seconds until this (study, destination) should be looked at again; None: nothing left.
    come_back_after: float | None = None
    batches: list[int] = field(default_factory=list)
    waiting_on_breaker: bool = False
    restoring: int = 0  # parked until cold bytes are back (a restore request was recorded)


def claim_deliveries(
    session: Session, study_id: int, destination_id: int, claim: str, max_attempts: int, *,
    limit: int, stale_after: timedelta = STALE_CLAIM, now: datetime | None = None,
) -> list[Delivery]:
    """Take up to ``limit`` due rows: our own in-flight rows (a redelivered task),
    then pending ones, then in-flight rows whose sender is dead: claimed more than
    ``stale_after`` ago by a run whose heartbeat stopped as long ago (or that has none).
    A sender that keeps beating keeps its rows, however slow its PACS.
    Rows that already spent every attempt become dead letters instead."""
    now = now or utcnow()
    mine = and_(Delivery.study_id == study_id, Delivery.destination_id == destination_id)
    claimable = or_(
        and_(Delivery.state == DeliveryState.PENDING,
             or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now)),
        and_(Delivery.state == DeliveryState.SENDING, Delivery.claim == claim),
        and_(Delivery.state == DeliveryState.SENDING, Delivery.updated_at < now - stale_after,
             ~senders.live_claims(stale_after, now)),
    )
    ids = select(Delivery.id).where(mine, claimable).order_by(Delivery.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        ids = ids.with_for_update(skip_locked=True)
    session.execute(
        update(Delivery).where(Delivery.id.in_(ids.scalar_subquery()))
        .values(state=DeliveryState.SENDING, claim=claim, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    claimed = list(session.scalars(
        select(Delivery)
        .where(mine, Delivery.state == DeliveryState.SENDING, Delivery.claim == claim)
        .order_by(Delivery.id)
        .execution_options(populate_existing=True)
    ))
    alive = []
    for delivery in claimed:
        if delivery.attempts >= max_attempts:
            _dead_letter(delivery, now, f"gave up after {delivery.attempts} attempts"
                         + (f"; last: {delivery.reason}" if delivery.reason else ""))
        else:
            alive.append(delivery)
    session.flush()
    return alive


def _dead_letter(delivery: Delivery, now: datetime, reason: str, status: str | None = None) -> None:
    delivery.state = DeliveryState.FAILED
    delivery.reason = reason[:1000]
    delivery.claim = None
    delivery.updated_at = now
    if status is not None:
        delivery.status_code = status


def _defer(delivery: Delivery, now: datetime, reason: str, max_attempts: int) -> float:
    """Back to pending with a backoff, or a dead letter once the attempts are spent."""
    if delivery.attempts >= max_attempts:
        _dead_letter(delivery, now, f"gave up after {delivery.attempts} attempts; last: {reason}")
        return 0.0
    delay = retry_delay(delivery.attempts)
    delivery.state = DeliveryState.PENDING
    delivery.claim = None
    delivery.reason = reason[:1000]
    delivery.updated_at = now
    delivery.next_attempt_at = now + timedelta(seconds=delay)
    return delay


def _apply(delivery: Delivery, outcome: InstanceOutcome | None, instance: Instance,
           max_attempts: int, now: datetime) -> tuple[str, float]:
    if outcome is None:
        outcome = InstanceOutcome(instance.sop_instance_uid, False, None,
                                  "destination reported no outcome", True)
    delivery.status_code = outcome.status_code
    if outcome.stored:
        delivery.state = DeliveryState.DELIVERED
        delivery.reason = outcome.reason
        delivery.claim = None
        delivery.updated_at = now
        delivery.delivered_at = now
        delivery.next_attempt_at = None
        delivery.latency_ms = int((now - instance.created_at).total_seconds() * 1000)
        return "delivered", 0.0
    if not outcome.retryable:
        _dead_letter(delivery, now, outcome.reason or "refused by the destination")
        return "failed", 0.0
    delay = _defer(delivery, now, outcome.reason or "retryable failure", max_attempts)
    return ("deferred", delay) if delivery.state == DeliveryState.PENDING else ("failed", 0.0)


def _release(deliveries: Sequence[Delivery], reason: str, max_attempts: int, now: datetime) -> float:
    delays = [_defer(d, now, reason, max_attempts) for d in deliveries]
    return max(delays, default=0.0)


class _Batcher:
    """Sends one group and records what became of each instance in it."""

    def __init__(self, session: Session, store: ObjectStore, sender: Sender, study: Study,
                 destination_id: int, max_attempts: int, result: ForwardResult) -> None:
        self.session = session
        self.store = store
        self.sender = sender
        self.study = study
        self.destination_id = destination_id
        self.max_attempts = max_attempts
        self.result = result

    def send(self, group: list[Delivery], checkpoint: Callable[[], None]) -> bool:
        """False when the destination is unavailable and the run should stop."""
        instances = {i.id: i for i in self.session.scalars(
            select(Instance).where(Instance.id.in_([d.instance_id for d in group])))}
        renditions_for.preload(self.session, list(instances.values()))
        now = utcnow()
        prepared = {}
        for delivery in list(group):
            try:
                prepared[delivery.id] = renditions_for.prepare(
                    self.session, self.store, instances[delivery.instance_id])
            except ObjectMissing as exc:
                # ObjectArchived (cold bytes, a restore request recorded) carries its own reason,
                # which says when the bytes are expected back; the restore replays the delivery.
                _dead_letter(delivery, now, getattr(exc, "reason", "stored object is missing"),
                             getattr(exc, "status", "missing"))
                self.result.failed += 1
                self.result.restoring += isinstance(exc, ObjectArchived)
                group.remove(delivery)
            except renditions_for.RenditionError as exc:
                # Sending the unedited original instead could file it under the wrong patient.
                _dead_letter(delivery, now, f"cannot apply the metadata changes: {exc}", "rewrite")
                self.result.failed += 1
                group.remove(delivery)
            except OSError as exc:  # storage failing while writing a rendition: wait, retry
                delay = _release(group, f"storage unavailable: {type(exc).__name__}",
                                 self.max_attempts, now)
                self.result.deferred += len(group)
                self.result.come_back_after = delay
                checkpoint()
                return False
        for delivery in group:
            delivery.attempts += 1  # spent now, committed before the bytes leave
        checkpoint()
        if not group:
            return True
        outgoing = prefetch([prepared[d.id].outgoing for d in group])
        try:
            outcomes = self.sender.send(self.study.study_instance_uid, outgoing)
        except TransientDestinationError as exc:
            now = utcnow()
            breaker.record_failure(self.session, self.destination_id, str(exc), now)
            delay = _release(group, f"destination unavailable: {exc}", self.max_attempts, now)
            self.result.deferred += sum(d.state == DeliveryState.PENDING for d in group)
            self.result.failed += sum(d.state == DeliveryState.FAILED for d in group)
            self.result.come_back_after = max(exc.retry_after or 0.0, delay)
            checkpoint()
            return False
        except ObjectMissing:
            return self._isolate(group, checkpoint, "stored object is missing")
        except OSError as exc:  # our storage, not the PACS: wait and try again
            delay = _release(group, f"storage unavailable: {type(exc).__name__}", self.max_attempts,
                             utcnow())
            self.result.deferred += len(group)
            self.result.come_back_after = delay
            checkpoint()
            return False
        except Exception as exc:  # noqa: BLE001 - one poison instance must not block the rest
            return self._isolate(group, checkpoint, f"{type(exc).__name__} while sending")
        breaker.record_success(self.session, self.destination_id)
        by_uid = {o.sop_instance_uid: o for o in outcomes}
        now = utcnow()
        for delivery in group:
            instance = instances[delivery.instance_id]
            verdict, delay = _apply(delivery, by_uid.get(instance.sop_instance_uid), instance,
                                    self.max_attempts, now)
            delivery.sent_object_key = prepared[delivery.id].object_key
            delivery.sent_sha256 = prepared[delivery.id].sha256
            setattr(self.result, verdict, getattr(self.result, verdict) + 1)
            if delay:
                self.result.come_back_after = max(self.result.come_back_after or 0.0, delay)
        self.result.batches.append(len(group))
        checkpoint()
        return True

    def _isolate(self, group: list[Delivery], checkpoint: Callable[[], None], reason: str) -> bool:
        """An unexpected error: send one by one, so only the culprit becomes a dead letter."""
        if len(group) == 1:
            _dead_letter(group[0], utcnow(), reason)
            self.result.failed += 1
            checkpoint()
            return True
        for delivery in group:
            delivery.attempts -= 1  # the failed group try is not the instances' fault
            if not self.send([delivery], checkpoint):
                return False
        return True


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
    stale_after: timedelta = STALE_CLAIM,
) -> ForwardResult:
    """Send every due pending instance of a study to one destination, ``batch_size`` at a time.

    ``checkpoint`` commits: after the claim, before each batch goes out and after each batch,
    so progress is visible and a crash loses at most one batch of bookkeeping (re-sent as a
    duplicate, which PACS count as success).
    """
    result = ForwardResult()
    gate = breaker.gate(session, destination_id)
    if gate.probe:
        try:
            sender.check()
        except TransientDestinationError as exc:
            health = breaker.record_failure(session, destination_id, f"probe: {exc}")
            checkpoint()
            result.waiting_on_breaker = True
            result.come_back_after = health.probe_interval_seconds
            return result
        breaker.record_probe_success(session, destination_id)
    elif not gate.send:
        checkpoint()
        result.waiting_on_breaker = True
        result.come_back_after = gate.wait_seconds
        return result
    checkpoint()
    study = session.get(Study, study_id)
    assert study is not None
    batcher = _Batcher(session, store, sender, study, destination_id, max_attempts, result)
    while True:
        # A heartbeat at every batch too, besides the worker's own: a run that sends is alive.
        senders.beat(session, [claim])
        group = claim_deliveries(session, study_id, destination_id, claim, max_attempts,
                                 limit=batch_size, stale_after=stale_after)
        if not group:
            break
        checkpoint()
        if not batcher.send(group, checkpoint):
            return result
    # Rows still pending (deferred by a backoff, or planned meanwhile): come back for them.
    due = [
        (at - utcnow()).total_seconds() if at else 0.0
        for at in session.scalars(
            select(Delivery.next_attempt_at).where(
                Delivery.study_id == study_id, Delivery.destination_id == destination_id,
                Delivery.state == DeliveryState.PENDING))
    ]
    if due:
        delay = max(min(due), 0.5)
        result.come_back_after = min(result.come_back_after or delay, delay)
    return result


def replay(session: Session, deliveries: Sequence[Delivery]) -> list[tuple[int, int]]:
    """Put failed (dead-lettered) deliveries back in the queue with fresh attempts. Deliveries
    of a version that no longer goes out (held or superseded) stay as they are."""
    now = utcnow()
    pairs: set[tuple[int, int]] = set()
    current = set(session.scalars(select(Instance.id).where(
        Instance.id.in_({d.instance_id for d in deliveries}),
        Instance.version_state == InstanceVersion.CURRENT))) if deliveries else set()
    for delivery in deliveries:
        if delivery.state != DeliveryState.FAILED or delivery.instance_id not in current:
            continue
        delivery.state = DeliveryState.PENDING
        delivery.attempts = 0
        delivery.next_attempt_at = None
        delivery.claim = None
        delivery.reason = f"replayed (was: {delivery.reason})"[:1000]
        delivery.updated_at = now
        pairs.add((delivery.study_id, delivery.destination_id))
    session.flush()
    return sorted(pairs)
