"""Phone photos in the intake flow: the study a photo may join, the list the phone picks it
from, and the step that turns a received photo into its DICOM instance before the parse.

The conversion itself (bytes in, bytes out) is ``pipeline.dicom.photos``. Here: the photo's
bytes are read from storage and checked against the digest taken when they arrived, the
patient and study attributes come from the request's typed fields or from the target
study's first instance, the DICOM file replaces the photo as the upload's stored object,
and the photo itself (EXIF and GPS included) is deleted by the caller after the commit. A
file that is no JPEG/HEIC, or a broken one, is quarantined with its reason like any other
hostile file. After this step the upload is an ordinary assembled DICOM file.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from pipeline.dicom.attributes import INHERITED_ON_MOVE
from pipeline.dicom.grouping import quarantine
from pipeline.dicom.photos import PhotoError, PhotoRequest, photo_to_dicom
from pipeline.dicom.rewrite import elements_of, read_header
from pipeline.editing.study_organisation import first_instance_id
from pipeline.intake.uploads import upload_prefix
from pipeline.models import Instance, Study, Upload, UploadState
from pipeline.storage import ObjectMissing, ObjectStore, iter_object

# A photo is read whole into memory to decode it; bigger files are refused, not decoded.
MAX_PHOTO_BYTES = 64 * 1024 * 1024
MAX_STUDIES_LISTED = 200


def target_study(session: Session, facility_id: int, study_instance_uid: str) -> Study | None:
    """The facility's study of that UID, if it has an instance to take attributes from;
    another facility's study is "not there" (never told apart from a missing one)."""
    study = session.scalar(select(Study).where(Study.facility_id == facility_id,
                                               Study.study_instance_uid == study_instance_uid))
    if study is None or first_instance_id(session, study) is None:
        return None
    return study


@dataclass(frozen=True)
class StudyListing:
    study_instance_uid: str
    patient_id: str | None
    study_date: str | None
    description: str | None
    modality: str | None
    batch_id: int | None


def recent_studies(session: Session, facility_id: int | None, q: str = "",
                   limit: int = 50) -> list[StudyListing]:
    """Newest studies first, of one facility (None: every facility, for admins); ``q``
    matches the start of the PatientID or StudyInstanceUID, or any part of the description."""
    batch = (select(func.max(Instance.batch_id)).where(Instance.study_id == Study.id)
             .correlate(Study).scalar_subquery())
    query = select(Study, batch).order_by(Study.created_at.desc(), Study.id.desc())
    if facility_id is not None:
        query = query.where(Study.facility_id == facility_id)
    q = q.strip()
    if q:
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(or_(Study.patient_id.like(f"{escaped}%", escape="\\"),
                                Study.study_instance_uid.like(f"{escaped}%", escape="\\"),
                                Study.description.ilike(f"%{escaped}%", escape="\\")))
    rows = session.execute(query.limit(max(1, min(limit, MAX_STUDIES_LISTED))))
    return [StudyListing(s.study_instance_uid, s.patient_id, s.study_date, s.description,
                         s.modality, batch_id) for s, batch_id in rows]


def photo_key(upload: Upload) -> str:
    return f"{upload_prefix(upload.id, upload.created_at)}/photo.dcm"


def _read(store: ObjectStore, key: str, expected_sha256: str | None) -> bytes:
    digest = hashlib.sha256()
    parts: list[bytes] = []
    size = 0
    try:
        for block in iter_object(store, key):
            size += len(block)
            if size > MAX_PHOTO_BYTES:
                raise PhotoError("photo_too_large", f"over {MAX_PHOTO_BYTES} bytes")
            digest.update(block)
            parts.append(block)
    except ObjectMissing as exc:
        raise PhotoError("missing_object", "the stored file is no longer in storage") from exc
    if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
        raise PhotoError("corrupt_object", "stored bytes differ from the bytes received")
    return b"".join(parts)


def _identity_of(session: Session, store: ObjectStore, upload: Upload, request: PhotoRequest) -> dict:
    """The target study's first instance's patient- and study-level elements."""
    study = target_study(session, upload.facility_id, request.target_study or "")
    if study is None:
        raise PhotoError("photo_target_missing", "the study the photo was meant to join is gone")
    first = session.get(Instance, first_instance_id(session, study))
    try:
        ds, _ = read_header(io.BytesIO(_read(store, first.object_key, first.sha256)))
    except PhotoError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure: nothing to inherit
        raise PhotoError("photo_target_unreadable",
                         f"the target study's first instance is unreadable ({type(exc).__name__})") from exc
    return {k: v for k, v in elements_of(ds, INHERITED_ON_MOVE).items() if v is not None}


def convert(session: Session, store: ObjectStore, upload: Upload) -> Sequence[str]:
    """Turn an assembled photo upload into its DICOM instance (or quarantine it); returns
    the keys to delete once this is committed. Idempotent: a converted upload, or one that
    is not a photo, is left as it is."""
    if (upload.photo is None or upload.state != UploadState.ASSEMBLED
            or upload.photo.get("converted")):
        return []
    assert upload.object_key
    request = PhotoRequest.from_json(upload.photo)
    try:
        data = _read(store, upload.object_key, upload.sha256)
        identity = _identity_of(session, store, upload, request) if request.target_study else None
        part10 = photo_to_dicom(data, request, identity)
    except PhotoError as exc:
        quarantine(session, upload, exc.reason, exc.detail)
        return []
    key = photo_key(upload)
    store.put_stream(key, io.BytesIO(part10))
    original = upload.object_key
    upload.object_key = key
    upload.sha256 = hashlib.sha256(part10).hexdigest()
    upload.photo = {**upload.photo, "converted": True, "photo_bytes": len(data)}
    session.flush()
    return [original]
