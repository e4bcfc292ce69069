"""Restore on demand: cold bytes become readable again, and whoever needed them is served.

Reading an instance whose bytes are in an archive class (GLACIER, DEEP_ARCHIVE), or inside a
bundle, goes through here. ``read_or_request`` is the gate for downloads
(``GET /api/v1/storage/instances/ID/file``): it answers with a ``read`` restore request
when the bytes are cold. ``require_readable`` is the gate forwarding passes (via
pipeline/delivery/renditions.py, for every destination, a folder export included): it decides from the
catalogue, records a restore request and raises ``ObjectArchived``, so the delivery is parked
as a dead letter that says "restoring, expected by ...". The storage worker then (``process``):

1. starts the S3 restore of the object that holds the bytes (the instance's own object or
   its bundle; one restore serves every request on it), or sees none is needed;
2. polls it until S3 reports the temporary copy (``restored_until``);
3. puts a bundled instance back as its own object for a while (``rehydrated``), so readers
   keep reading ``instance.object_key`` unchanged;
4. completes the request: a forward replays the deliveries parked for it; a read is ready.

Delivery sits above this module (its renditions pass every read through ``require_readable``),
so this module imports nothing from pipeline.delivery: ``process`` is given the function that
puts dead-lettered deliveries back in the queue (``replay``, in practice
``pipeline.delivery.forwarding.replay``), as it is given the ``checkpoint`` that commits.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.intake.batches import reopen_for_replay
from pipeline.lifecycle import bundles
from pipeline.lifecycle import policy as lifecycle
from pipeline.models import (
    Delivery,
    DeliveryState,
    Instance,
    ObjectState,
    RestoreRequest,
    RestoreState,
    StoredObject,
    utcnow,
)
from pipeline.storage import ObjectArchived, ObjectMissing, TieredStore

ARCHIVED_STATUS = ObjectArchived.status
OPEN_STATES = (RestoreState.REQUESTED, RestoreState.RESTORING, RestoreState.READY)
# A copy about to expire is not worth starting a send with.
READ_MARGIN = timedelta(hours=1)
PURPOSES = ("forward", "read")

# Puts failed deliveries back in the queue and returns the (study_id, destination_id) pairs
# to forward again (pipeline.delivery.forwarding.replay).
Replay = Callable[[Session, Sequence[Delivery]], list[tuple[int, int]]]


def _holder(session: Session, row: StoredObject) -> StoredObject:
    """The object whose bytes must be readable: the row itself or its bundle."""
    if row.state in (ObjectState.BUNDLED, ObjectState.RELEASED, ObjectState.REHYDRATED) and row.bundle_id:
        bundle = session.get(StoredObject, row.bundle_id)
        if bundle is not None:
            return bundle
    return row


def holder_readable(row: StoredObject, now: datetime) -> bool:
    if lifecycle.readable(row.storage_class):
        return True
    return row.restored_until is not None and row.restored_until > now + READ_MARGIN


def instance_readable(session: Session, row: StoredObject, now: datetime) -> bool:
    """Can ``row.object_key`` be read as it is right now?"""
    if row.state == ObjectState.KEPT:
        return holder_readable(row, now)
    if row.state == ObjectState.REHYDRATED:
        return row.rehydrated_until is not None and row.rehydrated_until > now + READ_MARGIN
    # BUNDLED: the own object is about to be deleted by the lifecycle run; RELEASED: gone.
    return False


def request_restore(session: Session, row: StoredObject, *, purpose: str, tier: str,
                    requested_by: int | None = None, now: datetime | None = None) -> RestoreRequest:
    """One open request per (object, purpose): asking again returns the same one."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}")
    now = now or utcnow()
    existing = session.scalar(
        select(RestoreRequest).where(RestoreRequest.instance_id == row.instance_id,
                                     RestoreRequest.stored_object_id == _holder(session, row).id,
                                     RestoreRequest.purpose == purpose,
                                     RestoreRequest.state.in_(OPEN_STATES))
        if row.instance_id is not None else
        select(RestoreRequest).where(RestoreRequest.stored_object_id == row.id,
                                     RestoreRequest.purpose == purpose,
                                     RestoreRequest.state.in_(OPEN_STATES))
    )
    if existing is not None:
        return existing
    holder = _holder(session, row)
    hours = 0.0 if holder_readable(holder, now) else lifecycle.restore_hours(holder.storage_class, tier)
    request = RestoreRequest(
        facility_id=row.facility_id, instance_id=row.instance_id, stored_object_id=holder.id,
        purpose=purpose, requested_by=requested_by, state=RestoreState.REQUESTED, restore_tier=tier,
        requested_at=now, expected_ready_at=now + timedelta(hours=hours),
    )
    session.add(request)
    session.flush()
    return request


_CATALOGUE = "restore.catalogue"


def preload_catalogue(session: Session, keys: Sequence[str]) -> None:
    """Look up a whole forwarding batch's catalogue rows in one query; ``require_readable``
    then answers for these keys from memory instead of one query per instance."""
    found = {row.object_key: row for row in session.scalars(
        select(StoredObject).where(StoredObject.object_key.in_(list(keys))))}
    session.info[_CATALOGUE] = {key: found.get(key) for key in keys}


def require_readable(session: Session, instance: Instance, *, tier: str = "Standard",
                     now: datetime | None = None) -> None:
    """Return when the instance's bytes can be read now; else record a forward restore and
    raise ``ObjectArchived`` that says when they are expected back."""
    preloaded = session.info.get(_CATALOGUE) or {}
    if instance.object_key in preloaded:
        row = preloaded[instance.object_key]
    else:
        row = session.scalar(select(StoredObject).where(StoredObject.object_key == instance.object_key))
    if row is None:
        return  # not catalogued yet: a fresh object, in STANDARD
    if row.state == ObjectState.MISSING:
        raise ObjectMissing(instance.object_key)
    now = now or utcnow()
    if instance_readable(session, row, now):
        return
    request = request_restore(session, row, purpose="forward", tier=tier, now=now)
    holder = _holder(session, row)
    where = "in a bundle" if holder.id != row.id else f"in {row.storage_class}"
    expected = request.expected_ready_at or now
    raise ObjectArchived(
        instance.object_key, holder.storage_class,
        reason=f"stored {where} ({holder.storage_class}); restore #{request.id} {request.state}, "
               f"expected by {expected:%Y-%m-%d %H:%M} UTC; sent automatically when back",
    )


def read_or_request(session: Session, instance: Instance, *, tier: str, requested_by: int | None = None,
                    now: datetime | None = None) -> RestoreRequest | None:
    """The gate for reads that are not forwards (downloads, exports): None when the
    instance's bytes can be read now; else its open ``read`` restore request (made once)."""
    row = session.scalar(select(StoredObject).where(StoredObject.object_key == instance.object_key))
    if row is None:
        return None  # not catalogued yet: a fresh object, in STANDARD
    if row.state == ObjectState.MISSING:
        raise ObjectMissing(instance.object_key)
    now = now or utcnow()
    if instance_readable(session, row, now):
        return None
    return request_restore(session, row, purpose="read", tier=tier, requested_by=requested_by, now=now)


@dataclass
class ProcessResult:
    started: int = 0
    ready: int = 0
    rehydrated: int = 0
    done: int = 0
    failed: int = 0
    # (study_id, destination_id) pairs to enqueue after the commit.
    forwards: list[tuple[int, int]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"started": self.started, "ready": self.ready, "rehydrated": self.rehydrated,
                "done": self.done, "failed": self.failed, "forwards": len(self.forwards)}


def _start(session: Session, store: TieredStore, requests: Sequence[RestoreRequest], now: datetime,
           days: int, result: ProcessResult) -> None:
    by_holder: dict[int, list[RestoreRequest]] = {}
    for request in requests:
        by_holder.setdefault(request.stored_object_id, []).append(request)
    for holder_id, waiting in by_holder.items():
        holder = session.get(StoredObject, holder_id)
        tier = waiting[0].restore_tier
        if holder is None or holder.state == ObjectState.MISSING:
            _fail(waiting, now, "the object is not in storage", result)
            continue
        if holder_readable(holder, now):
            outcome = "not_archived"
        else:
            try:
                outcome = store.restore(holder.object_key, days, tier)
            except ObjectMissing:
                _fail(waiting, now, "the object is not in storage", result)
                continue
        if outcome == "not_archived":
            for request in waiting:
                request.state = RestoreState.READY
                request.ready_at = now
            result.ready += len(waiting)
            continue
        expected = now + timedelta(hours=lifecycle.restore_hours(holder.storage_class, tier))
        for request in waiting:
            request.state = RestoreState.RESTORING
            request.expected_ready_at = expected
        result.started += 1


def _fail(requests: Sequence[RestoreRequest], now: datetime, why: str, result: ProcessResult) -> None:
    for request in requests:
        request.state = RestoreState.FAILED
        request.completed_at = now
        request.detail = why
    result.failed += len(requests)


def _poll(session: Session, store: TieredStore, requests: Sequence[RestoreRequest], now: datetime,
          result: ProcessResult) -> None:
    for holder_id in sorted({r.stored_object_id for r in requests}):
        holder = session.get(StoredObject, holder_id)
        waiting = [r for r in requests if r.stored_object_id == holder_id]
        try:
            head = store.head(holder.object_key)
        except ObjectMissing:
            _fail(waiting, now, "the object is not in storage", result)
            continue
        if not lifecycle.CLASSES.get(head.storage_class, lifecycle.CLASSES["STANDARD"]).needs_restore:
            ready_until = None  # readable as it is (e.g. moved back by someone)
        elif head.restore_ongoing is False and head.restore_expiry is not None:
            ready_until = head.restore_expiry
        else:
            continue  # still restoring
        holder.restored_until = ready_until
        for request in waiting:
            request.state = RestoreState.READY
            request.ready_at = now
        result.ready += len(waiting)


def _rehydrate(session: Session, store: TieredStore, row: StoredObject, holder: StoredObject,
               now: datetime, days: int, spool: Callable[[bytes], object]) -> None:
    data = bundles.read_member(store, holder.object_key, row.bundle_offset or 0, row.size, row.sha256)
    spool(data)
    row.state = ObjectState.REHYDRATED
    row.rehydrated_until = now + timedelta(days=days)
    row.updated_at = now


def _complete(session: Session, store: TieredStore, requests: Sequence[RestoreRequest], now: datetime,
              days: int, result: ProcessResult, replay: Replay) -> None:
    for request in requests:
        holder = session.get(StoredObject, request.stored_object_id)
        row = holder
        if request.instance_id is not None and holder is not None and holder.kind == "bundle":
            instance = session.get(Instance, request.instance_id)
            row = session.scalar(select(StoredObject).where(StoredObject.object_key == instance.object_key))
            if row is not None and row.state in (ObjectState.BUNDLED, ObjectState.RELEASED):
                try:
                    _rehydrate(session, store, row, holder, now, days,
                               lambda data, key=row.object_key: store.put_stream(key, io.BytesIO(data)))
                except (ObjectMissing, bundles.BundleError) as exc:
                    _fail([request], now, f"cannot read it back from its bundle: {exc}", result)
                    continue
                result.rehydrated += 1
            elif row is not None and row.state == ObjectState.REHYDRATED:
                row.rehydrated_until = max(row.rehydrated_until or now, now + timedelta(days=days))
        if request.purpose == "forward" and request.instance_id is not None:
            result.forwards.extend(_replay_parked(session, request.instance_id, replay))
        request.state = RestoreState.DONE
        request.completed_at = now
        result.done += 1


def _replay_parked(session: Session, instance_id: int, replay: Replay) -> list[tuple[int, int]]:
    """Deliveries parked because the bytes were cold go back in the queue."""
    parked = list(session.scalars(select(Delivery).where(
        Delivery.instance_id == instance_id, Delivery.state == DeliveryState.FAILED,
        Delivery.status_code == ARCHIVED_STATUS)))
    if not parked:
        return []
    pairs = replay(session, parked)
    reopen_for_replay(session, {d.batch_id for d in parked})
    return pairs


def has_unstarted(session: Session) -> bool:
    """Any request the storage worker has not started yet."""
    return session.scalar(select(RestoreRequest.id).where(RestoreRequest.state == RestoreState.REQUESTED)
                          .limit(1)) is not None


def process(session: Session, store: TieredStore, *, replay: Replay, now: datetime | None = None,
            days: int = 7, checkpoint: Callable[[], None] | None = None,
            limit: int = 1000) -> ProcessResult:
    """One pass over open requests: start restores, poll them, complete what is back.

    ``replay`` puts the deliveries parked for a completed forward restore back in the queue
    (``pipeline.delivery.forwarding.replay``); it runs before the checkpoint that marks the
    request done, so both are committed together."""
    now = now or utcnow()
    checkpoint = checkpoint or session.flush
    result = ProcessResult()

    def open_in(state: RestoreState) -> list[RestoreRequest]:
        return list(session.scalars(select(RestoreRequest).where(RestoreRequest.state == state)
                                    .order_by(RestoreRequest.id).limit(limit)))

    requested = open_in(RestoreState.REQUESTED)
    # ``now`` is read before the caller takes the job's lock and before the read above, so a
    # request recorded in between (a forward parking its delivery meanwhile) is started by
    # this pass too. A pass cannot act before the requests it acts on were made: S3 counts a
    # restore's hours from the call, which comes after the request, and ready/done follow it.
    now = max([now, *(request.requested_at for request in requested)])
    _start(session, store, requested, now, days, result)
    checkpoint()
    _poll(session, store, open_in(RestoreState.RESTORING), now, result)
    checkpoint()
    _complete(session, store, open_in(RestoreState.READY), now, days, result, replay)
    checkpoint()
    result.forwards = sorted(set(result.forwards))
    return result


def describe(request: RestoreRequest) -> dict:
    return {
        "id": request.id,
        "instance_id": request.instance_id,
        "purpose": request.purpose,
        "state": request.state,
        "restore_tier": request.restore_tier,
        "requested_at": request.requested_at.isoformat(),
        "expected_ready_at": request.expected_ready_at.isoformat() if request.expected_ready_at else None,
        "ready_at": request.ready_at.isoformat() if request.ready_at else None,
        "completed_at": request.completed_at.isoformat() if request.completed_at else None,
        "detail": request.detail,
    }


def request_for_study(session: Session, study_id: int, *, purpose: str, tier: str,
                      requested_by: int | None = None, now: datetime | None = None) -> list[RestoreRequest]:
    """Requests for every instance of a study that cannot be read as it is."""
    now = now or utcnow()
    rows = session.scalars(
        select(StoredObject).join(Instance, Instance.object_key == StoredObject.object_key)
        .where(Instance.study_id == study_id)
    ).all()
    return [request_restore(session, row, purpose=purpose, tier=tier, requested_by=requested_by, now=now)
            for row in rows if not instance_readable(session, row, now)]
