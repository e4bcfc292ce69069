"""What the tiering run deletes besides moving: rehydrated copies of bundled instances
past their restore days, renditions past their days, and staged upload chunks left behind.

Renditions (rewritten copies made at forwarding time, pipeline/delivery/renditions.py) are not
tiered but expired: they are needed while their deliveries retry, can be rebuilt from the
original (the rewrite is deterministic), and a cold rendition deleted later would bill its
class's minimum duration. So they are deleted while still in STANDARD, before the first cold
tier.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from pipeline.lifecycle.options import RunResult, TieringOptions
from pipeline.models import (
    TERMINAL_UPLOAD_STATES,
    Delivery,
    DeliveryState,
    Instance,
    InstanceRendition,
    ObjectState,
    StoredObject,
    Upload,
)
from pipeline.storage import TieredStore


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
    only the few day partitions just past the upload expiry, never the whole bucket.

    Only an upload that has ended (parsed, quarantined, terminated, expired) loses its chunks:
    one RECEIVED long ago may still wait for assembly behind an intake backlog. A run scoped
    to facilities touches theirs only; chunks with no upload row at all are nobody's and go."""
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
        rows = dict(session.execute(select(Upload.id, Upload.facility_id).where(
            Upload.id.in_(list(chunks)))).all())
        ended = set(session.scalars(select(Upload.id).where(
            Upload.id.in_(list(rows)), Upload.state.in_(list(TERMINAL_UPLOAD_STATES)))))
        for upload_id, keys in chunks.items():
            if upload_id in rows and (upload_id not in ended or (
                    options.facility_ids and rows[upload_id] not in options.facility_ids)):
                continue
            for key in keys:
                store.delete(key)
                result.counts["staging_deleted"] += 1
