"""Disaster-recovery copy: every kept object also in a second bucket (its own endpoint and
credentials), verified by checksum, retried with backoff, mirrored when objects are bundled.

A copy is verified twice: the bytes read from the primary must hash to the sha256 recorded
when they arrived (never replicate a corrupted object), and the DR store must report that
same SHA-256 for what it now holds (S3 checks the checksum sent with the PUT against the body
it received and keeps it). ``audit`` re-checks copies already made, oldest check first, and
sends back to pending any whose checksum no longer matches.

Objects are copied while still readable (STANDARD for the first 90 days: the job runs hourly);
one already in an archive class waits until it is restored.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, aliased

from pipeline.lifecycle import policy as lifecycle
from pipeline.models import DrState, ObjectState, StoredObject, utcnow
from pipeline.storage import ObjectMissing, TieredStore

MAX_ATTEMPTS = 10


def retry_delay(attempt: int) -> timedelta:
    return timedelta(seconds=min(6 * 3600, 60 * 2 ** max(attempt - 1, 0)))


def copy_one(primary: TieredStore, dr: TieredStore, key: str, sha256: str, storage_class: str,
             spool_dir: Path) -> str | None:
    """Copy one object; None when verified, else why not."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=spool_dir, prefix="dr-") as tmp:
        digest = hashlib.sha256()
        try:
            with primary.open(key) as body:
                while block := body.read(1024 * 1024):
                    digest.update(block)
                    tmp.write(block)
        except ObjectMissing as exc:
            return f"primary: {exc}"
        tmp.flush()
        if digest.hexdigest() != sha256:
            return "primary object does not match its recorded sha256; not replicated"
        stored = dr.put_file_verified(key, Path(tmp.name), storage_class)
    if stored != sha256:
        return f"DR store reports sha256 {stored or 'none'}, expected {sha256}"
    return None


def _eligible(now: datetime, facility_ids: Sequence[int] | None):  # noqa: ANN202
    readable = [c for c in lifecycle.CLASSES if lifecycle.readable(c)]
    where = [
        StoredObject.dr_state == DrState.PENDING,
        or_(StoredObject.dr_next_attempt_at.is_(None), StoredObject.dr_next_attempt_at <= now),
        StoredObject.state == ObjectState.KEPT,
        or_(StoredObject.storage_class.in_(readable), StoredObject.restored_until > now),
    ]
    if facility_ids:
        where.append(StoredObject.facility_id.in_(list(facility_ids)))
    return and_(*where)


def replicate(session: Session, primary: TieredStore, dr: TieredStore, *, storage_class: str,
              spool_dir: Path, checkpoint: Callable[[], None], now: datetime | None = None,
              limit: int = 5000, chunk: int = 200, concurrency: int = 8,
              facility_ids: Sequence[int] | None = None) -> Counter:
    """Copy pending objects, then mirror what the primary no longer keeps on its own."""
    now = now or utcnow()
    counts: Counter = Counter()
    rows = session.execute(
        select(StoredObject.id, StoredObject.object_key, StoredObject.sha256, StoredObject.dr_attempts)
        .where(_eligible(now, facility_ids)).order_by(StoredObject.id).limit(limit)
    ).all()
    with ThreadPoolExecutor(max_workers=max(concurrency, 1)) as pool:
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            errors = pool.map(lambda r: _safe_copy(primary, dr, r.object_key, r.sha256, storage_class,
                                                   spool_dir), part)
            updates = []
            for row, error in zip(part, errors, strict=True):
                if error is None:
                    counts["copied"] += 1
                    updates.append({"id": row.id, "dr_state": DrState.COPIED, "dr_copied_at": now,
                                    "dr_error": None, "dr_attempts": row.dr_attempts + 1})
                    continue
                attempts = row.dr_attempts + 1
                gave_up = attempts >= MAX_ATTEMPTS
                counts["failed" if gave_up else "retrying"] += 1
                updates.append({"id": row.id, "dr_state": DrState.FAILED if gave_up else DrState.PENDING,
                                "dr_attempts": attempts, "dr_error": error[:1000],
                                "dr_next_attempt_at": now + retry_delay(attempts)})
            session.execute(update(StoredObject), updates)
            checkpoint()
    counts.update(mirror_removals(session, dr, now=now, checkpoint=checkpoint, facility_ids=facility_ids))
    return counts


def _safe_copy(primary: TieredStore, dr: TieredStore, key: str, sha256: str, storage_class: str,
               spool_dir: Path) -> str | None:
    try:
        return copy_one(primary, dr, key, sha256, storage_class, spool_dir)
    except Exception as exc:  # noqa: BLE001 - recorded on the row and retried with backoff
        return f"{type(exc).__name__}: {exc}"


def mirror_removals(session: Session, dr: TieredStore, *, now: datetime, checkpoint: Callable[[], None],
                    facility_ids: Sequence[int] | None = None) -> Counter:
    """Bundled instances leave the DR bucket once their bundle's copy there is verified;
    never before, so the DR side holds every byte at every moment."""
    counts: Counter = Counter()
    bundle = aliased(StoredObject)
    query = (
        select(StoredObject)
        .join(bundle, bundle.id == StoredObject.bundle_id)
        .where(StoredObject.state.in_([ObjectState.BUNDLED, ObjectState.RELEASED, ObjectState.REHYDRATED]),
               StoredObject.dr_state.in_([DrState.PENDING, DrState.COPIED, DrState.FAILED]),
               bundle.dr_state == DrState.COPIED)
    )
    if facility_ids:
        query = query.where(StoredObject.facility_id.in_(list(facility_ids)))
    for row in list(session.scalars(query)):
        if row.dr_state == DrState.COPIED:
            dr.delete_all_versions(row.object_key)
            counts["dr_removed"] += 1
        row.dr_state = DrState.REMOVED
        row.updated_at = now
    checkpoint()
    return counts


def audit(session: Session, dr: TieredStore, *, now: datetime | None = None, limit: int = 200,
          checkpoint: Callable[[], None]) -> Counter:
    """Re-check DR copies, least recently checked first; a mismatch is copied again."""
    now = now or utcnow()
    counts: Counter = Counter()
    rows = list(session.scalars(
        select(StoredObject).where(StoredObject.dr_state == DrState.COPIED)
        .order_by(StoredObject.dr_copied_at, StoredObject.id).limit(limit)
    ))
    for row in rows:
        try:
            head = dr.head(row.object_key, checksum=True)
            ok = head.checksum_sha256 == row.sha256 and head.size == row.size
            why = f"DR copy checksum {head.checksum_sha256 or 'none'} != {row.sha256}"
        except ObjectMissing:
            ok, why = False, "DR copy missing"
        counts["audited"] += 1
        if ok:
            row.dr_copied_at = now  # "last verified at": the audit goes round
        else:
            counts["audit_mismatch"] += 1
            row.dr_state = DrState.PENDING
            row.dr_attempts = 0
            row.dr_next_attempt_at = None
            row.dr_error = why
    checkpoint()
    return counts


def retry_failed(session: Session, facility_ids: Sequence[int] | None = None) -> int:
    """Put DR dead letters back to pending with fresh attempts."""
    query = update(StoredObject).where(StoredObject.dr_state == DrState.FAILED)
    if facility_ids:
        query = query.where(StoredObject.facility_id.in_(list(facility_ids)))
    result = session.execute(query.values(dr_state=DrState.PENDING, dr_attempts=0, dr_next_attempt_at=None)
                             .execution_options(synchronize_session=False))
    return result.rowcount or 0
