"""Tasks of the ``intake`` queue: a finished upload's chunks become one stored object, abandoned
uploads expire, and work whose message was lost is driven again.

Task names are stable (``area.verb_noun``): renaming a module must not orphan queued work.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import redis
from sqlalchemy import or_, select

from config.logging import request_id
from pipeline.delivery import senders
from pipeline.intake import attempts
from pipeline.intake import uploads as intake
from pipeline.intake.assembly import AssemblyError, assemble
from pipeline.models import Batch, BatchState, Delivery, DeliveryState, Upload, UploadState, utcnow
from workers import chains, runtime
from workers.app import app


@app.task(name="intake.assemble_upload", max_retries=10, autoretry_for=(OSError, *runtime.DATABASE_AWAY),
          retry_backoff=True, retry_backoff_max=60, retry_jitter=True)
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


# Retried like the steps it starts: a database or broker away for a while must not drop
# the only message that starts these files' chains (the re-drive would find them 10 min later).
@app.task(name="intake.start_uploads", max_retries=10, autoretry_for=(OSError, *runtime.DATABASE_AWAY),
          retry_backoff=True, retry_backoff_max=60, retry_jitter=True)
def start_uploads(uploads: dict[str, str | None]) -> int:
    """Start the chain of each complete upload the event relay saw (workers.chains.after_events):
    a whole file at parsing, a file of chunks at assembly. Sent again after a crash or a retry,
    it starts them again, which the idempotent tasks make harmless (as the re-drive's re-sends)."""
    with runtime.session_scope() as session:
        steps = intake.next_steps(session, list(uploads))
    for step, upload_id in steps:
        # Each chain carries the id of the request that completed its upload (the publish
        # signal reads it: workers.app), not this task's own.
        token = request_id.set(uploads.get(upload_id) or request_id.get())
        try:
            if step == intake.PARSE:
                chains.enqueue_parse(upload_id)
            else:
                chains.enqueue_upload_chain(upload_id)
        finally:
            request_id.reset(token)
    return len(steps)


@app.task(name="intake.expire_abandoned_uploads")
def expire_abandoned_uploads() -> int:
    with runtime.session_scope() as session:
        expired = intake.expire_abandoned(session)
    for key in expired.staged_keys:
        runtime.store().delete(key)
    chains.enqueue_dispatch_if_completed(expired.batch_ids)
    return len(expired.upload_ids)


# Set in a Redis broker once; a Redis restarted without persistence comes back without it,
# and without every message it held.
BROKER_EPOCH_KEY = "relaypacs:broker-epoch"


def broker_started_empty() -> bool:
    """True once per life of a Redis broker: the first look after it (re)started empty. Other
    brokers keep their queues across a restart (RabbitMQ's are durable)."""
    url = runtime.settings().broker_url
    if not url.startswith(("redis://", "rediss://")):
        return False
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        return bool(client.set(BROKER_EPOCH_KEY, utcnow().isoformat(), nx=True))
    finally:
        client.close()


@app.task(name="intake.redrive_dead_senders")
def redrive_dead_senders() -> dict:
    """Hand the studies of forwarding runs whose heartbeat stopped (a killed worker) to new
    runs, within the stale age; a run that still beats is left alone. A broker that came
    back empty lost every queued task: all unfinished work is driven again at once."""
    stale = timedelta(seconds=runtime.settings().claim_stale_seconds)
    with runtime.session_scope() as session:
        pairs = senders.take_over_dead(session, stale)
    taken_over = chains.enqueue_forwarding(pairs)
    lost = redrive(utcnow()) if broker_started_empty() else None
    return {"taken_over": taken_over, "broker_lost_queues": lost}


@app.task(name="intake.redrive_stuck_work")
def redrive_stuck_work() -> dict:
    """Re-enqueue work whose message was lost (purge, a message lost in transit): idempotent
    tasks make a duplicate harmless, so erring on the side of re-sending is safe."""
    return redrive(utcnow() - timedelta(seconds=runtime.settings().redrive_after_seconds))


def redrive(cutoff: datetime) -> dict:
    """Enqueue again the unfinished work untouched since ``cutoff``."""
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
