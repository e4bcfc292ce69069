"""Where a batch stands: settled uploads, the one-time move to forwarding, and done.

A batch opened from the upload screen is *held*: neither completion nor the quiet period
sends it until a person confirms it on the study board (``confirm_held_batch``); batches
from the CLI, the API and the DICOM listener are never held.

A batch goes out when every file is settled (parsed, quarantined, terminated or expired),
or once it has been quiet for the quiet period with no file left in the gateway's own hands
(received, assembled): a client's upload abandoned at 40 % must not hold the files that
arrived whole for the day it takes to expire, while the gateway's own backlog is waited for.
Such a straggler, if it ever finishes, goes out on its own when its parse settles (a
completed batch whose forwarding started plans each newly recorded file at once).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from pipeline.dicom.versions import open_conflicts
from pipeline.models import (
    TERMINAL_UPLOAD_STATES,
    Batch,
    BatchState,
    Delivery,
    DeliveryState,
    Upload,
    UploadState,
    utcnow,
)


def uploads_settled(session: Session, batch_id: int) -> bool:
    """True when no upload of the batch is still being received, assembled or parsed."""
    busy = session.scalar(
        select(func.count())
        .select_from(Upload)
        .where(Upload.batch_id == batch_id, Upload.state.not_in(list(TERMINAL_UPLOAD_STATES)))
    )
    return busy == 0


def uploads_in_progress(session: Session, batch_id: int) -> int:
    """Files whose bytes all arrived and that the gateway is assembling or parsing."""
    return session.scalar(
        select(func.count()).select_from(Upload).where(
            Upload.batch_id == batch_id,
            Upload.state.in_([UploadState.RECEIVED, UploadState.ASSEMBLED]))) or 0


def claim_completed_batch(session: Session, batch_id: int, now: datetime | None = None, *,
                          quiet: timedelta | None = None) -> bool:
    """Move a completed batch to forwarding exactly once across all processes: when its
    uploads are settled, or (with ``quiet``) when it has been idle that long with only
    uploads still being received (abandoned, or slow) left unsettled."""
    now = now or utcnow()
    if session.scalar(select(Batch.held).where(Batch.id == batch_id)):
        return False  # waits for the person's confirmation, whatever its uploads do
    if not uploads_settled(session, batch_id):
        batch = session.get(Batch, batch_id)
        if (quiet is None or batch is None or batch.last_activity_at >= now - quiet
                or uploads_in_progress(session, batch_id)):
            return False
    result = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.state == BatchState.COMPLETED)
        .values(state=BatchState.FORWARDING, forwarding_started_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def quiet_open_batches(session: Session, quiet: timedelta, now: datetime | None = None) -> list[Batch]:
    """Open batches idle for ``quiet`` with no file in the gateway's hands: forward what they
    hold (as Mercure does for series), without closing them to more uploads and without
    waiting for uploads still being received."""
    now = now or utcnow()
    batches = session.scalars(
        select(Batch).where(Batch.state == BatchState.OPEN, Batch.last_activity_at < now - quiet,
                            Batch.held.is_(False))
    ).all()
    return [b for b in batches if not uploads_in_progress(session, b.id)]


def quiet_completed_batches(session: Session, quiet: timedelta, now: datetime | None = None) -> list[int]:
    """Completed batches idle for ``quiet`` and still waiting for an unfinished upload."""
    now = now or utcnow()
    return list(session.scalars(
        select(Batch.id).where(Batch.state == BatchState.COMPLETED,
                               Batch.last_activity_at < now - quiet, Batch.held.is_(False))
    ))


def confirm_held_batch(session: Session, batch: Batch, now: datetime | None = None) -> bool:
    """The person confirmed a held batch on the study board: it is complete (no more files)
    and, once its uploads settle, goes out as any completed batch. False when there was
    nothing to confirm (not held, or confirmed already)."""
    if not batch.held:
        return False
    now = now or utcnow()
    batch.held = False
    batch.confirmed_at = now
    if batch.state == BatchState.OPEN:
        batch.state = BatchState.COMPLETED
        batch.completed_at = now
    session.flush()
    return True


def forwarding_started(batch: Batch) -> bool:
    """A completed batch whose files were planned for delivery: a file recorded later (a
    straggler, a version a person chose) is planned on its own at once. (An open batch
    plans what it holds at each quiet period instead.)"""
    return batch.state in (BatchState.FORWARDING, BatchState.DONE)


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
    if open_rows == 0 and uploads_settled(session, batch_id) and not open_conflicts(session, batch):
        batch.state = BatchState.DONE
        session.flush()
        return True
    return False


def reopen_for_replay(session: Session, batch_ids: set[int]) -> None:
    """A replayed delivery puts a done batch back to forwarding until it settles again."""
    for batch in session.scalars(select(Batch).where(Batch.id.in_(batch_ids))):
        if batch.state == BatchState.DONE:
            batch.state = BatchState.FORWARDING
    session.flush()
