"""Phone photos through the tus creation checks, the study picker and the conversion step,
on SQLite and a folder store (the Flask test client; tasks are recorded, not run)."""

from __future__ import annotations

import base64
import hashlib
import io

import pydicom
import pytest
from PIL import Image

from pipeline.dicom import grouping
from pipeline.dicom.samples import synthetic_study
from pipeline.intake import photos
from pipeline.models import Instance, Series, Study, Upload, UploadState

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"
TYPED = {"kind": "photo", "filetype": "image/jpeg", "patient_id": "P-9", "patient_name": "Roe^Ann",
         "patient_birth_date": "19700101", "patient_sex": "F", "study_description": "Rash"}


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def gps_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0)}
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 120, 200)).save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


def send(client, auth, batch_id, data: bytes, metadata: dict[str, str]):
    meta = ",".join(f"{k} {b64(v)}" for k, v in {"filename": "photo.jpg", "batch_id": str(batch_id),
                                                  **metadata}.items())
    return client.post("/api/v1/files", data=data, headers={
        **auth, **TUS, "Upload-Length": str(len(data)), "Upload-Metadata": meta,
        "Content-Type": OCTET})


@pytest.fixture
def clinic(client, make_token):
    def open_batch(facility: str = "Clinic A", role: str = "uploader"):
        auth = {"Authorization": f"Bearer {make_token(facility, role)}"}
        batch = client.post("/api/v1/batches", json={}, headers=auth).get_json()["id"]
        return auth, batch
    return open_batch


def store_of(app):
    return app.extensions["relaypacs"].store


def parse(app, session, upload_id: str, tmp_path) -> Upload:
    """What the dicom worker does: convert the photo, delete its bytes, parse and group."""
    upload = session.get(Upload, upload_id)
    for key in photos.convert(session, store_of(app), upload):
        store_of(app).delete(key)
    grouping.parse_and_group(session, store_of(app), upload, tmp_path / "spool")
    session.commit()
    return upload


def test_bad_photo_fields_are_refused_when_the_upload_is_created(client, clinic, enqueued, monkeypatch):
    auth, batch = clinic()
    for change, status, words in [
        ({"patient_birth_date": "14/02/1980"}, 400, "PatientBirthDate"),
        ({"patient_sex": "female"}, 400, "PatientSex"),
        ({"filetype": "application/pdf"}, 400, "filetype"),
        ({"kind": "video"}, 400, "kind"),
        ({"patient_id": ""}, 400, "patient_id"),
    ]:
        response = send(client, auth, batch, gps_jpeg(), {**TYPED, **change})
        assert response.status_code == status, change
        assert words in response.get_json()["error"]["message"]
    # Refused before a byte is sent: a photo is decoded in memory, so it has its own limit.
    monkeypatch.setattr(photos, "MAX_PHOTO_BYTES", 1000)
    too_big = client.post("/api/v1/files", headers={
        **auth, **TUS, "Upload-Length": "1001",
        "Upload-Metadata": ",".join(f"{k} {b64(v)}" for k, v in {
            "filename": "huge.jpg", "batch_id": str(batch), **TYPED}.items())})
    assert too_big.status_code == 413 and "photo" in too_big.get_json()["error"]["message"]
    assert enqueued == []


def test_a_target_study_must_be_one_of_the_facility(app, client, clinic, session, enqueued, tmp_path):
    auth, batch = clinic("Clinic A")
    other_auth, other_batch = clinic("Clinic B")
    data = synthetic_study(1)[0]
    created = send(client, auth, batch, data, {})
    assert created.status_code == 201
    upload_id = created.headers["Location"].rsplit("/", 1)[1]
    parse(app, session, upload_id, tmp_path)
    study_uid = pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID
    photo = {"kind": "photo", "filetype": "image/jpeg", "target_study": study_uid}
    refused = send(client, other_auth, other_batch, gps_jpeg(), photo)
    assert refused.status_code == 404
    assert send(client, auth, batch, gps_jpeg(), {**photo, "target_study": "1.2.3.4"}).status_code == 404
    # The picker: Clinic A sees its study, Clinic B does not, both need a token.
    listed = client.get("/api/v1/studies?q=&limit=10", headers=auth).get_json()["studies"]
    assert [s["study_instance_uid"] for s in listed] == [study_uid]
    assert listed[0]["batch_id"] == batch and listed[0]["modality"] == "CT"
    assert client.get("/api/v1/studies", headers=other_auth).get_json()["studies"] == []
    assert client.get("/api/v1/studies").status_code == 401
    assert client.get("/api/v1/studies?limit=0", headers=auth).status_code == 400
    assert client.get(f"/api/v1/studies?q={study_uid[:6]}", headers=auth).get_json()["studies"]
    assert client.get("/api/v1/studies?q=nomatch", headers=auth).get_json()["studies"] == []

    # The photo joins that study in a series of its own, with the study's patient.
    joined = send(client, auth, batch, gps_jpeg(), photo)
    assert joined.status_code == 201
    upload = parse(app, session, joined.headers["Location"].rsplit("/", 1)[1], tmp_path)
    assert upload.state == UploadState.PARSED
    instance = session.query(Instance).filter_by(upload_id=upload.id).one()
    study = session.get(Study, instance.study_id)
    assert study.study_instance_uid == study_uid
    assert len(session.query(Series).filter_by(study_id=study.id).all()) == 2
    stored = pydicom.dcmread(io.BytesIO(b"".join(store_of(app).open(upload.object_key))))
    source = pydicom.dcmread(io.BytesIO(data))
    assert (stored.PatientID, stored.PatientName, stored.StudyDate) == (
        source.PatientID, source.PatientName, source.StudyDate)


def test_typed_photo_becomes_a_vl_photographic_instance(app, client, clinic, session, enqueued, tmp_path):
    auth, batch = clinic()
    data = gps_jpeg()
    created = send(client, auth, batch, data, TYPED)
    assert created.status_code == 201
    upload_id = created.headers["Location"].rsplit("/", 1)[1]
    original_key = session.get(Upload, upload_id).object_key
    assert enqueued == [("parse", upload_id)]
    upload = parse(app, session, upload_id, tmp_path)
    assert upload.state == UploadState.PARSED
    assert not store_of(app).exists(original_key)  # the photo with its GPS is gone
    instance = session.query(Instance).filter_by(upload_id=upload_id).one()
    assert instance.sop_class_uid == "1.2.840.10008.5.1.4.1.1.77.1.4"
    assert instance.transfer_syntax_uid == "1.2.840.10008.1.2.4.50"
    stored = b"".join(store_of(app).open(instance.object_key))
    assert instance.size == len(stored) and instance.sha256 == hashlib.sha256(stored).hexdigest()
    ds = pydicom.dcmread(io.BytesIO(stored))
    assert (ds.PatientID, str(ds.PatientName), ds.StudyDescription) == ("P-9", "Roe^Ann", "Rash")
    # Converting again (a redelivered task) changes nothing.
    assert photos.convert(session, store_of(app), upload) == []


def test_a_file_that_is_no_photo_is_quarantined_with_its_reason(app, client, clinic, session,
                                                                 enqueued, tmp_path):
    auth, batch = clinic()
    created = send(client, auth, batch, b"%PDF-1.4 not a photo", TYPED)
    assert created.status_code == 201
    upload = parse(app, session, created.headers["Location"].rsplit("/", 1)[1], tmp_path)
    assert upload.state == UploadState.QUARANTINED
    assert upload.quarantine_reason == "not_an_image"
