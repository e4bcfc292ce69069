"""tus 1.0.0 at /api/v1/files: creation, creation-with-upload, checksum, termination,
expiration. The request only validates, streams the body to staging and moves the
offset; assembly and parsing happen in workers, started by the upload.completed event the
request commits with the upload (the outbox relay hands it to workers.chains.after_events),
not by a publish on the request. On PostgreSQL a creation (plain or with its body) and the
PATCH of a small body are each one statement on an autocommit connection; a large or
streaming body's PATCH writes under the upload's lease.
"""

from __future__ import annotations

import io
import secrets
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import BinaryIO

from flask import Blueprint, Response, request, url_for
from sqlalchemy import func, select
from werkzeug.exceptions import ClientDisconnected

from api.events.publish import chunk_recorded, created_events, initiated_statement, upload_created
from api.http.auth import check_facility, current_user, require
from api.http.context import autocommit_engine, db, kick_relay, resources
from api.http.errors import ApiError
from api.http.openapi import STANDARD_ERRORS, operation
from config.logging import request_id
from pipeline.dicom.attributes import MetadataError
from pipeline.dicom.headers import UID_PATTERN
from pipeline.dicom.photos import photo_request
from pipeline.intake import photos
from pipeline.intake import uploads as intake
from pipeline.intake.tus import (
    ALLOWED_HEADERS,
    EXPOSED_HEADERS,
    EXTENSIONS,
    OFFSET_CONTENT_TYPE,
    TUS_VERSION,
    TusError,
    check_version,
    is_ascii_number,
    parse_checksum,
    parse_metadata,
    parse_non_negative,
)
from pipeline.models import READER_ROLES, Batch, BatchState, Role, Upload, UploadState, utcnow
from pipeline.ops import outbox
from workers import chains

blueprint = Blueprint("files", __name__)
TUS_HEADER = ("Tus-Resumable", True, "1.0.0")
WRITERS = (Role.UPLOADER, Role.ADMIN)


class BodyStream:
    """Request body as a file-like whose disconnects look like I/O errors to pipeline/."""

    def __init__(self, stream) -> None:  # noqa: ANN001
        self.stream = stream

    def read(self, size: int = -1) -> bytes:
        try:
            return self.stream.read(size)
        except ClientDisconnected as exc:
            raise OSError("client disconnected") from exc


@blueprint.after_request
def _tus_headers(response: Response) -> Response:
    response.headers["Tus-Resumable"] = TUS_VERSION
    origins = resources().settings.cors_origins
    origin = request.headers.get("Origin")
    if origin and ("*" in origins or origin in origins):
        response.headers["Access-Control-Allow-Origin"] = origin if "*" not in origins else "*"
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    return response


def _headers(upload: Upload, **extra: str) -> dict[str, str]:
    return _offset_headers(upload.offset, upload.expires_at, **extra)


def _offset_headers(offset: int, expires_at: datetime, **extra: str) -> dict[str, str]:
    return {
        "Upload-Offset": str(offset),
        "Upload-Expires": format_datetime(expires_at, usegmt=True),
        "Cache-Control": "no-store",
        **extra,
    }


def _load(upload_id: str) -> Upload:
    if not upload_id.isalnum() or len(upload_id) > 32:
        raise ApiError(404, "no such upload")
    upload = db().get(Upload, upload_id)
    if upload is None:
        raise ApiError(404, "no such upload")
    _check_reachable(upload.facility_id, upload.state)
    return upload


def _check_reachable(facility_id: int, state: str) -> None:
    check_facility(facility_id)
    if state == UploadState.TERMINATED:
        raise ApiError(404, "upload was terminated")
    if state == UploadState.EXPIRED:
        raise ApiError(410, "upload expired; start it again")


def _check_offset(requested: int, state: str, offset: int, length: int) -> None:
    """A PATCH at ``requested`` of an upload at ``offset``: 409 when it is complete or
    elsewhere (with the server's offset, so the client can resume)."""
    if state != UploadState.RECEIVING and offset == length:
        raise ApiError(409, "upload is already complete", upload_offset=offset)
    if requested != offset:
        raise ApiError(409, f"Upload-Offset {requested} does not match the server's {offset}",
                       upload_offset=offset)


@blueprint.route("", methods=["OPTIONS"])
@blueprint.route("/<upload_id>", methods=["OPTIONS"])
@operation("tus discovery and CORS preflight (no credentials)", public=True,
           responses={204: "tus capabilities"}, errors=())
def options(upload_id: str | None = None) -> Response:
    """Discovery and CORS preflight: browsers send it without credentials, so no auth."""
    settings = resources().settings
    response = Response(status=204)
    response.headers.update({
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": EXTENSIONS,
        "Tus-Max-Size": str(settings.max_upload_bytes),
        "Tus-Checksum-Algorithm": "sha1,sha256",
        "Access-Control-Allow-Methods": "POST, HEAD, PATCH, DELETE, OPTIONS",
        "Access-Control-Allow-Headers": ALLOWED_HEADERS,
        "Access-Control-Max-Age": "86400",
    })
    return response


@blueprint.route("", methods=["POST"])
@require(*WRITERS)
@operation("tus creation (and creation-with-upload)", responses={201: "created; see Location"},
           errors=(*STANDARD_ERRORS, 409, 412, 413, 415, 460),
           headers=(TUS_HEADER, ("Upload-Length", True, "file size in bytes"),
                    ("Upload-Metadata", True, "filename and batch_id, base64; a phone photo adds kind=photo, "
                     "filetype, and target_study or patient_id, patient_name, patient_birth_date, "
                     "patient_sex, study_description, accession_number"),
                    ("Upload-Checksum", False, "sha1|sha256 <base64> of the body")))
def create() -> Response:
    check_version(request.headers.get("Tus-Resumable"))
    settings = resources().settings
    if request.headers.get("Upload-Defer-Length"):
        raise TusError(400, "Upload-Defer-Length is not supported; send Upload-Length")
    length = parse_non_negative(request.headers.get("Upload-Length"), "Upload-Length")
    if length > settings.max_upload_bytes:
        raise TusError(413, f"Upload-Length {length} exceeds the limit of "
                            f"{settings.max_upload_bytes} bytes")
    metadata = parse_metadata(request.headers.get("Upload-Metadata"))
    batch_ref = metadata.get("batch_id", "")
    if not is_ascii_number(batch_ref) or len(batch_ref) > 18:
        raise ApiError(400, "Upload-Metadata must carry batch_id (open one with POST /api/v1/batches)")
    has_body = request.content_length or request.headers.get("Transfer-Encoding")
    with_body = bool(has_body) and request.content_type == OFFSET_CONTENT_TYPE
    if _in_one_statement(metadata):
        # A plain creation, or a clinic's small file in its creating POST (the web page and
        # the CLI send it this way): one statement.
        checksum = parse_checksum(request.headers.get("Upload-Checksum"))
        upload = _create_in_one_statement(int(batch_ref), length, metadata, checksum, with_body)
        return Response(status=201, headers=_headers(upload, Location=_location(upload)))
    session = db()
    batch = session.get(Batch, int(batch_ref))
    if batch is None:
        raise _no_such_batch(batch_ref)
    check_facility(batch.facility_id)
    photo = _photo_request(metadata, batch)
    if photo is not None and length > photos.MAX_PHOTO_BYTES:
        raise TusError(413, f"a photo may be at most {photos.MAX_PHOTO_BYTES} bytes")
    checksum = parse_checksum(request.headers.get("Upload-Checksum"))
    open_uploads = session.scalar(select(func.count()).select_from(Upload).where(
        Upload.user_id == current_user().id, Upload.state == UploadState.RECEIVING))
    if open_uploads >= settings.max_open_uploads:
        raise _too_many_open(open_uploads)
    expiry = timedelta(seconds=settings.upload_expiry_seconds)
    upload = intake.new_upload(
        batch=batch, user_id=current_user().id, length=length, metadata=metadata,
        max_bytes=settings.max_upload_bytes, expiry=expiry,
    )
    upload.photo = photo
    if with_body:
        # creation-with-upload: the first chunk (for most files, all of it) rides on the POST.
        upload = _create_with_chunk(upload, checksum)
        return Response(status=201, headers=_headers(upload, Location=_location(upload)))
    # One statement on PostgreSQL: the row, the batch's activity and upload.initiated in the
    # outbox (committed with the row). An empty file goes in RECEIVED, and its
    # upload.completed starts its chain: its state is set before its events are made.
    intake.take_first_chunk(upload, None, upload.created_at)
    intake.insert_upload(session, upload, also=initiated_statement(session, upload))
    session.commit()
    return Response(status=201, headers=_headers(upload, Location=_location(upload)))


def _photo_request(metadata: dict[str, str], batch: Batch) -> dict | None:
    """A ``kind=photo`` upload's checked request (400 on a bad field, 404 when the target
    study is not one of the facility's), or None for an ordinary file."""
    kind = metadata.get("kind", "")
    if kind in ("", "dicom"):
        return None
    if kind != "photo":
        raise ApiError(400, "Upload-Metadata kind must be photo or dicom (or absent)")
    try:
        photo = photo_request(metadata, UID_PATTERN)
    except MetadataError as exc:
        raise ApiError(400, str(exc)) from exc
    if photo.target_study and photos.target_study(db(), batch.facility_id, photo.target_study) is None:
        raise ApiError(404, "target_study: no such study of your facility")
    return photo.as_json()


def _location(upload: Upload) -> str:
    return url_for("files.head", upload_id=upload.id, _external=True)


def _create_with_chunk(upload: Upload, checksum) -> Upload:  # noqa: ANN001
    """Store the POST's body, then add the upload with its offset in one commit.

    The row goes in after the body: until the response names the upload nobody can write
    to it, so it needs no lease, and a body refused (460, 413) leaves no upload behind.
    """
    settings = resources().settings
    store = resources().store
    session = db()
    staged = intake.stage_chunk(
        store, upload, BodyStream(request.stream), offset=0, checksum=checksum,
        spool_dir=settings.var_dir / "spool",
    )
    try:
        intake.record_new_upload(session, upload, staged)
        upload_created(session, upload, first_chunk=staged is not None)  # committed with the row
        session.commit()
    except BaseException:
        session.rollback()
        if staged is not None:
            store.delete(staged.key)
        raise
    return upload


def _in_one_statement(metadata: dict[str, str]) -> bool:
    """Whether a creation goes in by :func:`_create_in_one_statement`: an ordinary file (a
    photo's request is checked against the facility's studies first) from a
    :func:`_one_statement_user`."""
    return metadata.get("kind", "") in ("", "dicom") and _one_statement_user()


def _one_statement_user() -> bool:
    """Whether this request's writes may go as one statement on an autocommit connection:
    on PostgreSQL, for a user who may write to their own facility only (an admin's or a
    reader's facilities are not known without a query; they take the general path)."""
    user = current_user()
    return (autocommit_engine().dialect.name == "postgresql" and not user.is_admin
            and not user.has_role(*READER_ROLES))


# A statement that lost the batch row to another writer between its snapshot and its lock
# inserts nothing and is asked again (pipeline.intake.uploads.insert_checked_upload).
CREATE_ATTEMPTS = 3


def _create_in_one_statement(batch_id: int, length: int, metadata: dict[str, str],
                             checksum, with_body: bool) -> Upload:  # noqa: ANN001
    """A creation as one round trip to PostgreSQL: the body of a creation-with-upload is
    stored first, then one statement on an autocommit connection (its own transaction)
    checks the batch (it exists, it is the user's facility's, it is open), the user's open
    uploads against the limit, and adds the upload in its final state (a plain creation's
    RECEIVING at offset 0, or RECEIVED when empty), its chunk row, the batch's activity
    stamp and its events in the outbox (pipeline.intake.uploads.insert_checked_upload). A
    refused request answers as the general path does (404, 403, 429, 409; 460 and 413 from
    the body come first here) and leaves neither a row nor the stored body behind."""
    settings = resources().settings
    store = resources().store
    user = current_user()
    now = utcnow()
    upload = intake.upload_for(batch_id=batch_id, facility_id=user.facility_id, user_id=user.id,
                               length=length, metadata=metadata,
                               expiry=timedelta(seconds=settings.upload_expiry_seconds), now=now)
    staged = None
    if with_body:
        staged = intake.stage_chunk(store, upload, BodyStream(request.stream), offset=0,
                                    checksum=checksum, spool_dir=settings.var_dir / "spool")
    try:
        intake.take_first_chunk(upload, staged, now)
        rows = outbox.rows(created_events(upload, first_chunk=staged is not None))
        with autocommit_engine().connect() as connection:
            for _ in range(CREATE_ATTEMPTS):
                found = intake.insert_checked_upload(
                    connection, upload, staged, max_open_uploads=settings.max_open_uploads,
                    outbox_rows=rows, now=now)
                if not found.raced:
                    break
        _refuse_unless_inserted(found, batch_id)
    except BaseException:
        if staged is not None:
            store.delete(staged.key)
        raise
    kick_relay()  # its events (and with upload.completed its chain) were committed outside the session
    return upload


def _refuse_unless_inserted(found: intake.CheckedCreation, batch_id: int) -> None:
    """The general path's answers, in its order, for what the one statement saw."""
    if found.inserted:
        return
    if found.batch_facility_id is None:
        raise _no_such_batch(batch_id)
    check_facility(found.batch_facility_id)
    if found.open_uploads >= resources().settings.max_open_uploads:
        raise _too_many_open(found.open_uploads)
    if found.batch_state != BatchState.OPEN:
        raise intake.batch_not_open(batch_id, found.batch_state)
    raise intake.batch_closed_meanwhile(batch_id)


def _no_such_batch(batch_ref: int | str) -> ApiError:
    return ApiError(404, f"batch {batch_ref} not found")


def _too_many_open(open_uploads: int) -> ApiError:
    return ApiError(429, f"{open_uploads} uploads are open; finish or terminate some first",
                    retry_after=60)


@blueprint.route("/<upload_id>", methods=["HEAD"])
@require()
@operation("tus offset of an upload", headers=(TUS_HEADER,), errors=(*STANDARD_ERRORS, 410, 412))
def head(upload_id: str) -> Response:
    check_version(request.headers.get("Tus-Resumable"))
    upload = _load(upload_id)
    return Response(status=200, headers=_headers(upload, **{"Upload-Length": str(upload.length)}))


@blueprint.route("/<upload_id>", methods=["PATCH"])
@require(*WRITERS)
@operation("tus: append a chunk at Upload-Offset", responses={204: "stored; new Upload-Offset"},
           errors=(*STANDARD_ERRORS, 409, 410, 412, 413, 415, 423, 460),
           headers=(TUS_HEADER, ("Upload-Offset", True, "where this chunk starts"),
                    ("Upload-Checksum", False, "sha1|sha256 <base64> of the body")))
def patch(upload_id: str) -> Response:
    check_version(request.headers.get("Tus-Resumable"))
    if request.content_type != OFFSET_CONTENT_TYPE:
        raise TusError(415, f"Content-Type must be {OFFSET_CONTENT_TYPE}")
    offset = parse_non_negative(request.headers.get("Upload-Offset"), "Upload-Offset")
    checksum = parse_checksum(request.headers.get("Upload-Checksum"))
    if _small_body() and upload_id.isalnum() and len(upload_id) <= 32 and _one_statement_user():
        return _patch_in_one_statement(upload_id, offset, checksum)
    return _patch_with_lease(upload_id, offset, checksum, BodyStream(request.stream))


def _patch_with_lease(upload_id: str, offset: int, checksum, body: BinaryIO) -> Response:  # noqa: ANN001
    """A PATCH under the upload's lease, taken and committed before the body streams and
    renewed while it does: a large or streaming body, an admin's or a reader's, SQLite's."""
    session = db()
    user = current_user()
    # The usual PATCH (right upload, right facility, right offset, nobody else writing) takes
    # its lease and reads the row in one statement; anything else is looked at in detail.
    taken = None
    if upload_id.isalnum() and len(upload_id) <= 32:
        taken = intake.take_lease(session, upload_id, resources().settings.upload_lock_seconds,
                                  offset=offset,
                                  facility_id=None if user.role == Role.ADMIN else user.facility_id)
    if taken is not None:
        lease, upload = taken
        session.commit()
    else:
        session.rollback()
        upload = _load(upload_id)
        _check_offset(offset, upload.state, upload.offset, upload.length)
        lease = _take_lease(upload.id, offset)
    upload = _write_chunk(upload, offset, checksum, lease, body)
    return Response(status=204, headers=_headers(upload))


def _small_body() -> bool:
    """A body of a known length up to intake.SMALL_PATCH_BYTES (its reason there)."""
    length = request.content_length
    return (length is not None and 0 < length <= intake.SMALL_PATCH_BYTES
            and not request.headers.get("Transfer-Encoding"))


# A stored body under a key its upload does not take (created another day; at offset 0 not
# the whole file after all) is stored again and the statement asked again; so is one whose
# upload another writer changed between the statement's snapshot and its row lock.
PATCH_ATTEMPTS = 3


def _patch_in_one_statement(upload_id: str, offset: int, checksum) -> Response:  # noqa: ANN001
    """A small PATCH without a lease: the body is read and stored first (as a
    creation-with-upload's), then one statement on an autocommit connection checks the
    upload and records the chunk with its bookkeeping and events
    (pipeline.intake.uploads.record_small_chunk). A refused request answers as the lease
    path does (404, 403, 410, 409 with the server's offset, 423, 413; 400 and 460 from the
    body come first here) and leaves neither a change nor the stored body behind. Of two
    PATCHes at one offset, one moves it and the other answers 409."""
    settings = resources().settings
    store = resources().store
    now = utcnow()
    body = intake.read_small_body(BodyStream(request.stream), request.content_length, checksum)
    if not body.data:  # nothing arrived: the lease path says where the upload stands
        return _patch_with_lease(upload_id, offset, checksum, io.BytesIO())

    def stored(created_at: datetime, whole: bool) -> intake.StagedChunk:
        return intake.store_small_body(store, upload_id, body, offset=offset, created_at=created_at,
                                       whole=whole, lease=secrets.token_hex(8),
                                       spool_dir=settings.var_dir / "spool")

    # Stored where a small file's one PATCH belongs (at offset 0, its original): the statement
    # says whether the upload takes it there.
    staged = stored(now, whole=offset == 0 and not body.interrupted)
    expiry = timedelta(seconds=settings.upload_expiry_seconds)
    try:
        with autocommit_engine().connect() as connection:
            for _ in range(PATCH_ATTEMPTS):
                found = intake.record_small_chunk(
                    connection, upload_id, staged, body.whole_checksums,
                    facility_id=current_user().facility_id, expiry=expiry,
                    request_id=request_id.get() or None, now=now)
                if found.recorded:
                    break
                _refuse_patch(found, offset, len(body.data))
                if not found.stored_right(staged):
                    wrong, staged = staged, stored(found.created_at, staged.whole and found.whole)
                    store.delete(wrong.key)
            else:
                raise TusError(409, "upload changed while this chunk was written; HEAD and resume")
    except BaseException:
        store.delete(staged.key)
        raise
    kick_relay()  # its events (and with upload.completed its chain) were committed outside the session
    return Response(status=204, headers=_offset_headers(found.offset, now + expiry))


def _refuse_patch(found: intake.SmallChunk, offset: int, length: int) -> None:
    """The lease path's answers, in its order, for what the one statement saw."""
    if not found.exists:
        raise ApiError(404, "no such upload")
    _check_reachable(found.facility_id, found.state)
    _check_offset(offset, found.state, found.offset, found.length)
    if found.state != UploadState.RECEIVING:
        raise TusError(409, "upload is no longer receiving chunks; HEAD and resume")
    if found.locked:
        raise TusError(423, "another request is writing to this upload; retry shortly")
    if offset + length > found.length:
        raise TusError(413, f"chunk goes past Upload-Length ({found.length} bytes)")


def _take_lease(upload_id: str, offset: int) -> str:
    session = db()
    try:
        lease = intake.acquire_lease(session, upload_id, resources().settings.upload_lock_seconds,
                                     offset=offset)
    except TusError:
        session.rollback()
        raise
    session.commit()
    return lease


def _write_chunk(upload: Upload, offset: int, checksum, lease: str, body: BinaryIO) -> Upload:  # noqa: ANN001
    settings = resources().settings
    store = resources().store
    session = db()
    upload_id = upload.id
    sessions = resources().session_factory

    def renew() -> None:
        # Its own session: it also runs on the renewal thread while the body is PUT.
        with sessions() as own:
            intake.renew_lease(own, upload_id, lease, settings.upload_lock_seconds)
            own.commit()

    try:
        staged = intake.stage_chunk(
            store, upload, body, offset=offset, checksum=checksum,
            spool_dir=settings.var_dir / "spool", renew=renew, lease=lease,
        )
        if staged is None:
            intake.release_lease(session, upload_id, lease)
            session.commit()
            return session.get(Upload, upload_id, populate_existing=True)
        try:
            # Gives the lease back in the same statement.
            upload = intake.record_chunk(
                session, upload_id, lease, staged,
                expiry=timedelta(seconds=settings.upload_expiry_seconds), batch_id=upload.batch_id,
            )
            # Committed with the offset (the outbox); upload.completed starts the chain.
            chunk_recorded(session, upload)
            session.commit()
        except Exception:
            session.rollback()
            store.delete(staged.key)
            raise
    except BaseException:
        session.rollback()
        intake.release_lease(session, upload_id, lease)
        session.commit()
        raise
    return upload


@blueprint.route("/<upload_id>", methods=["DELETE"])
@require(*WRITERS)
@operation("tus termination", responses={204: "terminated"}, headers=(TUS_HEADER,),
           errors=(*STANDARD_ERRORS, 409, 410, 412))
def terminate(upload_id: str) -> Response:
    check_version(request.headers.get("Tus-Resumable"))
    upload = _load(upload_id)
    session = db()
    keys = intake.terminate(session, upload)
    session.commit()
    for key in keys:
        resources().store.delete(key)
    # The batch may have been waiting only for this file.
    chains.enqueue_batch_dispatch(upload.batch_id)
    return Response(status=204)
