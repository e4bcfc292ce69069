"""Delivered studies with real DICOM bytes for the teaching file tests: facility, users with
tokens, batch, uploads, study, series, instances (pydicom's CT sample with its own UIDs and
patient, and optionally an ultrasound frame) and a DELIVERED delivery per instance.

Shared by the unit tests (SQLite, folder store) and the integration test (PostgreSQL, S3).
"""

from __future__ import annotations

import hashlib
import io
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pydicom
from sqlalchemy.orm import Session

from pipeline.accounts.users import TOKEN_PREFIX, get_or_create_facility, hash_token
from pipeline.intake.uploads import original_key
from pipeline.models import (
    Batch,
    BatchState,
    Delivery,
    DeliveryState,
    Destination,
    Instance,
    Series,
    Study,
    Upload,
    UploadState,
    User,
    utcnow,
)
from pipeline.storage import ObjectStore

SAMPLES = Path(pydicom.__file__).parent / "data" / "test_files"


@dataclass
class SeededUser:
    id: int
    facility_id: int
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def user(session: Session, facility: str, role: str) -> SeededUser:
    row = get_or_create_facility(session, facility)
    token = TOKEN_PREFIX + secrets.token_hex(16)
    person = User(email=f"{role}-{secrets.token_hex(4)}@teaching.test", role=role,
                  facility_id=row.id, token_hash=hash_token(token))
    session.add(person)
    session.flush()
    return SeededUser(person.id, row.id, token)


@dataclass
class SeededStudy:
    study_id: int
    instance_ids: list[int]
    patient_id: str
    study_uid: str
    sop_uids: list[str]


def _ct(patient_id: str, name: str, study_uid: str, series_uid: str, n: int) -> bytes:
    ds = pydicom.dcmread(SAMPLES / "CT_small.dcm")
    ds.PatientID = patient_id
    ds.PatientName = name
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = f"{series_uid}.{n}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = n
    ds.StudyDescription = f"CT chest {name.split('^')[0]}"
    ds.AccessionNumber = f"ACC{secrets.randbelow(10**8)}"
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _us(patient_id: str, name: str, study_uid: str, series_uid: str) -> bytes:
    ds = pydicom.dcmread(SAMPLES / "CT_small.dcm")
    ds.Modality = "US"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.PatientID = patient_id
    ds.PatientName = name
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = f"{series_uid}.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 1
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def delivered_study(session: Session, store: ObjectStore, *, facility_id: int, user_id: int,
                    patient_id: str = "MRN-1", name: str = "Smith^Alice", ct_count: int = 3,
                    with_us: bool = False) -> SeededStudy:
    now = utcnow()
    batch = Batch(facility_id=facility_id, user_id=user_id, state=BatchState.DONE,
                  created_at=now, last_activity_at=now)
    session.add(batch)
    study_uid = f"1.2.826.0.1.3680043.8.498.{secrets.randbits(60)}"
    study = Study(facility_id=facility_id, study_instance_uid=study_uid, patient_id=patient_id,
                  modality="CT", study_date="20240310")
    session.add(study)
    destination = Destination(name=f"pacs-{secrets.token_hex(4)}", kind="folder",
                              options={"path": "/nonexistent"}, facility_id=facility_id)
    session.add(destination)
    session.flush()
    files: list[tuple[str, str, bytes]] = []  # (series uid, modality, bytes)
    ct_series = f"{study_uid}.1"
    for n in range(1, ct_count + 1):
        files.append((ct_series, "CT", _ct(patient_id, name, study_uid, ct_series, n)))
    if with_us:
        files.append((f"{study_uid}.2", "US", _us(patient_id, name, study_uid, f"{study_uid}.2")))
    series_rows: dict[str, Series] = {}
    instance_ids, sop_uids = [], []
    for series_uid, modality, data in files:
        if series_uid not in series_rows:
            series_rows[series_uid] = Series(study_id=study.id, series_instance_uid=series_uid,
                                             modality=modality)
            session.add(series_rows[series_uid])
            session.flush()
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        digest = hashlib.sha256(data).hexdigest()
        upload = Upload(id=secrets.token_hex(16), batch_id=batch.id, facility_id=facility_id,
                        user_id=user_id, filename="x.dcm", length=len(data), offset=len(data),
                        state=UploadState.PARSED, sha256=digest, created_at=now, updated_at=now,
                        expires_at=now + timedelta(days=1))
        upload.object_key = original_key(upload)
        session.add(upload)
        session.flush()
        store.put_stream(upload.object_key, io.BytesIO(data))
        instance = Instance(facility_id=facility_id, series_id=series_rows[series_uid].id,
                            study_id=study.id, sop_instance_uid=str(ds.SOPInstanceUID),
                            sop_class_uid=str(ds.SOPClassUID),
                            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                            object_key=upload.object_key, size=len(data), sha256=digest,
                            batch_id=batch.id, upload_id=upload.id)
        session.add(instance)
        session.flush()
        session.add(Delivery(instance_id=instance.id, destination_id=destination.id,
                             study_id=study.id, batch_id=batch.id, state=DeliveryState.DELIVERED,
                             delivered_at=now, sent_object_key=upload.object_key, sent_sha256=digest))
        instance_ids.append(instance.id)
        sop_uids.append(str(ds.SOPInstanceUID))
    session.flush()
    return SeededStudy(study.id, instance_ids, patient_id, study_uid, sop_uids)
