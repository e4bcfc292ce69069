"""Thin Celery tasks: load by id, call one pipeline function, commit, enqueue what follows.

Task names are stable (``area.verb_noun``): renaming a module must not orphan queued work.
"""

from __future__ import annotations

import logging
import socket
from datetime import timedelta

from sqlalchemy import or_, select

from config.settings import QUEUES
from pipeline import batch_progress, grouping, intake, liveness, routing
from pipeline import forwarding as forwarding
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
from workers import chains, event_publishing, runtime
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
        if not batch_progress.claim_completed_batch(session, batch_id):
            return 0
        pairs = routing.plan_deliveries(session, session.get(Batch, batch_id))
        if not pairs:
            batch_progress.settle_batch(session, batch_id)
    return chains.enqueue_forwarding(pairs)


@app.task(name="pacs.forward_quiet_batches")
def forward_quiet_batches() -> int:
    quiet = timedelta(seconds=runtime.settings().batch_quiet_seconds)
    pairs: list[tuple[int, int]] = []
    with runtime.session_scope() as session:
        for batch in batch_progress.quiet_open_batches(session, quiet):
            pairs.extend(routing.plan_deliveries(session, batch))
    return chains.enqueue_forwarding(pairs)


@app.task(name="pacs.forward_study", bind=True, max_retries=None, acks_late=True)
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
                stale_after=timedelta(seconds=cfg.claim_stale_seconds),
            )
        finally:
            sender.close()
        for batch_id in set(session.scalars(
                select(Delivery.batch_id).where(Delivery.study_id == study_id).distinct())):
            batch_progress.settle_batch(session, batch_id)
    event_publishing.study_forwarded(study_id, destination_id, result)  # after the commit (issue 5)
    if result.restoring:
        # Start the restores now, not at the next beat poll: an instance in a GLACIER_IR
        # bundle is readable again within seconds, and its delivery replays by itself.
        chains.enqueue_restores()
    if result.come_back_after is not None:
        # The same task id comes back later: it reclaims any row it left in flight.
        raise self.retry(countdown=max(result.come_back_after, 0.5))
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
    cutoff = utcnow() - timedelta(seconds=runtime.settings().redrive_after_seconds)
    with runtime.session_scope() as session:
        uploads = session.scalars(select(Upload.id).where(
            Upload.state.in_([UploadState.RECEIVED, UploadState.ASSEMBLED]),
            Upload.updated_at < cutoff)).all()
        pairs = session.execute(select(Delivery.study_id, Delivery.destination_id).where(
            Delivery.updated_at < cutoff,
            or_(Delivery.state == DeliveryState.SENDING,
                (Delivery.state == DeliveryState.PENDING)
                & or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at < cutoff)),
        ).distinct()).all()
        completed = session.scalars(select(Batch.id).where(
            Batch.state == BatchState.COMPLETED, Batch.completed_at < cutoff)).all()
    for upload_id in uploads:
        chains.enqueue_upload_chain(upload_id)
    for batch_id in completed:
        chains.enqueue_batch_dispatch(batch_id)
    chains.enqueue_forwarding([(p.study_id, p.destination_id) for p in pairs])
    return {"uploads": len(uploads), "forwards": len(pairs), "batches": len(completed)}


@app.task(name="health.send_canaries")
def send_canaries() -> None:
    with runtime.session_scope() as session:
        liveness.record_sent(session, QUEUES)
    for queue in QUEUES:
        # Data decides the queue here: one canary per queue, whichever pool serves it.
        stamp_canary.apply_async(args=(queue,), queue=queue, expires=300)


@app.task(name="health.stamp_canary")
def stamp_canary(queue: str) -> None:
    with runtime.session_scope() as session:
        liveness.record_consumed(session, queue, socket.gethostname())
