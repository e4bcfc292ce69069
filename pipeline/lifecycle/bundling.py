"""The bundling step of a tiering run: small instances of a study written as one tar
object in the cold class (the archive format itself is in pipeline/lifecycle/bundles.py),
then their own objects deleted.

Resumable, because the run may be killed at any point: a bundle row is committed
(``writing``, members linked) before its object is written under a key derived from its
members, so a rerun writes the same object again; member objects are deleted only after the
commit that says their bytes are in a verified bundle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.lifecycle import bundles
from pipeline.lifecycle.options import RunResult, TieringOptions
from pipeline.lifecycle.planning import BundlePlan
from pipeline.models import Instance, ObjectState, StoredObject, StoredObjectKind
from pipeline.storage import ObjectMissing, TieredStore

log = logging.getLogger(__name__)


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
