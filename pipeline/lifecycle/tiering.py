"""The nightly storage lifecycle run: catalogue new instances, bundle small ones, move what
is due to a colder class, expire what a move or a restore left behind, delete renditions past
their days, clean up staging.

Renditions (rewritten copies made at forwarding time, pipeline/delivery/renditions.py) are not tiered
but expired: they are needed while their deliveries retry, can be rebuilt from the original
(the rewrite is deterministic), and a cold rendition deleted later would bill its class's
minimum duration. So they are deleted while still in STANDARD, before the first cold tier.

Every step is idempotent and resumable, because the run may be killed at any point:
- a copy is announced first (``moving_to`` committed), so the next run checks those objects
  with a HEAD and records a finished copy instead of copying again;
- a bundle row is committed (``writing``, members linked) before its object is written under
  a key derived from its members, so a rerun writes the same object again;
- member objects are deleted only after the commit that says their bytes are in a bundle.

With ``managed_by="s3"`` the bucket's own lifecycle rules move objects; the run writes those
rules, still bundles small instances (S3 skips objects under 128 KB), and records the class
each object is expected to be in.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import exists, insert, select, update
from sqlalchemy.orm import Session

from pipeline.lifecycle import bundles
from pipeline.lifecycle import policy as lifecycle
from pipeline.lifecycle.policy import BundlePlan, Move, TierPolicy
from pipeline.models import (
    Delivery,
    DeliveryState,
    Instance,
    InstanceRendition,
    ObjectState,
    StoredObject,
    StoredObjectKind,
    Upload,
    UploadState,
    utcnow,
)
from pipeline.storage import ObjectMissing, TieredStore

log = logging.getLogger(__name__)

BUNDLE_PREFIX = "studies/"
# The noncurrent version a tier copy leaves behind holds the same bytes as the current one.
NONCURRENT_DAYS = 1


@dataclass(frozen=True)
class TieringOptions:
    policy: TierPolicy
    bundle_below: int = lifecycle.DEFAULT_BUNDLE_BELOW
    bundle_max_bytes: int = lifecycle.DEFAULT_BUNDLE_MAX_BYTES
    managed_by: str = "gateway"  # or "s3"
    concurrency: int = 8
    # Objects announced and recorded per commit; also the most a killed run leaves to check.
    chunk: int = 200
    abort_multipart_days: int = 2
    upload_expiry: timedelta = timedelta(days=1)
    staging_days: int = 3  # day partitions swept per night, just past the upload expiry
    spool_dir: Path = Path("var/spool")
    max_seconds: float | None = None  # stop cleanly between chunks; the caller re-enqueues
    plan_limit: int = 250_000  # objects decided per run: bounds its memory
    facility_ids: tuple[int, ...] | None = None  # scope (tests, per-facility runs)
    rendition_days: int = lifecycle.DEFAULT_RENDITION_DAYS

    def __post_init__(self) -> None:
        if self.managed_by not in ("gateway", "s3"):
            raise lifecycle.PolicyError(f"managed_by must be gateway or s3, not {self.managed_by!r}")
        lifecycle.check_rendition_days(self.policy, self.rendition_days)


@dataclass
class RunResult:
    counts: Counter = field(default_factory=Counter)
    more: bool = False  # stopped at the time limit (or the plan limit) with work left
    plan: dict | None = None  # a dry run's summary of what is due
    seconds: dict[str, float] = field(default_factory=dict)  # per phase

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.seconds[phase] = round(self.seconds.get(phase, 0.0) + time.monotonic() - start, 3)

    def as_dict(self) -> dict:
        return {**dict(self.counts), "more": self.more, "seconds": self.seconds,
                **({"plan": self.plan} if self.plan else {})}


# ----------------------------------------------------------------------------- catalogue


def catalogue_new(session: Session, *, facility_ids: Sequence[int] | None = None, batch: int = 5000) -> int:
    """Add a row for every instance original not yet in the catalogue (a re-sent instance's
    new key included); its age counts from its upload's date."""
    added = 0
    while True:
        query = (
            select(Instance.id, Instance.facility_id, Instance.study_id, Instance.object_key,
                   Instance.size, Instance.sha256, Upload.created_at)
            .join(Upload, Upload.id == Instance.upload_id)
            .outerjoin(StoredObject, StoredObject.object_key == Instance.object_key)
            .where(StoredObject.id.is_(None))
            .order_by(Instance.id)
            .limit(batch)
        )
        if facility_ids:
            query = query.where(Instance.facility_id.in_(list(facility_ids)))
        rows = session.execute(query).all()
        if not rows:
            return added
        now = utcnow()
        session.execute(insert(StoredObject), [
            {"facility_id": r.facility_id, "study_id": r.study_id, "instance_id": r.id,
             "kind": StoredObjectKind.INSTANCE, "object_key": r.object_key, "size": r.size,
             "sha256": r.sha256, "storage_class": "STANDARD", "state": ObjectState.KEPT,
             "stored_at": r.created_at, "dr_state": "pending", "dr_attempts": 0,
             "created_at": now, "updated_at": now}
            for r in rows
        ])
        added += len(rows)
        if len(rows) < batch:
            return added


# ----------------------------------------------------------------------------- moves


def _copy(store: TieredStore, key: str, size: int, to_class: str,
          check_first: bool) -> tuple[str, str | None]:
    """One object to ``to_class``: ("moved"|"recovered"|"missing"|"error", detail).

    ``check_first`` for objects a killed run announced: a HEAD tells whether that copy
    already happened, so it is recorded, not repeated."""
    try:
        if check_first:
            head = store.head(key)
            if head.storage_class == to_class:
                store.delete_noncurrent(key, size)
                return "recovered", None
        result = store.copy_to_class(key, to_class, size)
        if result.previous_version_id and result.previous_version_id != result.version_id:
            # With versioning on, the old version would stay billed in its old class.
            store.delete_version(key, result.previous_version_id)
        return "moved", None
    except ObjectMissing:
        return "missing", "object not in storage"
    except Exception as exc:  # noqa: BLE001 - one bad object must not stop the night's run
        return "error", f"{type(exc).__name__}: {exc}"[:500]


def _record(session: Session, outcomes: Iterable[tuple[Move, str, str | None]], now: datetime,
            counts: Counter) -> None:
    done, missing, failed = [], [], []
    for move, verdict, detail in outcomes:
        counts[verdict] += 1
        if verdict in ("moved", "recovered", "expected"):
            counts[f"to_{move.to_class}"] += 1
            done.append({"id": move.object_id, "storage_class": move.to_class, "tiered_at": now,
                         "moving_to": None, "last_error": None, "updated_at": now})
        elif verdict == "missing":
            missing.append({"id": move.object_id, "state": ObjectState.MISSING, "moving_to": None,
                            "last_error": detail, "updated_at": now})
        else:
            failed.append({"id": move.object_id, "moving_to": None, "last_error": detail, "updated_at": now})
    for rows in (done, missing, failed):
        if rows:
            session.execute(update(StoredObject), rows)


def _announce(session: Session, moves: Sequence[Move]) -> None:
    by_class: dict[str, list[int]] = {}
    for move in moves:
        by_class.setdefault(move.to_class, []).append(move.object_id)
    for to_class, ids in by_class.items():
        session.execute(
            update(StoredObject).where(StoredObject.id.in_(ids)).values(moving_to=to_class)
            .execution_options(synchronize_session=False)
        )


def execute_moves(session: Session, store: TieredStore, moves: Sequence[Move], now: datetime, *,
                  options: TieringOptions, checkpoint: Callable[[], None], result: RunResult,
                  check_first: bool = False, deadline: float | None = None) -> None:
    """Announce a chunk, copy it with a pool of threads (S3 calls only, no session in them),
    record the outcomes, commit; chunk after chunk until done or past ``deadline``."""
    with ThreadPoolExecutor(max_workers=max(options.concurrency, 1)) as pool:
        for start in range(0, len(moves), options.chunk):
            if deadline is not None and time.monotonic() > deadline:
                result.more = True
                return
            chunk = moves[start:start + options.chunk]
            if not check_first:
                _announce(session, chunk)
                checkpoint()
            verdicts = pool.map(lambda m: _copy(store, m.object_key, m.size, m.to_class, check_first), chunk)
            _record(session, [(m, *v) for m, v in zip(chunk, verdicts, strict=True)], now, result.counts)
            checkpoint()


def record_expected(session: Session, moves: Sequence[Move], now: datetime, result: RunResult) -> None:
    """``managed_by=s3``: the bucket moves the bytes; we record where they are expected to be."""
    _record(session, [(m, "expected", None) for m in moves], now, Counter())
    result.counts["expected"] += len(moves)
    for move in moves:
        result.counts[f"to_{move.to_class}"] += 1


def resume_moves(session: Session, store: TieredStore, now: datetime, *, options: TieringOptions,
                 checkpoint: Callable[[], None], result: RunResult) -> None:
    """Objects a killed run announced: check each, record or finish its copy."""
    query = select(StoredObject).where(StoredObject.moving_to.is_not(None))
    if options.facility_ids:
        query = query.where(StoredObject.facility_id.in_(options.facility_ids))
    pending = [
        Move(o.id, o.object_key, o.size, o.storage_class, o.moving_to)
        for o in session.scalars(query.order_by(StoredObject.id))
    ]
    if pending:
        log.info("resuming %d announced moves of an interrupted run", len(pending))
        execute_moves(session, store, pending, now, options=options, checkpoint=checkpoint,
                      result=result, check_first=True)


# ----------------------------------------------------------------------------- bundles


def _members(session: Session, rows: Sequence[StoredObject]) -> list[bundles.Member]:
    uids = dict(session.execute(
        select(Instance.id, Instance.sop_instance_uid).where(Instance.id.in_([r.instance_id for r in rows]))
    ).all())
    return [bundles.Member(r.id, r.instance_id, uids.get(r.instance_id, ""), r.object_key, r.size, r.sha256)
            for r in rows]


def start_bundle(session: Session, plan: BundlePlan, now: datetime) -> StoredObject | None:
    """Record the bundle (``writing``) and link its members, before any byte is written."""
    rows = list(session.scalars(
        select(StoredObject).where(StoredObject.id.in_(plan.member_ids),
                                   StoredObject.state == ObjectState.KEPT,
                                   StoredObject.bundle_id.is_(None))
        .order_by(StoredObject.id)
    ))
    if not rows:
        return None
    key = bundles.bundle_key(plan.facility_id, plan.study_id, [r.id for r in rows])
    existing = session.scalar(select(StoredObject).where(StoredObject.object_key == key))
    if existing is not None:  # only a killed run leaves one: finish it
        return existing if existing.state == ObjectState.WRITING else None
    shape = bundles.layout(plan.facility_id, plan.study_id, _members(session, rows))
    bundle = StoredObject(
        facility_id=plan.facility_id, study_id=plan.study_id, kind=StoredObjectKind.BUNDLE,
        object_key=key, size=shape.size, sha256="", storage_class=plan.storage_class,
        state=ObjectState.WRITING, stored_at=min(r.stored_at for r in rows), dr_state="pending",
        dr_attempts=0, created_at=now, updated_at=now,
    )
    session.add(bundle)
    session.flush()
    for row in rows:
        row.bundle_id = bundle.id
        row.updated_at = now
    session.flush()
    return bundle


def _unlink(session: Session, bundle: StoredObject, members: Sequence[StoredObject]) -> None:
    for row in members:
        row.bundle_id = None
    session.flush()
    session.delete(bundle)
    session.flush()


def finish_bundle(session: Session, store: TieredStore, bundle: StoredObject, now: datetime, *,
                  spool_dir: Path, checkpoint: Callable[[], None], result: RunResult) -> bool:
    """Write a ``writing`` bundle, verify it, record members as bundled; False if abandoned."""
    members = list(session.scalars(
        select(StoredObject).where(StoredObject.bundle_id == bundle.id).order_by(StoredObject.id)
    ))
    if not members:
        session.delete(bundle)
        return False
    shape = bundles.layout(bundle.facility_id, bundle.study_id or 0, _members(session, members))
    try:
        path, sha256 = bundles.write(store, shape, spool_dir)
    except (ObjectMissing, bundles.BundleError) as exc:
        # A member is gone or changed: keep it out (recorded), and leave the rest for the
        # next run, which plans a bundle without it.
        if isinstance(exc, ObjectMissing):
            culprits = [m for m in members if m.object_key == exc.args[0]]
        else:
            bad = exc.instance_id
            culprits = [m for m in members if bad is not None and m.instance_id == bad]
        for row in culprits:
            row.state = ObjectState.MISSING
            row.last_error = f"not bundled: {exc}"[:500]
        log.error("bundle %s not written: %s", bundle.object_key, exc)
        result.counts["bundle_errors"] += 1
        _unlink(session, bundle, members)
        checkpoint()
        return False
    try:
        store.put_file_in_class(bundle.object_key, path, bundle.storage_class)
    finally:
        path.unlink(missing_ok=True)
    head = store.head(bundle.object_key)
    if head.size != shape.size:
        raise bundles.BundleError(None, f"stored bundle {bundle.object_key} is {head.size} bytes, "
                                        f"expected {shape.size}")
    bundle.sha256 = sha256
    bundle.size = shape.size
    bundle.state = ObjectState.KEPT
    bundle.tiered_at = now
    bundle.updated_at = now
    offsets = {p.member.object_id: p.offset for p in shape.placed}
    for row in members:
        row.state = ObjectState.BUNDLED
        row.bundle_offset = offsets[row.id]
        row.updated_at = now
    result.counts["bundles"] += 1
    result.counts["bundled_instances"] += len(members)
    result.counts[f"to_{bundle.storage_class}"] += 1
    checkpoint()
    return True


def release_bundled(session: Session, store: TieredStore, now: datetime, *, options: TieringOptions,
                    checkpoint: Callable[[], None], result: RunResult) -> None:
    """Delete the own objects of bundled instances (every version: the bytes are in the
    verified bundle), after the commit that recorded it."""
    query = select(StoredObject).where(StoredObject.state == ObjectState.BUNDLED)
    if options.facility_ids:
        query = query.where(StoredObject.facility_id.in_(options.facility_ids))
    rows = list(session.scalars(query.order_by(StoredObject.id)))
    with ThreadPoolExecutor(max_workers=max(options.concurrency, 1)) as pool:
        for start in range(0, len(rows), options.chunk):
            chunk = rows[start:start + options.chunk]
            list(pool.map(lambda r: store.delete_all_versions(r.object_key), chunk))
            for row in chunk:
                row.state = ObjectState.RELEASED
                row.updated_at = now
            result.counts["released"] += len(chunk)
            checkpoint()


def make_bundles(session: Session, store: TieredStore, plans: Sequence[BundlePlan], now: datetime, *,
                 options: TieringOptions, checkpoint: Callable[[], None], result: RunResult,
                 deadline: float | None = None) -> None:
    for plan in plans:
        if deadline is not None and time.monotonic() > deadline:
            result.more = True
            return
        bundle = start_bundle(session, plan, now)
        if bundle is None:
            continue
        checkpoint()
        finish_bundle(session, store, bundle, now, spool_dir=options.spool_dir, checkpoint=checkpoint,
                      result=result)


def resume_bundles(session: Session, store: TieredStore, now: datetime, *, options: TieringOptions,
                   checkpoint: Callable[[], None], result: RunResult) -> None:
    query = select(StoredObject).where(StoredObject.kind == StoredObjectKind.BUNDLE,
                                       StoredObject.state == ObjectState.WRITING)
    if options.facility_ids:
        query = query.where(StoredObject.facility_id.in_(options.facility_ids))
    for bundle in list(session.scalars(query.order_by(StoredObject.id))):
        result.counts["bundles_resumed"] += 1
        finish_bundle(session, store, bundle, now, spool_dir=options.spool_dir, checkpoint=checkpoint,
                      result=result)


# ----------------------------------------------------------------------------- leftovers


def expire_rehydrated(session: Session, store: TieredStore, now: datetime, *, options: TieringOptions,
                      checkpoint: Callable[[], None], result: RunResult) -> None:
    """Bundled instances put back for a restore go again once their time is up."""
    query = select(StoredObject).where(StoredObject.state == ObjectState.REHYDRATED,
                                       StoredObject.rehydrated_until <= now)
    if options.facility_ids:
        query = query.where(StoredObject.facility_id.in_(options.facility_ids))
    for row in list(session.scalars(query)):
        store.delete_all_versions(row.object_key)
        row.state = ObjectState.RELEASED
        row.rehydrated_until = None
        row.updated_at = now
        result.counts["rehydrated_expired"] += 1
    session.execute(
        update(StoredObject).where(StoredObject.restored_until <= now).values(restored_until=None)
        .execution_options(synchronize_session=False)
    )
    checkpoint()


def expire_renditions(session: Session, store: TieredStore, now: datetime, *, options: TieringOptions,
                      checkpoint: Callable[[], None], result: RunResult, batch: int = 1000) -> None:
    """Delete renditions older than ``rendition_days`` (object, every version, then the row;
    the delivery keeps which key and digest it sent). One whose instance still has a
    delivery pending or sending is kept for now: it is being retried from."""
    cutoff = now - timedelta(days=options.rendition_days)
    busy = exists().where(Delivery.instance_id == InstanceRendition.instance_id,
                          Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING]))
    query = (select(InstanceRendition.id, InstanceRendition.object_key)
             .where(InstanceRendition.created_at <= cutoff, ~busy)
             .order_by(InstanceRendition.id).limit(batch))
    if options.facility_ids:
        query = query.join(Instance, Instance.id == InstanceRendition.instance_id).where(
            Instance.facility_id.in_(options.facility_ids))
    last = 0
    while rows := session.execute(query.where(InstanceRendition.id > last)).all():
        with ThreadPoolExecutor(max_workers=max(options.concurrency, 1)) as pool:
            list(pool.map(lambda r: store.delete_all_versions(r.object_key), rows))
        # A row outlives its object only if the run is killed here: the next run deletes
        # again (harmless), and a send in between rebuilds the object from the original.
        session.execute(InstanceRendition.__table__.delete().where(
            InstanceRendition.id.in_([r.id for r in rows])))
        result.counts["renditions_expired"] += len(rows)
        last = rows[-1].id
        checkpoint()


def sweep_staging(session: Session, store: TieredStore, *, today: datetime, options: TieringOptions,
                  result: RunResult) -> None:
    """Staged chunks left behind (a worker died between the commit and the deletes): list
    only the few day partitions just past the upload expiry, never the whole bucket."""
    newest = today - options.upload_expiry - timedelta(days=1)
    for back in range(options.staging_days):
        day = newest - timedelta(days=back)
        chunks: dict[str, list[str]] = {}
        for key, _ in store.list_keys(f"{day:%Y/%m/%d}/"):
            parts = key.split("/")
            if len(parts) >= 6 and parts[3].startswith("upload-") and parts[4] == "chunks":
                chunks.setdefault(parts[3].removeprefix("upload-"), []).append(key)
        if not chunks:
            continue
        live = set(session.scalars(select(Upload.id).where(
            Upload.id.in_(list(chunks)), Upload.state == UploadState.RECEIVING)))
        for upload_id, keys in chunks.items():
            if upload_id in live:
                continue
            for key in keys:
                store.delete(key)
                result.counts["staging_deleted"] += 1


def lifecycle_rules(policy: TierPolicy, *, key_prefix: str = "", abort_multipart_days: int = 2) -> list[dict]:
    """The bucket lifecycle configuration equivalent to the policy (``managed_by=s3``).

    Originals move by their own age. Bundles are written in the first cold class when their
    study reaches it, so their later transitions count from that day. Noncurrent versions
    (left by any overwrite) expire after a day; abandoned multipart uploads are aborted."""
    tiers = policy.tiers
    rules: list[dict] = [{
        "ID": "relaypacs-tiering",
        "Status": "Enabled",
        "Filter": {"Prefix": key_prefix},
        "Transitions": [{"Days": t.after_days, "StorageClass": t.storage_class} for t in tiers[1:]],
        "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_DAYS},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": abort_multipart_days},
    }]
    first_cold = policy.first_cold()
    if first_cold is not None and len(tiers) > 2:
        rules.append({
            "ID": "relaypacs-bundles",
            "Status": "Enabled",
            "Filter": {"Prefix": key_prefix + BUNDLE_PREFIX},
            "Transitions": [{"Days": t.after_days - first_cold.after_days, "StorageClass": t.storage_class}
                            for t in tiers[2:]],
        })
    if not rules[0]["Transitions"]:
        del rules[0]["Transitions"]
    return rules


def ensure_bucket_setup(store: TieredStore, options: TieringOptions) -> dict:
    """Versioning on; with ``managed_by=s3`` the lifecycle rules in place. Idempotent."""
    done = {"versioning": False, "lifecycle": False}
    if not store.supports_classes:
        return done
    if not store.versioning_enabled():
        store.enable_versioning()
        done["versioning"] = True
    if options.managed_by == "s3":
        prefix = f"{store.prefix}/" if getattr(store, "prefix", "") else ""
        rules = lifecycle_rules(options.policy, key_prefix=prefix,
                                abort_multipart_days=options.abort_multipart_days)
        if store.get_lifecycle() != rules:
            store.put_lifecycle(rules)
            done["lifecycle"] = True
    return done


# ----------------------------------------------------------------------------- the run


def run(session: Session, store: TieredStore, options: TieringOptions, now: datetime, *,
        checkpoint: Callable[[], None], dry_run: bool = False) -> RunResult:
    """The whole nightly run at clock ``now``. ``checkpoint`` commits."""
    result = RunResult()
    deadline = time.monotonic() + options.max_seconds if options.max_seconds else None

    def decide() -> lifecycle.Plan:
        return lifecycle.plan(session, options.policy, now, bundle_below=options.bundle_below,
                              bundle_max_bytes=options.bundle_max_bytes,
                              facility_ids=options.facility_ids, limit=options.plan_limit)

    if dry_run:
        # Plan over the catalogue as the run would see it, then take nothing back with us.
        savepoint = session.begin_nested()
        result.counts["catalogued"] = catalogue_new(session, facility_ids=options.facility_ids)
        decided = decide()
        savepoint.rollback()
        result.plan = decided.summary()
        return result
    with result.timed("catalogue"):
        result.counts["catalogued"] = catalogue_new(session, facility_ids=options.facility_ids)
        checkpoint()
    with result.timed("resume"):
        result.counts.update({f"setup_{k}": int(v) for k, v in ensure_bucket_setup(store, options).items()})
        resume_bundles(session, store, now, options=options, checkpoint=checkpoint, result=result)
        release_bundled(session, store, now, options=options, checkpoint=checkpoint, result=result)
        resume_moves(session, store, now, options=options, checkpoint=checkpoint, result=result)
    with result.timed("plan"):
        decided = decide()
    # A backlog larger than one plan (a first run over years of data): the task comes back.
    result.more = len(decided.moves) + sum(len(b.member_ids) for b in decided.bundles) >= options.plan_limit
    with result.timed("bundles"):
        make_bundles(session, store, decided.bundles, now, options=options, checkpoint=checkpoint,
                     result=result, deadline=deadline)
        release_bundled(session, store, now, options=options, checkpoint=checkpoint, result=result)
    with result.timed("moves"):
        if options.managed_by == "s3":
            record_expected(session, decided.moves, now, result)
            checkpoint()
        else:
            execute_moves(session, store, decided.moves, now, options=options, checkpoint=checkpoint,
                          result=result, deadline=deadline)
    with result.timed("cleanup"):
        expire_rehydrated(session, store, now, options=options, checkpoint=checkpoint, result=result)
        expire_renditions(session, store, now, options=options, checkpoint=checkpoint, result=result)
        # Staging and multipart uploads are real, in-flight things: the wall clock, not ``now``.
        wall = utcnow()
        sweep_staging(session, store, today=wall, options=options, result=result)
        result.counts["multipart_aborted"] = store.abort_stale_multipart(
            wall - timedelta(days=options.abort_multipart_days))
        checkpoint()
    return result
