"""Versions of one SOPInstanceUID, on SQLite and a folder store, with the real grouping and
rendition code: a corrected re-send goes out under its own patient and study, two versions
in one batch are a conflict decided by the stated rule, and a version that already reached a
PACS holds the others for a person."""

from __future__ import annotations

import hashlib
import io
import secrets
from datetime import timedelta

import pydicom
import pytest
from pydicom.uid import generate_uid

from pipeline.delivery import renditions
from pipeline.dicom import grouping
from pipeline.models import Batch, Instance, Study, Upload, UploadState, utcnow
from tests.clinic_samples import patient_study


@pytest.fixture
def store(app):
    return app.extensions["relaypacs"].store


@pytest.fixture
def facility_user(session, make_token):
    from pipeline.accounts.users import user_for_token

    return user_for_token(session, make_token("Clinic A"))


@pytest.fixture
def new_batch(session, facility_user):
    def make() -> Batch:
        batch = Batch(facility_id=facility_user.facility_id, user_id=facility_user.id)
        session.add(batch)
        session.commit()
        return batch

    return make


@pytest.fixture
def ingest(session, store, tmp_path):
    """Record one file in a batch as the dicom worker would; returns its upload."""

    def run(batch: Batch, data: bytes, filename: str = "f.dcm") -> Upload:
        upload_id = secrets.token_hex(16)
        key = f"test/upload-{upload_id}/original.dcm"
        store.put_stream(key, io.BytesIO(data))
        upload = Upload(id=upload_id, batch_id=batch.id, facility_id=batch.facility_id,
                        user_id=batch.user_id, filename=filename, length=len(data),
                        offset=len(data), state=UploadState.ASSEMBLED, object_key=key,
                        sha256=hashlib.sha256(data).hexdigest(),
                        expires_at=utcnow() + timedelta(days=1))
        session.add(upload)
        session.flush()
        grouping.parse_and_group(session, store, upload, tmp_path / "spool")
        session.commit()
        return upload

    return run


def refiled(data: bytes, *, patient_id: str, name: str) -> bytes:
    """The same SOPInstanceUID filed under another patient, study and series: what a clinic
    sends to correct a misfiled image."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientID = patient_id
    ds.PatientName = name
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def sent(session, store, instance: Instance) -> pydicom.Dataset:
    rendition = renditions.prepare(session, store, instance)
    session.commit()
    with rendition.outgoing.open() as fh:
        return pydicom.dcmread(io.BytesIO(fh.read()))


def instance_of(session, upload: Upload) -> Instance:
    session.expire_all()
    return session.query(Instance).filter_by(upload_id=upload.id).one()


def test_a_corrected_resend_goes_out_under_its_own_patient(session, store, new_batch, ingest):
    # Two images filed under the wrong patient; the clinic re-sends the second one, refiled.
    other, wrong = patient_study(2, patient_id="P-WRONG", name="Wrong^Patient")
    right = refiled(wrong, patient_id="P-RIGHT", name="Right^Patient")
    batch = new_batch()
    ingest(batch, other)
    first = ingest(batch, wrong)
    second = ingest(new_batch(), right)
    assert second.state == UploadState.PARSED

    corrected = instance_of(session, second)
    ds = sent(session, store, corrected)
    right_ds = pydicom.dcmread(io.BytesIO(right))
    assert ds.PatientID == "P-RIGHT"
    assert str(ds.PatientName) == "Right^Patient"
    assert ds.StudyInstanceUID == right_ds.StudyInstanceUID
    assert ds.SeriesInstanceUID == right_ds.SeriesInstanceUID
    # Grouped by its own UIDs, and the old version's record is kept as it was.
    assert session.get(Study, corrected.study_id).study_instance_uid == right_ds.StudyInstanceUID
    old = instance_of(session, first)
    assert old.id != corrected.id
    assert session.get(Study, old.study_id).patient_id == "P-WRONG"
    assert old.sha256 == hashlib.sha256(wrong).hexdigest()
