"""Thin Celery tasks: load by id, call one pipeline function, commit, enqueue what follows.

Task names are stable (``area.verb_noun``): renaming a module must not orphan queued work.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta

from sqlalchemy import select

from pipeline import forwarding, grouping, intake
from pipeline.assembly import AssemblyError, assemble
from pipeline.destinations import make_sender
from pipeline.models import (
    Batch,
    BatchState,
    Delivery,
    DeliveryState,
    Destination,
    Upload,
    UploadState,
    utcnow,
)
from workers import chains, runtime
from workers.app import app

log = logging.getLogger(__name__)


@app.task(name="intake.assemble_upload", max_retries=5, autoretry_for=(OSError,),
          retry_backoff=True, retry_jitter=True)
def assemble_upload(upload_id: str) -> None:
    with runtime.session_scope() as session:
        upload = session.get(Upload, upload_id)
        if upload is None:
            return
        try:
            done = assemble(session, runtime.store(), upload, runtime.spool_dir())
        except AssemblyError as exc:
            grouping.quarantine(session, upload, exc.reason, exc.detail)
            done = None
    for key in done.staged_keys if done else []:
        runtime.store().delete(key)  # after the commit: the rows no longer point at them


@app.task(name="dicom.parse_and_group", max_retries=5, autoretry_for=(OSError,),
          retry_backoff=True, retry_jitter=True)
def parse_and_group(upload_id: str) -> None:
    with runtime.session_scope() as session:
        upload = session.get(Upload, upload_id)
        if upload is None:
            return
        grouping.parse_and_group(session, runtime.store(), upload, runtime.spool_dir())
        batch_id = upload.batch_id
    _dispatch_if_completed([batch_id])


def _dispatch_if_completed(batch_ids: list[int]) -> None:
    """Read after our own commit: if the client already completed the batch, this change
    may have been the last one it waited for. (Completion itself also dispatches.)"""
    with runtime.session_scope() as session:
        completed = session.scalars(select(Batch.id).where(
            Batch.id.in_(batch_ids), Batch.state == BatchState.COMPLETED)).all()
    for batch_id in completed:
        chains.enqueue_batch_dispatch(batch_id)


@app.task(name="pacs.dispatch_batch")
def dispatch_batch(batch_id: int) -> int:
    """A completed batch whose uploads are all settled goes to forwarding, exactly once."""
    with runtime.session_scope() as session:
        if not forwarding.claim_completed_batch(session, batch_id):
            return 0
        batch = session.get(Batch, batch_id)
        pairs = forwarding.plan_deliveries(session, batch)
        if not pairs:
            forwarding.settle_batch(session, batch_id)
    return chains.enqueue_forwarding(pairs)


@app.task(name="pacs.forward_quiet_batches")
def forward_quiet_batches() -> int:
    quiet = timedelta(seconds=runtime.settings().batch_quiet_seconds)
    pairs: list[tuple[int, int]] = []
    with runtime.session_scope() as session:
        for batch in forwarding.quiet_open_batches(session, quiet):
            pairs.extend(forwarding.plan_deliveries(session, batch))
    return chains.enqueue_forwarding(pairs)


def _backoff(retries: int) -> float:
    # Exponential, capped, with "equal jitter": never less than half the step, so a PACS
    # outage is waited out, not hammered, and many workers do not retry in step.
    step = min(1800.0, 5.0 * 2**retries)
    return step / 2 + random.uniform(0, step / 2)


@app.task(name="pacs.forward_study", bind=True, max_retries=None)
def forward_study(self, study_id: int, destination_id: int) -> dict:  # noqa: ANN001
    cfg = runtime.settings()
    with runtime.session_scope() as session:
        destination = session.get(Destination, destination_id)
        if destination is None or not destination.enabled:
            return {"skipped": True}
        sender = make_sender(destination.kind, destination.options,
                             timeout=cfg.stow_timeout_seconds, batch_size=cfg.stow_batch_size)
        try:
            result = forwarding.forward_study(
                session, runtime.store(), sender, study_id=study_id,
                destination_id=destination_id, claim=self.request.id or "local",
                batch_size=cfg.stow_batch_size, max_attempts=cfg.delivery_max_attempts,
                checkpoint=session.commit,
            )
        finally:
            sender.close()
        batch_ids = set(session.scalars(
            select(Delivery.batch_id).where(Delivery.study_id == study_id).distinct()))
        for batch_id in batch_ids:
            forwarding.settle_batch(session, batch_id)
    if result.transient_error is not None and result.deferred:
        retry_after = result.transient_error.retry_after
        raise self.retry(countdown=max(retry_after or 0, _backoff(self.request.retries)))
    return {"delivered": result.delivered, "failed": result.failed, "deferred": result.deferred}


@app.task(name="intake.expire_abandoned_uploads")
def expire_abandoned_uploads() -> int:
    with runtime.session_scope() as session:
        expired = intake.expire_abandoned(session)
    for key in expired.staged_keys:
        runtime.store().delete(key)
    _dispatch_if_completed(expired.batch_ids)
    return len(expired.upload_ids)


@app.task(name="intake.redrive_stuck_work")
def redrive_stuck_work() -> dict:
    """Re-enqueue work whose message was lost (broker restart, purge): idempotent tasks
    make a duplicate harmless, so erring on the side of re-sending is safe."""
    cutoff = utcnow() - timedelta(minutes=10)
    with runtime.session_scope() as session:
        uploads = session.scalars(select(Upload.id).where(
            Upload.state.in_([UploadState.RECEIVED, UploadState.ASSEMBLED]),
            Upload.updated_at < cutoff)).all()
        pairs = session.execute(select(Delivery.study_id, Delivery.destination_id).where(
            Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING]),
            Delivery.updated_at < cutoff).distinct()).all()
    for upload_id in uploads:
        chains.enqueue_upload_chain(upload_id)
    chains.enqueue_forwarding([(p.study_id, p.destination_id) for p in pairs])
    return {"uploads": len(uploads), "forwards": len(pairs)}
