"""DIMSE intake: instances a modality pushes to the gateway's Storage SCP become uploads that
take the same road as tus uploads (parse and group, then forwarding).

What the SCP front end does with one C-STORE, in this order, and why:

1. ``check_received``: the header is read once (the same ``read_header`` the parse task uses),
   only to choose the C-STORE status. A data set we cannot understand is still kept and
   quarantined by the chain (bad input policy: kept with the reason, never forwarded), but the
   modality hears a failure instead of a success, so its operator sees that the image did not
   go and the modality does not purge it as delivered.
2. ``store_original``: the Part-10 file (the SCP's file meta + the data set bytes exactly as they
   arrived, never re-encoded) goes straight to the upload's final ``original.dcm`` key, hashed on
   the way. There is no chunking in DIMSE, so the tus staging and assembly step would only copy
   the object once more: the row is recorded as ASSEMBLED with its digest and the chain starts at
   the parse step.
3. ``session_batch`` + ``record_upload`` in one short transaction that the caller commits; only
   then may the SCP answer success. Bytes stored but never committed (a crash in between) are an
   orphan object and an unacknowledged C-STORE, which the modality sends again: an acknowledged
   instance is never lost.

A sending modality's session is one OPEN batch per (facility, calling AE title). It is left
open, so the beat job ``pacs.forward_quiet_batches`` forwards what it holds once it has been
quiet for ``RELAYPACS_BATCH_QUIET_SECONDS`` (as Mercure does). When the same AE sends again after
that quiet period, the old batch is completed (so it settles to DONE and leaves the quiet scan)
and a new one opens: batches stay the size of a session instead of growing forever.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.accounts.users import get_or_create_facility
from pipeline.dicom.headers import DEFAULT_LIMITS, ParseLimits, Quarantine, read_header
from pipeline.intake.uploads import original_key
from pipeline.models import Batch, BatchState, Role, Upload, UploadState, User, utcnow
from pipeline.storage import ObjectStore

READ_BLOCK = 1024 * 1024

# C-STORE response statuses (PS3.4 B.2.3).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # our storage or database failed: the modality should retry later
DATASET_MISMATCH = 0xA900  # data set does not match the SOP class (UIDs missing or invalid)
CANNOT_UNDERSTAND = 0xC000  # not a decodable data set (truncated, garbage)

_MISMATCH_REASONS = frozenset({"missing_uid", "invalid_uid"})
_SLUG = re.compile(r"[^a-z0-9]+")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class ScpAccountError(ValueError):
    """The system user the SCP needs exists, but belongs to another facility."""


@dataclass(frozen=True)
class ScpAccount:
    """Who owns what the SCP receives: a facility and its system user (no usable token)."""

    facility_id: int
    user_id: int


@dataclass(frozen=True)
class StoredOriginal:
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Refusal:
    """Why a received data set is kept but answered with a failure status."""

    status: int
    reason: str  # the quarantine reason code: safe for logs and the ErrorComment (no PHI)


@dataclass(frozen=True)
class SessionBatch:
    batch: Batch
    # Batches of this sender closed by this call: dispatch them after the commit.
    completed_ids: list[int]


def scp_user_email(facility_name: str) -> str:
    slug = _SLUG.sub("-", facility_name.lower()).strip("-") or "facility"
    return f"scp@{slug}"


def scp_account(session: Session, facility_name: str) -> ScpAccount:
    """Get or create the facility and its ``scp@<facility>`` uploader; the caller commits.

    The user's token hash is of a random value nobody ever sees: the account owns rows, it can
    never sign in to the API.
    """
    facility = get_or_create_facility(session, facility_name)
    email = scp_user_email(facility_name)
    user = session.scalar(select(User).where(User.email == email))
    if user is None:
        user = User(
            email=email,
            role=Role.UPLOADER.value,
            facility_id=facility.id,
            token_hash=hashlib.sha256(secrets.token_bytes(32)).hexdigest(),
        )
        session.add(user)
        session.flush()
    elif user.facility_id != facility.id:
        raise ScpAccountError(f"user {email!r} exists in another facility; choose another --facility")
    return ScpAccount(facility_id=facility.id, user_id=user.id)


def clean_ae_title(ae_title: str | bytes | None) -> str:
    """An AE title as sent by the peer, made safe to show: printable, at most 16 characters."""
    if isinstance(ae_title, bytes):
        ae_title = ae_title.decode("ascii", "replace")
    text = "".join(ch for ch in (ae_title or "") if ch.isprintable()).strip()[:16]
    return text or "UNKNOWN"


def sender_label(calling_aet: str) -> str:
    return f"DIMSE from {clean_ae_title(calling_aet)}"


def session_batch(
    session: Session,
    account: ScpAccount,
    calling_aet: str,
    *,
    gap: timedelta,
    now: datetime | None = None,
) -> SessionBatch:
    """The open batch of this sender's current session, created when there is none.

    The sender's open batches are locked (``FOR UPDATE`` on PostgreSQL) so that concurrent
    associations from one modality agree on one batch. Any of them quiet for longer than
    ``gap``, or left over from a race, is completed; the caller dispatches those after its
    commit (``completed_ids``).
    """
    now = now or utcnow()
    label = sender_label(calling_aet)
    open_batches = session.scalars(
        select(Batch)
        .where(
            Batch.facility_id == account.facility_id,
            Batch.user_id == account.user_id,
            Batch.label == label,
            Batch.state == BatchState.OPEN,
        )
        .order_by(Batch.id.desc())
        .with_for_update()
    ).all()
    current: Batch | None = None
    completed: list[int] = []
    for batch in open_batches:
        if current is None and batch.last_activity_at >= now - gap:
            current = batch
            continue
        batch.state = BatchState.COMPLETED
        batch.completed_at = now
        completed.append(batch.id)
    if current is None:
        current = Batch(
            facility_id=account.facility_id,
            user_id=account.user_id,
            label=label,
            state=BatchState.OPEN,
            created_at=now,
            last_activity_at=now,
        )
        session.add(current)
    current.last_activity_at = now
    session.flush()
    return SessionBatch(current, completed)


def new_upload(now: datetime | None = None) -> Upload:
    """A transient upload: its id and date fix the object key before any row is written."""
    now = now or utcnow()
    return Upload(id=secrets.token_hex(16), created_at=now, updated_at=now)


def display_name(sop_instance_uid: str | None) -> str:
    """The file name shown in the batch report: the command's SOP Instance UID when valid."""
    uid = (sop_instance_uid or "").strip().rstrip("\x00")
    return f"{uid}.dcm" if uid and len(uid) <= 64 and _UID.match(uid) else "dimse-instance.dcm"


def check_received(path: Path, limits: ParseLimits = DEFAULT_LIMITS) -> Refusal | None:
    """None when the header parses and is complete; else the failure status to answer.
    ``limits`` bound what a hostile data set may cost the listener (a deflate bomb)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fp:
            read_header(fp, size, limits)
    except Quarantine as q:
        status = DATASET_MISMATCH if q.reason in _MISMATCH_REASONS else CANNOT_UNDERSTAND
        return Refusal(status, q.reason)
    return None


def store_original(store: ObjectStore, upload: Upload, path: Path) -> StoredOriginal:
    """Store the received Part-10 file under the upload's ``original.dcm`` key, hashed."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fp:
        while block := fp.read(READ_BLOCK):
            digest.update(block)
            size += len(block)
    key = original_key(upload)
    store.put_file(key, path)
    return StoredOriginal(key=key, size=size, sha256=digest.hexdigest())


def record_upload(
    session: Session,
    upload: Upload,
    batch: Batch,
    account: ScpAccount,
    stored: StoredOriginal,
    filename: str,
) -> Upload:
    """Add the upload row, complete and ASSEMBLED: next in its chain is the parse step."""
    upload.batch_id = batch.id
    upload.facility_id = account.facility_id
    upload.user_id = account.user_id
    upload.filename = filename
    upload.length = stored.size
    upload.offset = stored.size
    upload.state = UploadState.ASSEMBLED
    upload.object_key = stored.key
    upload.sha256 = stored.sha256
    # Expiry applies to uploads still RECEIVING; this one arrived whole.
    upload.expires_at = upload.created_at
    session.add(upload)
    session.flush()
    return upload
