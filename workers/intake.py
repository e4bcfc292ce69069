"""Tasks of the ``intake`` queue: a finished upload's chunks become one stored object, abandoned
uploads expire, and work whose message was lost is driven again.

Task names are stable (``area.verb_noun``): renaming a module must not orphan queued work.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, select

from pipeline.intake import attempts
from pipeline.intake import uploads as intake
from pipeline.intake.assembly import AssemblyError, assemble
from pipeline.models import Batch, BatchState, Delivery, DeliveryState, Upload, UploadState, utcnow
from workers import chains, runtime
from workers.app import app


@app.task(name="intake.assemble_upload", max_retries=5, autoretry_for=(OSError,),
          retry_backoff=True, retry_jitter=True)
def assemble_upload(upload_id: str) -> None:
    done = None
    with runtime.upload_attempt(upload_id, "assembly") as attempt:
        if attempt.go:
            with runtime.session_scope() as session:
                upload = session.get(Upload, upload_id)
                try:
                    done = assemble(session, runtime.store(), upload, runtime.spool_dir())
                except AssemblyError as exc:
                    attempts.quarantine(session, upload_id, exc.reason, exc.detail)
    for key in done.staged_keys if done else []:
        runtime.store().delete(key)  # after the commit: the rows no longer point at them
    if attempt.batch_id is not None and (done is None or done.ended):
        # Quarantined or ended here: the batch may have been waiting only for this file.
        chains.enqueue_dispatch_if_completed([attempt.batch_id])


@app.task(name="intake.expire_abandoned_uploads")
def expire_abandoned_uploads() -> int:
    with runtime.session_scope() as session:
        expired = intake.expire_abandoned(session)
    for key in expired.staged_keys:
        runtime.store().delete(key)
    chains.enqueue_dispatch_if_completed(expired.batch_ids)
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
