"""tus uploads: creating them, staging each PATCH body as its own object, and moving the
offset forward under a lease that any API process can take.

Why a lease row and not a database lock held for the whole request: a chunk over a slow
link can take minutes, and holding a transaction (and a pooled connection) open that long
would starve the pool. The lease is a conditional UPDATE, so it works across processes on
PostgreSQL and on the embedded SQLite alike, and a crashed holder simply lets it expire.
A small body (SMALL_PATCH_BYTES) needs no lease: it is stored first and recorded by one
statement that moves the offset only if nobody else did (:func:`record_small_chunk`).

A body that turns out to be the whole file (offset 0, Upload-Length bytes, the declared
whole-file checksum matching) is stored straight under the upload's ``original.dcm`` key
and recorded ASSEMBLED: assembly would only copy that one chunk to the same bytes under
another key (a GET, a PUT and a DELETE per file), so the parse step is next. A clinic
folder is mostly such files.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Connection, Executable, Result, case, delete, insert, or_, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session

from pipeline.intake.tus import Checksum, TusError, clean_filename, parse_checksum
from pipeline.models import (
    UPLOAD_EVENT_FIELDS,
    Batch,
    BatchState,
    Upload,
    UploadChunk,
    UploadState,
    utcnow,
)
from pipeline.storage import ObjectStore

READ_BLOCK = 64 * 1024
RENEW_EVERY_SECONDS = 10.0


def upload_prefix(upload_id: str, created_at: datetime) -> str:
    """Date-partitioned home of one upload: ``YYYY/MM/DD/upload-ID``."""
    return f"{created_at:%Y/%m/%d}/upload-{upload_id}"


def chunk_key(upload: Upload, offset: int, lease: str | None = None) -> str:
    """A staged body's key; with the writer's ``lease`` in it, two requests that ever write
    the same offset (one whose lease ran out mid-PUT) never share a key, so the loser's
    clean-up can only delete its own object."""
    return _chunk_key(upload_prefix(upload.id, upload.created_at), offset, lease)


def original_key(upload: Upload, lease: str | None = None) -> str:
    return _original_key(upload_prefix(upload.id, upload.created_at), lease)


def _chunk_key(prefix: str, offset: int, lease: str | None) -> str:
    suffix = f"-{lease}" if lease else ""
    return f"{prefix}/chunks/{offset:015d}{suffix}"


def _original_key(prefix: str, lease: str | None) -> str:
    suffix = f"-{lease}" if lease else ""
    return f"{prefix}/original{suffix}.dcm"


def new_upload(
    *,
    batch: Batch,
    user_id: int,
    length: int,
    metadata: dict[str, str],
    max_bytes: int,
    expiry: timedelta,
    now: datetime | None = None,
) -> Upload:
    """A checked, transient upload (not in the session yet): its id and creation date fix
    its object keys, so a creation-with-upload body can be stored before the row exists."""
    if length > max_bytes:
        raise TusError(413, f"Upload-Length {length} exceeds the limit of {max_bytes} bytes")
    if batch.state != BatchState.OPEN:
        raise batch_not_open(batch.id, batch.state)
    return upload_for(batch_id=batch.id, facility_id=batch.facility_id, user_id=user_id,
                      length=length, metadata=metadata, expiry=expiry, now=now)


def batch_not_open(batch_id: int, state: str) -> TusError:
    return TusError(409, f"batch {batch_id} is {state}; open a new batch")


def batch_closed_meanwhile(batch_id: int) -> TusError:
    """The batch was completed while the creating request's body streamed."""
    return TusError(409, f"batch {batch_id} was closed while this file was sent; open a new batch")


def upload_for(*, batch_id: int, facility_id: int, user_id: int, length: int,
               metadata: dict[str, str], expiry: timedelta, now: datetime | None = None) -> Upload:
    """:func:`new_upload` without its checks of the batch, for a caller that makes them in
    the statement that adds the row (:func:`insert_checked_upload`)."""
    now = now or utcnow()
    declared = metadata.get("checksum") or metadata.get("sha256")
    if declared and metadata.get("sha256") and not declared.startswith("sha256 "):
        declared = f"sha256 {declared}"
    return Upload(
        id=secrets.token_hex(16),
        batch_id=batch_id,
        facility_id=facility_id,
        user_id=user_id,
        filename=clean_filename(metadata.get("filename")),
        length=length,
        offset=0,
        state=UploadState.RECEIVING,
        declared_checksum=declared,
        created_at=now,
        updated_at=now,
        expires_at=now + expiry,
    )


def add_upload(session: Session, upload: Upload) -> Upload:
    """Add an upload made by :func:`new_upload` that has no body yet, as an ORM object the
    caller goes on changing (workers, tests). The API's creation uses :func:`insert_upload`."""
    session.add(upload)
    session.get(Batch, upload.batch_id).last_activity_at = upload.created_at
    session.flush()
    return upload


# An Upload's column attributes and their columns, for a Core INSERT from a transient object.
_UPLOAD_COLUMNS = {attr.key: attr.columns[0].key for attr in sa_inspect(Upload).column_attrs}


def insert_upload(session: Session, upload: Upload, *, also: Executable | None = None) -> Upload:
    """Plain creation (no body yet) in Core statements in the caller's transaction: the
    upload's INSERT, the batch's activity stamp (:func:`touch_batch`) and ``also`` (its
    event's outbox INSERT), on PostgreSQL as one statement (:func:`_execute_with`).
    ``upload`` stays a transient object the request only reads (headers, its event): the
    ORM's unit of work (identity map, flush planning) cost more than the INSERT itself. An
    empty file is complete at creation and goes in RECEIVED."""
    if upload.state == UploadState.RECEIVING and upload.offset == upload.length:
        upload.state = UploadState.RECEIVED
    _execute_with(session, insert(Upload.__table__).values(_upload_values(upload)),
                  _touch(upload.batch_id, upload.created_at), also)
    return upload


def _upload_values(upload: Upload) -> dict[str, object]:
    """A transient upload's column values, scalar defaults stated (a CTE'd INSERT skips them)."""
    values = {}
    for key, column in _UPLOAD_COLUMNS.items():
        value = upload.__dict__.get(key)
        if value is None:
            default = Upload.__table__.c[column].default
            value = default.arg if default is not None and default.is_scalar else None
        if value is not None:
            values[column] = value
    return values


def _execute_with(session: Session, statement: Executable, *also: Executable | None,
                  **options: object) -> Result:
    """``statement`` and the DML statements ``also`` in the caller's transaction. On
    PostgreSQL in one round trip, ``also`` as data-modifying CTEs of ``statement`` (each
    runs once, whether or not the main statement reads it; they touch other tables than it,
    so the shared snapshot changes nothing); elsewhere (SQLite) one after another."""
    extra = [a for a in also if a is not None]
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.add_cte(*(a.cte(f"also_{i}") for i, a in enumerate(extra)))
        return session.execute(statement, **options)
    for a in extra:
        session.execute(a)
    return session.execute(statement, **options)


# A batch's last activity is stamped this far ahead, and written only when the stamp no
# longer covers the moment of the activity: a batch receiving 200 files/s then takes about
# one write a second instead of two per file, and its row is not locked by every file's
# transaction (each of which waited for the one before to commit). The stamp is never
# behind the real last activity, so a quiet period never ends early; it may end up to this
# much late.
ACTIVITY_STAMP_AHEAD = timedelta(seconds=1)


def touch_batch(session: Session, batch_id: int, now: datetime) -> None:
    """Record activity on a batch at ``now`` (see ACTIVITY_STAMP_AHEAD): one conditional
    UPDATE that changes (and locks) the row only when its stamp is older than ``now``."""
    session.execute(_touch(batch_id, now))


def _touch(batch_id: int, now: datetime) -> Executable:
    batches = Batch.__table__
    return (update(batches).where(batches.c.id == batch_id, batches.c.last_activity_at < now)
            .values(last_activity_at=now + ACTIVITY_STAMP_AHEAD))


def record_new_upload(
    session: Session, upload: Upload, staged: StagedChunk | None, *, now: datetime | None = None
) -> Upload:
    """Add an upload whose first chunk rode on the creating request, in one transaction.

    No lease: nobody can write to an upload before the response has told them its id. The
    batch must still be open when the row goes in (it may have been completed while the
    body streamed): the UPDATE that records the batch's activity checks that under the
    batch row's lock, so a completion never misses a file it did not wait for.
    """
    now = now or utcnow()
    claimed = session.execute(
        update(Batch)
        .where(Batch.id == upload.batch_id, Batch.state == BatchState.OPEN)
        .values(last_activity_at=now)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        raise batch_closed_meanwhile(upload.batch_id)
    take_first_chunk(upload, staged, now)
    session.add(upload)
    if staged is not None and not staged.whole:
        session.add(_chunk_row(upload.id, staged))
    session.flush()
    return upload


def take_first_chunk(upload: Upload, staged: StagedChunk | None, now: datetime) -> None:
    """A new upload as it goes in with the creating request's body ``staged``: its offset,
    and its state (ASSEMBLED when the body was the whole file; RECEIVED when it is complete
    in several chunks' worth, or empty)."""
    if staged is not None:
        upload.offset = staged.length
        upload.updated_at = now
        if staged.whole:
            upload.state = UploadState.ASSEMBLED
            upload.object_key = staged.key
            upload.sha256 = staged.sha256
    if upload.state == UploadState.RECEIVING and upload.offset == upload.length:
        upload.state = UploadState.RECEIVED


@dataclass(frozen=True)
class CheckedCreation:
    """What :func:`insert_checked_upload` found: whether the upload went in and, when not,
    what its statement saw (the caller says why: 404, 403, 429, 409)."""

    inserted: bool
    batch_facility_id: int | None  # None: no such batch
    batch_state: str | None
    open_uploads: int
    # Every condition held in the statement's snapshot, yet the row did not go in: the batch
    # row changed meanwhile (completed, or another file's stamp got there first). Ask again.
    raced: bool = False


def insert_checked_upload(
    connection: Connection, upload: Upload, staged: StagedChunk | None, *, max_open_uploads: int,
    outbox_rows: list[dict], now: datetime | None = None,
) -> CheckedCreation:
    """A creation-with-upload in ONE statement on PostgreSQL, for ``connection`` in
    autocommit (so it is also the whole transaction: one round trip). It inserts ``upload``
    (made by :func:`upload_for`, its first chunk taken in by :func:`take_first_chunk`), its
    chunk row when the body was not the whole file, and ``outbox_rows`` (its events, in
    order), only when, in the same statement: the batch exists, is of the upload's facility
    and is OPEN, and the user has fewer than ``max_open_uploads`` uploads RECEIVING. The
    batch's activity is stamped as :func:`touch_batch` does.

    Why the batch row is locked and how: a completion (an UPDATE of the batch) must not miss
    a file it did not wait for, so the row is held against it until the commit. A fresh
    stamp (the usual case, 199 files of 200 at 200 files/s) is held FOR SHARE: files do not
    wait for each other, and a completion waits for them. A stale stamp is rewritten by an
    UPDATE that checks the same conditions, under its own row lock. Which of the two a
    statement takes is decided by its snapshot, so no statement takes a share lock and then
    asks to write the row (two such statements would deadlock). A statement that lost the
    row to another writer in between (its stamp UPDATE found the stamp moved, or a share
    lock found the batch completed) inserts nothing and says ``raced``: asked again, it
    sees the new row.

    The statement is PREPAREd once per pooled connection and sent as EXECUTE with plain
    values: building it as a SQLAlchemy construct on every request (its cache key, ~30 bind
    parameters) cost more Python time than the rest of the request's database work."""
    now = now or utcnow()
    chunk = staged if staged is not None and not staged.whole else None
    row = _CREATE.execute(connection, (
        upload.id, upload.batch_id, upload.facility_id, upload.user_id, upload.filename,
        upload.length, upload.offset, str(upload.state), upload.declared_checksum, upload.sha256,
        upload.object_key, upload.created_at, upload.updated_at, upload.expires_at,
        max_open_uploads, now, now + ACTIVITY_STAMP_AHEAD,
        chunk.key if chunk else None, chunk.length if chunk else None,
        chunk.sha256 if chunk else None,
        json.dumps([{**r, "occurred_at": r["occurred_at"].isoformat()} for r in outbox_rows]),
    ))
    facility_id, state, open_uploads, inserted = row
    seen_ok = (facility_id == upload.facility_id and state == BatchState.OPEN
               and open_uploads < max_open_uploads)
    return CheckedCreation(inserted=bool(inserted), batch_facility_id=facility_id,
                           batch_state=state, open_uploads=open_uploads,
                           raced=not inserted and seen_ok)


# insert_checked_upload's statement. $1-$14 the upload's columns, $15 the open-upload limit,
# $16 now, $17 the stamp it writes when stale, $18-$20 the chunk row's key, length and sha256
# (NULL: no chunk row), $21 the outbox rows as a JSON array (inserted in its order: the relay
# gives positions in id order). Each CTE's INSERT reads the one before, so nothing goes in
# unless the gate passed.
CREATE_UPLOAD_SQL = """
WITH open_uploads AS (
  SELECT count(*) AS n FROM uploads WHERE user_id = $4 AND state = 'receiving'),
shared AS (
  SELECT b.id FROM batches b
   WHERE b.id = $2 AND b.facility_id = $3 AND b.state = 'open'
     AND (SELECT n FROM open_uploads) < $15 AND b.last_activity_at >= $16
     FOR SHARE),
stamped AS (
  UPDATE batches b SET last_activity_at = $17
   WHERE b.id = $2 AND b.facility_id = $3 AND b.state = 'open'
     AND (SELECT n FROM open_uploads) < $15 AND b.last_activity_at < $16
  RETURNING b.id),
added AS (
  INSERT INTO uploads (id, batch_id, facility_id, user_id, filename, length, "offset", state,
                       declared_checksum, sha256, object_key, created_at, updated_at, expires_at,
                       unfinished_attempts)
  SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 0
    FROM (SELECT id FROM shared UNION ALL SELECT id FROM stamped) AS gate
  RETURNING id),
chunk AS (
  INSERT INTO upload_chunks (upload_id, "offset", length, object_key, sha256)
  SELECT id, 0, $19, $18, $20 FROM added WHERE $18 IS NOT NULL),
events AS (
  INSERT INTO event_outbox (type, facility_id, data, occurred_at)
  SELECT e.v ->> 'type', (e.v ->> 'facility_id')::integer, e.v -> 'data',
         (e.v ->> 'occurred_at')::timestamptz
    FROM added, json_array_elements($21) WITH ORDINALITY AS e(v, n)
   ORDER BY e.n)
SELECT b.facility_id, b.state, open_uploads.n, EXISTS (SELECT 1 FROM added)
  FROM open_uploads LEFT JOIN batches b ON b.id = $2
"""


@dataclass(frozen=True)
class PreparedStatement:
    """A statement PREPAREd once per pooled PostgreSQL connection (remembered in the DBAPI
    connection's ``info``) and sent as EXECUTE with plain values, one round trip: building
    it as a SQLAlchemy construct on every request (its cache key, its bind parameters) cost
    more Python time than the rest of the request's database work. Needs a session-level
    connection to PostgreSQL (no PgBouncer in transaction mode in front)."""

    name: str
    types: tuple[str, ...]
    sql: str

    def execute(self, connection: Connection, params: Sequence[object]) -> tuple:
        info = connection.connection.info
        if not info.get(self.name):
            connection.exec_driver_sql(f"PREPARE {self.name} ({', '.join(self.types)}) AS {self.sql}")
            info[self.name] = True
        placeholders = ", ".join(["%s"] * len(self.types))
        return connection.exec_driver_sql(f"EXECUTE {self.name} ({placeholders})", tuple(params)).one()


_CREATE = PreparedStatement("relaypacs_create_upload", (
    "varchar", "integer", "integer", "integer", "varchar", "bigint", "bigint", "varchar", "varchar",
    "varchar", "varchar", "timestamptz", "timestamptz", "timestamptz", "integer", "timestamptz",
    "timestamptz", "varchar", "bigint", "varchar", "json"), CREATE_UPLOAD_SQL)


def acquire_lease(session: Session, upload_id: str, seconds: int, now: datetime | None = None,
                  *, offset: int | None = None) -> str:
    """Take the upload's write lease or raise; the caller commits to make it visible.

    In the same statement the upload must still be RECEIVING and, with ``offset``, at that
    offset: what the request checked before may have changed by the time it gets the lease
    (another writer's chunk landed, a DELETE), and a stale writer must not start (409).
    423 while another request holds an unexpired lease."""
    now = now or utcnow()
    token = secrets.token_hex(8)
    conditions = [Upload.id == upload_id, Upload.state == UploadState.RECEIVING,
                  or_(Upload.lock_token.is_(None), Upload.lock_expires_at < now)]
    if offset is not None:
        conditions.append(Upload.offset == offset)
    result = session.execute(
        update(Upload)
        .where(*conditions)
        .values(lock_token=token, lock_expires_at=now + timedelta(seconds=seconds))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        row = session.execute(select(Upload.state, Upload.offset, Upload.lock_token,
                                     Upload.lock_expires_at).where(Upload.id == upload_id)).one_or_none()
        if row is None or row.state != UploadState.RECEIVING:
            raise TusError(409, "upload is no longer receiving chunks; HEAD and resume")
        if offset is not None and row.offset != offset:
            raise TusError(409, f"Upload-Offset {offset} does not match the server's {row.offset}")
        raise TusError(423, "another request is writing to this upload; retry shortly")
    return token


def take_lease(session: Session, upload_id: str, seconds: int, *, offset: int,
               facility_id: int | None, now: datetime | None = None) -> tuple[str, Upload] | None:
    """The common case of a PATCH in one statement: the lease of an upload of ``facility_id``
    (None: any facility, for admins) that is RECEIVING at ``offset`` with no live lease, and
    the upload's row. None when any of that does not hold: the caller then looks the upload
    up to say which (404, 403, 410, 409) and takes the lease with :func:`acquire_lease` (423)."""
    now = now or utcnow()
    token = secrets.token_hex(8)
    conditions = [Upload.id == upload_id, Upload.state == UploadState.RECEIVING,
                  Upload.offset == offset,
                  or_(Upload.lock_token.is_(None), Upload.lock_expires_at < now)]
    if facility_id is not None:
        conditions.append(Upload.facility_id == facility_id)
    upload = session.scalars(
        update(Upload).where(*conditions)
        .values(lock_token=token, lock_expires_at=now + timedelta(seconds=seconds))
        .returning(Upload),
        execution_options={"synchronize_session": False, "populate_existing": True},
    ).one_or_none()
    return (token, upload) if upload is not None else None


def renew_lease(session: Session, upload_id: str, token: str, seconds: int) -> bool:
    result = session.execute(
        update(Upload)
        .where(Upload.id == upload_id, Upload.lock_token == token)
        .values(lock_expires_at=utcnow() + timedelta(seconds=seconds))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def release_lease(session: Session, upload_id: str, token: str) -> None:
    session.execute(
        update(Upload)
        .where(Upload.id == upload_id, Upload.lock_token == token)
        .values(lock_token=None, lock_expires_at=None)
        .execution_options(synchronize_session=False)
    )


@dataclass(frozen=True)
class StagedChunk:
    key: str
    offset: int
    length: int
    sha256: str
    # The body was the whole file, stored as the upload's original: nothing to assemble.
    whole: bool = False


def _chunk_row(upload_id: str, staged: StagedChunk) -> UploadChunk:
    return UploadChunk(upload_id=upload_id, offset=staged.offset, length=staged.length,
                       object_key=staged.key, sha256=staged.sha256)


def declared_checksum(declared: str | None) -> Checksum | None:
    """The whole-file checksum from Upload-Metadata, or None when there is none or it cannot
    be read (assembly then quarantines the file with the reason)."""
    if not declared:
        return None
    try:
        return parse_checksum(declared)
    except TusError:
        return None


def stage_chunk(
    store: ObjectStore,
    upload: Upload,
    stream: BinaryIO,
    *,
    offset: int,
    checksum: Checksum | None,
    spool_dir: Path,
    renew: Callable[[], None] | None = None,
    clock: Callable[[], float] | None = None,
    lease: str | None = None,
) -> StagedChunk | None:
    """Copy a PATCH body to staging storage, block by block, never all of it in memory.

    The body is spooled to a local temp file while hashing, then stored as one object.
    A body cut off by a dropped connection is kept up to where it stopped (so the client
    resumes from there), unless it carried a checksum we can no longer verify.
    A body that is the whole file, with the declared whole-file checksum (if any) matching,
    is stored as the upload's original (``whole``). Returns None when nothing was received.

    ``lease`` (the writer's token) goes into the staged key, and ``renew`` keeps the lease
    while the body arrives and while it is PUT to storage: a PUT that outlasts the lease would
    let another request write the same offset meanwhile.
    """
    clock = clock or time.monotonic
    remaining = upload.length - offset
    chunk_hash = hashlib.sha256()
    tus_hash = checksum.new_hasher() if checksum else None
    declared = declared_checksum(upload.declared_checksum) if offset == 0 else None
    whole_hash = None
    if declared is not None and declared.algorithm != "sha256":
        whole_hash = declared.new_hasher()
    may_be_whole = offset == 0 and (declared is not None or not upload.declared_checksum)
    hashers = [h for h in (chunk_hash, tus_hash, whole_hash) if h is not None]
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=spool_dir, prefix="chunk-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as spool:
            received, interrupted, renewed_at = _spool_body(
                stream, spool, hashers, limit=remaining, upload_length=upload.length,
                renew=renew, clock=clock,
            )
        _check_body_checksum(checksum, tus_hash, interrupted=interrupted is not None)
        if received == 0:
            return None
        whole = may_be_whole and interrupted is None and received == upload.length
        if whole and declared is not None:
            digest = (whole_hash or chunk_hash).digest()
            # A mismatch goes the assembly way, which quarantines the file with the reason.
            whole = digest == declared.digest
        key = original_key(upload, lease) if whole else chunk_key(upload, offset, lease)
        _while_renewing(renew, lambda: store.put_file(key, tmp), renewed_at=renewed_at,
                        clock=clock)
        return StagedChunk(key=key, offset=offset, length=received, sha256=chunk_hash.hexdigest(),
                           whole=whole)
    finally:
        tmp.unlink(missing_ok=True)


def _check_body_checksum(checksum: Checksum | None, hasher, *, interrupted: bool) -> None:  # noqa: ANN001
    """A PATCH body against its ``Upload-Checksum`` (``hasher``: that algorithm's, fed the
    body): 400 when the body was cut off (what arrived cannot be checked), 460 on a mismatch."""
    if checksum is None:
        return
    if interrupted:
        raise TusError(400, "body interrupted before its checksum could be verified")
    if hasher.digest() != checksum.digest:
        raise TusError(460, f"{checksum.algorithm} checksum mismatch; chunk discarded")


def _while_renewing(renew: Callable[[], None] | None, work: Callable[[], None], *,
                    renewed_at: float | None = None,
                    clock: Callable[[], float] = time.monotonic) -> None:
    """Run ``work`` (a PUT of any length) while another thread renews the lease every
    RENEW_EVERY_SECONDS; ``renew`` must therefore use its own database session.

    ``renewed_at`` (``clock`` time the lease was taken or last renewed): a lease renewed less
    than RENEW_EVERY_SECONDS ago is not renewed again before the PUT, only when that interval
    is up, exactly as while the body arrived. A small file's PATCH then costs no renewal
    transaction at all."""
    if renew is None:
        work()
        return
    done = threading.Event()
    first_wait = RENEW_EVERY_SECONDS
    if renewed_at is None or clock() - renewed_at >= RENEW_EVERY_SECONDS:
        renew()
    else:
        first_wait = RENEW_EVERY_SECONDS - (clock() - renewed_at)

    def keep() -> None:
        wait = first_wait
        while not done.wait(wait):
            wait = RENEW_EVERY_SECONDS
            try:
                renew()
            except Exception:  # noqa: BLE001 - a renewal missed: record_chunk tells with 409
                logging.getLogger(__name__).warning("lease renewal failed", exc_info=True)

    keeper = threading.Thread(target=keep, name="lease-renewal", daemon=True)
    keeper.start()
    try:
        work()
    finally:
        done.set()
        keeper.join()


def _spool_body(
    stream: BinaryIO,
    spool: BinaryIO,
    hashers: list,
    *,
    limit: int,
    upload_length: int,
    renew: Callable[[], None] | None,
    clock: Callable[[], float],
) -> tuple[int, Exception | None, float]:
    """Copy ``stream`` to ``spool`` a block at a time, feeding every hasher, renewing the
    lease every RENEW_EVERY_SECONDS; 413 past ``limit`` bytes. Returns the bytes received,
    when the client went away mid-body the error that cut it off, and when the lease was
    last renewed (``clock`` time; the start when it was not)."""
    received = 0
    last_renew = clock()
    while True:
        try:
            block = stream.read(READ_BLOCK)
        except (OSError, ValueError) as exc:  # client went away mid-body
            return received, exc, last_renew
        if not block:
            return received, None, last_renew
        received += len(block)
        if received > limit:
            raise TusError(413, f"chunk goes past Upload-Length ({upload_length} bytes)")
        spool.write(block)
        for hasher in hashers:
            hasher.update(block)
        if renew is not None and clock() - last_renew > RENEW_EVERY_SECONDS:
            renew()
            last_renew = clock()


def record_chunk(
    session: Session, upload_id: str, lease: str, staged: StagedChunk, *, expiry: timedelta,
    batch_id: int, now: datetime | None = None,
) -> Upload:
    """Advance the offset for a staged chunk and give the lease back, in one UPDATE; 409 if
    the lease was lost meanwhile. Activity pushes the expiry forward: only idle uploads
    expire. The last chunk makes the upload RECEIVED (ASSEMBLED when it was the whole file).
    The batch's activity (``batch_id``, the upload's) is stamped in the same statement."""
    now = now or utcnow()
    end = Upload.offset + staged.length
    values: dict = {
        "offset": end, "updated_at": now, "expires_at": now + expiry,
        "lock_token": None, "lock_expires_at": None,
        "state": case((end == Upload.length, UploadState.RECEIVED.value), else_=Upload.state),
    }
    if staged.whole:
        values.update(state=UploadState.ASSEMBLED.value, object_key=staged.key, sha256=staged.sha256)
    # The batch's activity stamp rides on the same statement (PostgreSQL; a CTE): a 409
    # rolls the whole transaction back, the stamp with it.
    upload = _execute_with(
        session,
        update(Upload)
        .where(Upload.id == upload_id, Upload.lock_token == lease, Upload.offset == staged.offset,
               Upload.state == UploadState.RECEIVING)  # not terminated or expired meanwhile
        .values(**values)
        .returning(Upload),
        _touch(batch_id, now),
        execution_options={"synchronize_session": False, "populate_existing": True},
    ).scalars().one_or_none()
    if upload is None:
        raise TusError(409, "upload changed while this chunk was written; HEAD and resume")
    if not staged.whole:
        session.add(_chunk_row(upload_id, staged))
        session.flush()
    return upload


# A PATCH body up to this size goes in without a lease (api/intake/files.py): read into
# memory and stored first, then recorded by one statement (:func:`record_small_chunk`). The
# lease exists for a body that streams for a long time (renewed every RENEW_EVERY_SECONDS
# while it arrives, so a second writer is refused with 423 instead of both streaming); a
# body of 1 MiB (a CT or MR image, the bulk of a clinic's folder) arrives in about a second
# at 10 Mbit/s, never a renewal's worth. At most one such body per request thread is in
# memory (8 threads a worker: 8 MiB). Without the lease two writers at one offset both
# store their body and the statement lets exactly one of them move the offset; the other
# deletes its object and answers 409, as the lease path's loser does.
SMALL_PATCH_BYTES = 1024 * 1024


@dataclass(frozen=True)
class SmallBody:
    """A small PATCH body, read whole (:func:`read_small_body`): its bytes and hashes."""

    data: bytes
    sha256: str
    # The whole-file checksums (Upload-Metadata ``checksum``) this body matches, as an
    # upload records them ("sha256 <base64>", "sha1 <base64>"): the statement compares them
    # with the upload's declared one to know whether the body is the whole file.
    whole_checksums: tuple[str, ...]
    # The client went away before Content-Length bytes: what arrived is kept (the client
    # resumes from there) and is never the whole file.
    interrupted: bool


def read_small_body(stream: BinaryIO, length: int, checksum: Checksum | None) -> SmallBody:
    """Read a body of at most ``length`` bytes (its Content-Length) and check the PATCH's
    ``checksum``, as :func:`stage_chunk` does: 400 for a body cut off under a checksum, 460
    for a mismatch."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    tus_hash = checksum.new_hasher() if checksum else None
    buffer = io.BytesIO()
    _, interrupted, _ = _spool_body(stream, buffer, [h for h in (sha256, sha1, tus_hash) if h],
                                    limit=length, upload_length=length, renew=None,
                                    clock=time.monotonic)
    _check_body_checksum(checksum, tus_hash, interrupted=interrupted is not None)
    whole = tuple(f"{name} {base64.b64encode(h.digest()).decode()}" for name, h in
                  (("sha256", sha256), ("sha1", sha1)))
    return SmallBody(buffer.getvalue(), sha256.hexdigest(), whole, interrupted is not None)


def store_small_body(store: ObjectStore, upload_id: str, body: SmallBody, *, offset: int,
                     created_at: datetime, whole: bool, lease: str, spool_dir: Path) -> StagedChunk:
    """Store ``body`` under the key it has if ``whole`` (the upload's original) or not (its
    chunk at ``offset``), in the folder of an upload created at ``created_at``; ``lease`` (a
    fresh token: this writer's) in the key keeps two writers' objects apart."""
    prefix = upload_prefix(upload_id, created_at)
    key = _original_key(prefix, lease) if whole else _chunk_key(prefix, offset, lease)
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=spool_dir, prefix="chunk-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as spool:
            spool.write(body.data)
        store.put_file(key, tmp)
    finally:
        tmp.unlink(missing_ok=True)
    return StagedChunk(key=key, offset=offset, length=len(body.data), sha256=body.sha256, whole=whole)


@dataclass(frozen=True)
class SmallChunk:
    """What :func:`record_small_chunk` did, or what its statement saw of the upload when it
    did nothing (the caller answers as the lease path would: 404, 403, 410, 409, 423, 413)."""

    recorded: bool
    exists: bool
    facility_id: int | None = None
    state: str | None = None
    offset: int | None = None  # after the chunk when recorded, else the server's
    length: int | None = None
    locked: bool = False  # another request holds a live lease
    created_at: datetime | None = None
    # The body is the whole file (offset 0, the upload's length, its declared checksum):
    # it belongs under the upload's original key, a partial body under its chunk key.
    whole: bool = False

    def stored_right(self, staged: StagedChunk) -> bool:
        """Whether ``staged`` is under a key this upload takes: in its creation day's folder,
        and as its original only when it is the whole file (a body stored as a chunk is
        taken as a chunk: assembly makes the original). If not, the caller stores it again
        where it belongs and asks again."""
        return (self.created_at is not None and (self.whole or not staged.whole)
                and upload_prefix_day(staged.key) == _day(self.created_at))


def record_small_chunk(
    connection: Connection, upload_id: str, staged: StagedChunk, whole_checksums: Sequence[str], *,
    facility_id: int, expiry: timedelta, request_id: str | None, now: datetime | None = None,
) -> SmallChunk:
    """A small PATCH (its body already stored as ``staged``) in ONE statement on PostgreSQL,
    for ``connection`` in autocommit (one round trip, its own transaction). Only when the
    upload is ``facility_id``'s, RECEIVING at ``staged.offset``, held by no live lease, the
    body fits in its length and ``staged``'s key is the one it wants (:meth:`SmallChunk.stored_right`),
    it moves the offset and pushes the expiry (as :func:`record_chunk`), completes the upload
    when the offset reaches its length (ASSEMBLED with ``staged`` as its original for a
    whole file, else RECEIVED), adds the chunk row of a partial body, stamps the batch's
    activity (:func:`touch_batch`) and inserts upload.chunk_received and, on completion,
    upload.completed carrying ``request_id`` in the outbox. Two such statements at one
    offset: the second waits for the first's row lock, then finds the offset moved and does
    nothing."""
    now = now or utcnow()
    row = _PATCH.execute(connection, (
        upload_id, staged.offset, staged.length, staged.key, staged.sha256, list(whole_checksums),
        staged.whole, facility_id, now, now + expiry, upload_prefix_day(staged.key), request_id,
        now + ACTIVITY_STAMP_AHEAD))
    recorded, exists, facility, state, offset, length, locked, created_at, whole = row
    # In UTC, as the ORM gives it (pipeline.models.base.UTCDateTime): the date of an upload's
    # folder is its UTC creation date, whatever the connection's time zone.
    return SmallChunk(recorded=recorded, exists=exists, facility_id=facility, state=state,
                      offset=offset, length=length, locked=bool(locked),
                      created_at=created_at.astimezone(UTC) if created_at else None,
                      whole=bool(whole))


def upload_prefix_day(key: str) -> datetime:
    """The UTC day (its midnight) of the creation-date folder of an upload's ``key``."""
    year, month, day = key.split("/", 3)[:3]
    return datetime(int(year), int(month), int(day), tzinfo=UTC)


def _day(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _upload_event_data(row: str) -> str:
    """An upload event's data (pipeline.ops.events.upload_event) built in SQL from ``row``."""
    fields = ", ".join(f"'{field}', {row}.\"{column}\"" for field, column in
                       ((f, _UPLOAD_COLUMNS[a]) for f, a in UPLOAD_EVENT_FIELDS.items()))
    return f"jsonb_build_object({fields})"


# record_small_chunk's statement. $1 the upload's id, $2 the offset, $3 the body's length,
# $4 its key, $5 its sha256, $6 the whole-file checksums it matches, $7 whether it is stored
# as the whole file, $8 the caller's facility, $9 now, $10 the new expiry, $11 the day of the
# key's folder, $12 the request id for upload.completed, $13 the batch's stamp. The UPDATE's
# conditions are re-checked on the newest row once a concurrent writer's lock is released,
# so of two statements at one offset only one moves it. The final SELECT reads the statement's
# snapshot of the upload (before any change): what the caller reports when nothing moved.
_WHOLE = ("($2 = 0 AND u.length = $3 AND (coalesce(u.declared_checksum, '') = ''"
          " OR u.declared_checksum = ANY ($6)))")
PATCH_UPLOAD_SQL = f"""
WITH moved AS (
  UPDATE uploads u
     SET "offset" = u."offset" + $3, updated_at = $9, expires_at = $10,
         lock_token = NULL, lock_expires_at = NULL,
         state = CASE WHEN $7 THEN 'assembled' WHEN u."offset" + $3 = u.length THEN 'received'
                      ELSE u.state END,
         object_key = CASE WHEN $7 THEN $4 ELSE u.object_key END,
         sha256 = CASE WHEN $7 THEN $5 ELSE u.sha256 END
   WHERE u.id = $1 AND u.facility_id = $8 AND u.state = 'receiving' AND u."offset" = $2
     AND (u.lock_token IS NULL OR u.lock_expires_at < $9) AND u."offset" + $3 <= u.length
     AND u.created_at >= $11 AND u.created_at < $11 + interval '1 day' AND (NOT $7 OR {_WHOLE})
  RETURNING u.*),
chunk AS (
  INSERT INTO upload_chunks (upload_id, "offset", length, object_key, sha256)
  SELECT id, $2, $3, $4, $5 FROM moved WHERE NOT $7),
stamped AS (
  UPDATE batches b SET last_activity_at = $13
   WHERE b.id = (SELECT batch_id FROM moved) AND b.last_activity_at < $9),
events AS (
  INSERT INTO event_outbox (type, facility_id, data, occurred_at)
  SELECT e.type, m.facility_id,
         ({_upload_event_data("m")} || CASE WHEN e.n = 2 AND $12 IS NOT NULL
           THEN jsonb_build_object('request_id', $12) ELSE '{{}}'::jsonb END)::json, $9
    FROM moved m, (VALUES (1, 'upload.chunk_received'), (2, 'upload.completed')) AS e(n, type)
   WHERE e.n = 1 OR m.state <> 'receiving'
   ORDER BY e.n)
SELECT EXISTS (SELECT 1 FROM moved), u.id IS NOT NULL, u.facility_id, u.state,
       coalesce((SELECT "offset" FROM moved), u."offset"), u.length,
       u.lock_token IS NOT NULL AND u.lock_expires_at >= $9, u.created_at, coalesce({_WHOLE}, false)
  FROM (SELECT 1) AS one LEFT JOIN uploads u ON u.id = $1
"""  # noqa: S608 - made of this module's constants; every value is a $n parameter
_PATCH = PreparedStatement("relaypacs_patch_upload", (
    "varchar", "bigint", "bigint", "varchar", "varchar", "varchar[]", "boolean", "integer",
    "timestamptz", "timestamptz", "timestamptz", "text", "timestamptz"), PATCH_UPLOAD_SQL)


# The step a complete upload starts at: a whole file stored as its original goes straight
# to parsing, a file of several chunks to assembly first (then parsing).
PARSE = "parse"
ASSEMBLE = "assemble"


def next_steps(session: Session, upload_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(step, upload id) for each of ``upload_ids`` still waiting to start its chain, in the
    given order, read in one statement; an upload already further along (or gone) has none."""
    states = dict(session.execute(select(Upload.id, Upload.state)
                                  .where(Upload.id.in_(list(upload_ids)))).all())
    steps = {UploadState.ASSEMBLED: PARSE, UploadState.RECEIVED: ASSEMBLE}
    return [(steps[states[uid]], uid) for uid in dict.fromkeys(upload_ids) if states.get(uid) in steps]


def terminate(session: Session, upload: Upload) -> list[str]:
    """tus termination: forget the upload; returns staged keys for the caller to delete.

    Conditional on the state (the UPDATE also locks the row until the caller commits): an
    assembly that finished meanwhile wins with 409, and one still running finds the upload
    ended when it comes to record its result, so neither brings the other's upload back."""
    ended = session.execute(
        update(Upload)
        .where(Upload.id == upload.id,
               Upload.state.in_([UploadState.RECEIVING, UploadState.RECEIVED]))
        .values(state=UploadState.TERMINATED.value, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.refresh(upload)
    if ended.rowcount != 1:
        raise TusError(409, f"upload is already {upload.state}; it can no longer be terminated")
    keys = list(session.scalars(select(UploadChunk.object_key).where(UploadChunk.upload_id == upload.id)))
    session.execute(delete(UploadChunk).where(UploadChunk.upload_id == upload.id))
    session.flush()
    session.expire(upload, ["chunks"])
    return keys


@dataclass(frozen=True)
class Expired:
    upload_ids: list[str]
    batch_ids: list[int]
    staged_keys: list[str]  # for the caller to delete after the commit


def expire_abandoned(session: Session, now: datetime | None = None) -> Expired:
    """tus expiration: uploads idle past ``expires_at`` are dropped with their chunks."""
    now = now or utcnow()
    # One conditional UPDATE: a chunk recorded between a read and a write here is never lost
    # under an expiry it already pushed back.
    rows = session.execute(
        update(Upload)
        .where(Upload.state == UploadState.RECEIVING, Upload.expires_at < now)
        .values(state=UploadState.EXPIRED.value)
        .returning(Upload.id, Upload.batch_id)
        .execution_options(synchronize_session=False)
    ).all()
    ids = [r.id for r in rows]
    keys = list(session.scalars(select(UploadChunk.object_key).where(UploadChunk.upload_id.in_(ids))))
    if ids:
        session.execute(delete(UploadChunk).where(UploadChunk.upload_id.in_(ids)))
    session.flush()
    return Expired(ids, sorted({r.batch_id for r in rows}), keys)
