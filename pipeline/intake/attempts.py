"""Attempts at an upload's background work (assembly, parse) that never finished.

Tasks are acknowledged late and given back when their worker dies, so a file that kills its
worker (out of memory, a crash in a decoder) would come back to kill the next one, for ever.
Each attempt is counted before its work starts, in a transaction of its own, and the count is
set back to 0 when the attempt ends, whichever way: what is left counts the workers that died
on the upload. Past ``max_losses`` the upload is quarantined (``worker_lost``) instead of being
tried again: a dead letter that a person can look at, never a loop.

Every state change here is a conditional UPDATE (``WHERE state IN (...)``): a DELETE or an
expiry that ended the upload meanwhile is never undone.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pipeline.models import Upload, UploadState, utcnow

# States in which assembly or parse still has work to do on an upload.
WORKING_STATES = (UploadState.RECEIVED, UploadState.ASSEMBLED)


@dataclass(frozen=True)
class Attempt:
    go: bool  # False: nothing to do, or the upload was just dead-lettered
    batch_id: int | None


def begin(session: Session, upload_id: str, max_losses: int) -> Attempt:
    """Count this attempt; the caller commits before the work starts. When ``max_losses``
    earlier attempts never finished, quarantine the upload instead (``go`` is False)."""
    row = session.execute(
        update(Upload)
        .where(Upload.id == upload_id, Upload.state.in_(WORKING_STATES))
        .values(unfinished_attempts=Upload.unfinished_attempts + 1)
        .returning(Upload.unfinished_attempts, Upload.batch_id)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        batch_id = session.scalar(select(Upload.batch_id).where(Upload.id == upload_id))
        return Attempt(False, batch_id)
    losses = row.unfinished_attempts - 1
    if losses >= max_losses:
        quarantine(session, upload_id, "worker_lost",
                   f"its processing ended its worker {losses} times (out of memory or a crash); "
                   "not tried again")
        return Attempt(False, row.batch_id)
    return Attempt(True, row.batch_id)


def end(session: Session, upload_id: str) -> None:
    """The attempt ended (done, failed or given up for a retry): it killed no worker."""
    session.execute(
        update(Upload).where(Upload.id == upload_id, Upload.unfinished_attempts != 0)
        .values(unfinished_attempts=0).execution_options(synchronize_session=False)
    )


def quarantine(session: Session, upload_id: str, reason: str, detail: str) -> bool:
    """Quarantine an upload still waiting for assembly or parse; False if it had left those
    states meanwhile (terminated, parsed, quarantined already)."""
    result = session.execute(
        update(Upload)
        .where(Upload.id == upload_id, Upload.state.in_(WORKING_STATES))
        .values(state=UploadState.QUARANTINED.value, quarantine_reason=reason,
                quarantine_detail=detail[:1000], updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1
