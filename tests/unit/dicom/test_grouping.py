"""Parsing and grouping a stored original, on SQLite and a folder store: the bytes read back
must be those hashed when they arrived, and a new instance is recorded with its origin."""

from __future__ import annotations

import hashlib
import io
import secrets
from datetime import timedelta

import pytest

from pipeline.dicom import grouping
from pipeline.dicom.samples import synthetic_study
from pipeline.models import Batch, Instance, InstanceOrigin, Study, Upload, UploadState, utcnow


@pytest.fixture
def stored_upload(session, make_token, app):
    """An ASSEMBLED upload whose original is in the store, as the API leaves a whole file."""
    from pipeline.accounts.users import user_for_token

    store = app.extensions["relaypacs"].store
    user = user_for_token(session, make_token("Clinic A"))
    batch = Batch(facility_id=user.facility_id, user_id=user.id)
    session.add(batch)
    session.flush()

    def make(data: bytes, stored: bytes | None = None) -> Upload:
        upload_id = secrets.token_hex(16)
        key = f"test/upload-{upload_id}/original.dcm"
        store.put_stream(key, io.BytesIO(data if stored is None else stored))
        upload = Upload(id=upload_id, batch_id=batch.id, facility_id=batch.facility_id,
                        user_id=user.id, filename="f.dcm", length=len(data), offset=len(data),
                        state=UploadState.ASSEMBLED, object_key=key,
                        sha256=hashlib.sha256(data).hexdigest(),
                        expires_at=utcnow() + timedelta(days=1))
        session.add(upload)
        session.flush()
        return upload

    return store, make


def test_an_original_is_parsed_and_recorded_with_its_origin(session, stored_upload, tmp_path):
    store, make = stored_upload
    first, second = synthetic_study(2)
    for data in (first, second):
        upload = make(data)
        grouping.parse_and_group(session, store, upload, tmp_path / "spool")
        assert upload.state == UploadState.PARSED, upload.quarantine_detail
        instance = session.query(Instance).filter_by(upload_id=upload.id).one()
        origin = session.get(InstanceOrigin, instance.id)
        study = session.get(Study, instance.study_id)
        assert origin is not None and origin.study_instance_uid == study.study_instance_uid
    session.commit()
    # The same bytes again: a duplicate, recorded once.
    again = make(first)
    grouping.parse_and_group(session, store, again, tmp_path / "spool")
    assert again.state == UploadState.PARSED
    assert session.query(Instance).count() == 2


def test_bytes_changed_in_storage_are_quarantined(session, stored_upload, tmp_path):
    store, make = stored_upload
    (data,) = synthetic_study(1)
    changed = data[:-1] + bytes([data[-1] ^ 0xFF])
    upload = make(data, stored=changed)
    grouping.parse_and_group(session, store, upload, tmp_path / "spool")
    assert upload.state == UploadState.QUARANTINED
    assert upload.quarantine_reason == "corrupt_object"
    assert session.query(Instance).count() == 0
