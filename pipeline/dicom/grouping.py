"""Grouping: a parsed instance is recorded under its study and series, idempotently by
SOPInstanceUID and bytes, so a file sent twice is stored once and forwarded once; new bytes
for a known SOPInstanceUID are a new version (``pipeline.dicom.versions``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.dicom import versions
from pipeline.dicom.headers import DEFAULT_LIMITS, InstanceHeader, ParseLimits, Quarantine, read_header
from pipeline.models import (
    Instance,
    InstanceOrigin,
    Series,
    Study,
    Upload,
    UploadState,
)
from pipeline.storage import ObjectMissing, ObjectStore, iter_object


def _insert_or_get(session: Session, model: type, where: dict, values: dict):  # noqa: ANN202
    """Insert a row the caller just looked for and did not find; returns it and whether it
    is ours. Two parse tasks may meet the same new study at once: the loser re-reads the
    winner's row."""
    try:
        with session.begin_nested():
            row = model(**where, **values)
            session.add(row)
        return row, True
    except IntegrityError:
        return session.scalar(select(model).filter_by(**where)), False


def _get_or_create(session: Session, model: type, where: dict, values: dict):  # noqa: ANN202
    found = session.scalar(select(model).filter_by(**where))
    if found is not None:
        return found
    return _insert_or_get(session, model, where, values)[0]


# Objects up to this size are parsed from memory; bigger ones spill to the spool folder.
IN_MEMORY_BYTES = 4 * 1024 * 1024


def read_stored_header(store: ObjectStore, key: str, spool_dir: Path,
                       expected_sha256: str | None = None,
                       limits: ParseLimits = DEFAULT_LIMITS) -> InstanceHeader:
    """Copy the object locally (S3 bodies cannot seek), hashing it, and parse its header.

    With ``expected_sha256`` the bytes must be those hashed when they arrived: a file sent
    in one request is stored as its original by the API and never re-read by assembly, so
    this is where an object changed in storage is caught (quarantined ``corrupt_object``).
    """
    spool_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.SpooledTemporaryFile(max_size=IN_MEMORY_BYTES, dir=spool_dir) as tmp:
        try:
            for block in iter_object(store, key):
                tmp.write(block)
                digest.update(block)
        except ObjectMissing as exc:
            raise Quarantine("missing_object", "the stored file is no longer in storage") from exc
        if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
            raise Quarantine("corrupt_object", "stored bytes differ from the bytes received")
        size = tmp.tell()
        tmp.seek(0)
        return dataclasses.replace(read_header(tmp, size, limits), size=size)


def quarantine(session: Session, upload: Upload, reason: str, detail: str) -> None:
    upload.state = UploadState.QUARANTINED
    upload.quarantine_reason = reason
    upload.quarantine_detail = detail[:1000]
    session.flush()


def record_instance(session: Session, upload: Upload, header: InstanceHeader) -> Instance:
    """Record the study/series/instance for an assembled upload."""
    study = _get_or_create(
        session,
        Study,
        {"facility_id": upload.facility_id, "study_instance_uid": header.study_instance_uid},
        {
            "patient_id": header.patient_id,
            "study_date": header.study_date,
            "modality": header.modality,
            "description": header.study_description,
        },
    )
    series = _get_or_create(
        session,
        Series,
        {"study_id": study.id, "series_instance_uid": header.series_instance_uid},
        {"modality": header.modality},
    )
    assert upload.object_key and upload.sha256
    upload.sop_instance_uid = header.sop_instance_uid

    def make_instance(version_state: str) -> Instance:
        instance = Instance(
            facility_id=upload.facility_id, sop_instance_uid=header.sop_instance_uid,
            series_id=series.id, study_id=study.id, sop_class_uid=header.sop_class_uid,
            transfer_syntax_uid=header.transfer_syntax_uid, object_key=upload.object_key,
            size=header.size if header.size is not None else upload.length,
            sha256=upload.sha256, batch_id=upload.batch_id,
            upload_id=upload.id, version_state=version_state,
        )
        session.add(instance)
        session.flush()
        record_origin(session, instance, header, new=True)
        return instance

    # New bytes for a known SOPInstanceUID are a version of their own, filed under their own
    # UIDs; which version goes out is decided there.
    instance = versions.record_version(session, upload, make_instance)
    upload.state = UploadState.PARSED
    session.flush()
    return instance


def parse_and_group(session: Session, store: ObjectStore, upload: Upload, spool_dir: Path,
                    limits: ParseLimits = DEFAULT_LIMITS) -> None:
    """Parse an assembled upload and record it, or quarantine it with the reason."""
    if upload.state != UploadState.ASSEMBLED:
        return
    assert upload.object_key
    try:
        header = read_stored_header(store, upload.object_key, spool_dir, upload.sha256, limits)
    except Quarantine as q:
        quarantine(session, upload, q.reason, q.detail)
        return
    record_instance(session, upload, header)


def batches_of_versions(session: Session, upload: Upload) -> list[int]:
    """The upload's batch and the batches of every other version of its SOPInstanceUID."""
    ids = {upload.batch_id}
    if upload.sop_instance_uid:
        ids.update(session.scalars(select(Instance.batch_id).where(
            Instance.facility_id == upload.facility_id,
            Instance.sop_instance_uid == upload.sop_instance_uid).distinct()))
    return sorted(ids)


def release(session: Session, upload: Upload) -> None:
    """Check a quarantined file again (its cause fixed: storage repaired, a limit raised):
    back to assembled, for the parse to take it; it is quarantined again if it still fails.
    Only a file whose bytes were stored whole can be checked again."""
    upload.state = UploadState.ASSEMBLED
    upload.quarantine_reason = None
    upload.quarantine_detail = None
    # A file dead-lettered for killing its workers gets its attempts back: a person decided
    # to try again (a limit was raised, the host was given memory).
    upload.unfinished_attempts = 0
    session.flush()


def releasable(upload: Upload) -> bool:
    return (upload.state == UploadState.QUARANTINED and upload.object_key is not None
            and upload.sha256 is not None)


def spool_dir_for(var_dir: Path) -> Path:
    path = Path(var_dir) / "spool"
    os.makedirs(path, exist_ok=True)
    return path


def record_origin(session: Session, instance: Instance, header: InstanceHeader,
                  new: bool = False) -> None:
    """Remember what the stored original says (called when an instance is recorded);
    ``new``: the instance was just inserted, so there is no origin row to look up."""
    origin = None if new else session.get(InstanceOrigin, instance.id)
    origin = origin or InstanceOrigin(instance_id=instance.id)
    origin.study_instance_uid = header.study_instance_uid
    origin.series_instance_uid = header.series_instance_uid
    origin.patient_id = header.patient_id
    origin.study_date = header.study_date
    origin.accession_number = header.accession_number
    session.add(origin)
