"""DIMSE intake decisions on the SQLite schema: the SCP's account, one batch per sending
modality session, the C-STORE verdict, and the stored original recorded as ASSEMBLED."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest

from pipeline.accounts.users import get_or_create_facility
from pipeline.dicom.samples import PYDICOM_FILES, synthetic_study
from pipeline.intake import dimse as dimse_intake
from pipeline.intake.uploads import upload_prefix
from pipeline.models import Batch, BatchState, Upload, UploadState, User, utcnow
from pipeline.storage import FolderStore

GAP = timedelta(seconds=120)


@pytest.fixture
def account(session):
    found = dimse_intake.scp_account(session, "Clinic North")
    session.commit()
    return found


def test_scp_account_is_created_once_and_cannot_sign_in(session, account):
    again = dimse_intake.scp_account(session, "Clinic North")
    assert again == account
    user = session.get(User, account.user_id)
    assert (user.email, user.role) == ("scp@clinic-north", "uploader")
    assert len(user.token_hash) == 64


def test_scp_account_refuses_a_user_of_another_facility(session):
    south = get_or_create_facility(session, "Clinic South")
    session.add(User(email="scp@clinic-north", role="uploader", facility_id=south.id,
                     token_hash="0" * 64))
    session.flush()
    with pytest.raises(dimse_intake.ScpAccountError):
        dimse_intake.scp_account(session, "Clinic North")


def test_one_open_batch_per_sender_while_it_keeps_sending(session, account):
    t0 = utcnow()
    first = dimse_intake.session_batch(session, account, "CT_ROOM_1", gap=GAP, now=t0)
    again = dimse_intake.session_batch(session, account, "CT_ROOM_1", gap=GAP, now=t0 + GAP / 2)
    other = dimse_intake.session_batch(session, account, "MR_ROOM_2", gap=GAP, now=t0 + GAP / 2)
    assert again.batch.id == first.batch.id
    assert other.batch.id != first.batch.id
    assert first.batch.label == "DIMSE from CT_ROOM_1"
    assert first.batch.state == BatchState.OPEN
    assert again.completed_ids == [] and other.completed_ids == []
    assert again.batch.last_activity_at == t0 + GAP / 2


def test_a_sender_back_after_the_quiet_period_closes_its_old_batch(session, account):
    t0 = utcnow()
    old = dimse_intake.session_batch(session, account, "CT_ROOM_1", gap=GAP, now=t0).batch
    later = dimse_intake.session_batch(session, account, "CT_ROOM_1", gap=GAP, now=t0 + 2 * GAP)
    assert later.batch.id != old.id
    assert later.completed_ids == [old.id]
    assert old.state == BatchState.COMPLETED and old.completed_at == t0 + 2 * GAP


def test_a_duplicate_open_batch_left_by_a_race_is_completed(session, account):
    t0 = utcnow()
    for _ in range(2):
        session.add(Batch(facility_id=account.facility_id, user_id=account.user_id,
                          label="DIMSE from CT_ROOM_1", created_at=t0, last_activity_at=t0))
    session.flush()
    current = dimse_intake.session_batch(session, account, "CT_ROOM_1", gap=GAP, now=t0)
    assert len(current.completed_ids) == 1
    assert current.batch.id not in current.completed_ids
    assert current.batch.id == max(b.id for b in session.query(Batch).all())


def test_ae_titles_are_cleaned_for_labels():
    assert dimse_intake.clean_ae_title(b"  CT\x00ROOM  ") == "CTROOM"
    assert dimse_intake.clean_ae_title("") == "UNKNOWN"
    assert dimse_intake.sender_label("X" * 40) == "DIMSE from " + "X" * 16


def test_display_name_uses_only_a_valid_uid():
    assert dimse_intake.display_name("1.2.3\x00") == "1.2.3.dcm"
    assert dimse_intake.display_name("../../etc") == "dimse-instance.dcm"
    assert dimse_intake.display_name(None) == "dimse-instance.dcm"


def test_check_received_maps_quarantine_reasons_to_statuses(tmp_path):
    good = tmp_path / "good.dcm"
    good.write_bytes(synthetic_study(1)[0])
    assert dimse_intake.check_received(good) is None

    truncated = dimse_intake.check_received(PYDICOM_FILES / "MR_truncated.dcm")
    assert truncated == dimse_intake.Refusal(dimse_intake.CANNOT_UNDERSTAND, "truncated")

    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 300)
    assert dimse_intake.check_received(garbage).status == dimse_intake.CANNOT_UNDERSTAND

    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(synthetic_study(1)[0]))
    del ds.StudyInstanceUID
    no_study = tmp_path / "no-study.dcm"
    ds.save_as(no_study)
    assert dimse_intake.check_received(no_study) == dimse_intake.Refusal(
        dimse_intake.DATASET_MISMATCH, "missing_uid"
    )


def test_received_original_is_stored_whole_and_recorded_assembled(session, account, tmp_path):
    data = synthetic_study(1)[0]
    received = tmp_path / "received.dcm"
    received.write_bytes(data)
    store = FolderStore(tmp_path / "objects")

    upload = dimse_intake.new_upload()
    stored = dimse_intake.store_original(store, upload, received)
    batch = dimse_intake.session_batch(session, account, "CT_ROOM_1", gap=GAP).batch
    dimse_intake.record_upload(session, upload, batch, account, stored, "1.2.3.dcm")
    session.commit()

    row = session.get(Upload, upload.id)
    assert row.state == UploadState.ASSEMBLED
    assert row.object_key == f"{upload_prefix(upload.id, upload.created_at)}/original.dcm"
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    assert (row.length, row.offset) == (len(data), len(data))
    assert (row.batch_id, row.facility_id, row.user_id) == (batch.id, account.facility_id,
                                                            account.user_id)
    with store.open(row.object_key) as fh:
        assert fh.read() == data
