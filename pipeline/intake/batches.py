"""Where a batch stands: settled uploads, the one-time move to forwarding, and done."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from pipeline.models import (
    TERMINAL_UPLOAD_STATES,
    Batch,
    BatchState,
    Delivery,
    DeliveryState,
    Upload,
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


def claim_completed_batch(session: Session, batch_id: int, now: datetime | None = None) -> bool:
    """Move a completed, settled batch to forwarding exactly once across all processes."""
    if not uploads_settled(session, batch_id):
        return False
    result = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.state == BatchState.COMPLETED)
        .values(state=BatchState.FORWARDING, forwarding_started_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def quiet_open_batches(session: Session, quiet: timedelta, now: datetime | None = None) -> list[Batch]:
    """Open batches idle for ``quiet`` whose uploads are settled: forward what they hold
    (as Mercure does for series), without closing them to more uploads."""
    now = now or utcnow()
    batches = session.scalars(
        select(Batch).where(Batch.state == BatchState.OPEN, Batch.last_activity_at < now - quiet)
    ).all()
    return [b for b in batches if uploads_settled(session, b.id)]


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
    if open_rows == 0 and uploads_settled(session, batch_id):
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
