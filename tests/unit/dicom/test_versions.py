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
from sqlalchemy import select

from pipeline.delivery import renditions, routing
from pipeline.dicom import grouping, versions
from pipeline.models import (
    Batch,
    ConflictKind,
    ConflictState,
    Delivery,
    DeliveryState,
    Destination,
    Instance,
    InstanceVersion,
    SopInstance,
    Study,
    Upload,
    UploadState,
    User,
    utcnow,
)
from tests.clinic_samples import patient_study, refiled, transcoded


@pytest.fixture
def store(app):
    return app.extensions["relaypacs"].store


@pytest.fixture
def new_batch(session, make_token):
    from pipeline.accounts.users import user_for_token

    users = {}

    def make(facility: str = "Clinic A") -> Batch:
        if facility not in users:
            users[facility] = user_for_token(session, make_token(facility))
        user = users[facility]
        batch = Batch(facility_id=user.facility_id, user_id=user.id)
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


def key_of(session, upload: Upload) -> SopInstance:
    session.expire_all()
    return session.scalars(select(SopInstance).filter_by(
        facility_id=upload.facility_id, sop_instance_uid=upload.sop_instance_uid)).one()


def states(session, *uploads: Upload) -> list[str]:
    return [instance_of(session, u).version_state for u in uploads]


def test_two_versions_in_one_batch_the_best_transfer_syntax_wins_in_any_order(session, new_batch, ingest):
    (explicit,) = patient_study(1, patient_id="P1", name="Doe^Ann")
    implicit = transcoded(explicit, "1.2.840.10008.1.2")
    # Arrival order must not matter: implicit first in one facility, explicit first in another.
    for facility, order in (("Clinic A", (implicit, explicit)), ("Clinic B", (explicit, implicit))):
        batch = new_batch(facility)
        first, second = (ingest(batch, data, filename=f"{i}.dcm") for i, data in enumerate(order))
        by_bytes = {hashlib.sha256(d).hexdigest(): u for d, u in zip(order, (first, second), strict=True)}
        winner = by_bytes[hashlib.sha256(explicit).hexdigest()]
        loser = by_bytes[hashlib.sha256(implicit).hexdigest()]
        assert states(session, winner, loser) == [InstanceVersion.CURRENT, InstanceVersion.SUPERSEDED]
        key = key_of(session, winner)
        assert (key.conflict, key.conflict_state) == (ConflictKind.IN_BATCH, ConflictState.CHOSEN)
        assert key.chosen_instance_id == instance_of(session, winner).id
        report = versions.conflicts_of_batch(session, batch)
        assert [c["chosen_upload_id"] for c in report] == [winner.id]
        assert {v["upload_id"] for v in report[0]["versions"]} == {winner.id, loser.id}


def test_equal_transfer_syntaxes_the_upload_created_first_wins(session, new_batch, ingest):
    (data,) = patient_study(1, patient_id="P1", name="Doe^Ann")
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.ImageComments = "second export"
    other = io.BytesIO()
    ds.save_as(other, enforce_file_format=True)
    batch = new_batch()
    first = ingest(batch, data)
    second = ingest(batch, other.getvalue())
    assert states(session, first, second) == [InstanceVersion.CURRENT, InstanceVersion.SUPERSEDED]


def test_versions_of_one_batch_naming_different_patients_wait_for_a_person(session, new_batch, ingest):
    (data,) = patient_study(1, patient_id="P1", name="Doe^Ann")
    batch = new_batch()
    first = ingest(batch, data)
    second = ingest(batch, refiled(data, patient_id="P2", name="Roe^Bob"))
    assert states(session, first, second) == [InstanceVersion.HELD, InstanceVersion.HELD]
    key = key_of(session, first)
    assert key.conflict_state == ConflictState.OPEN and key.chosen_instance_id is None
    destination = Destination(name="pacs", kind="folder", options={"path": "/tmp/x"})
    session.add(destination)
    session.flush()
    assert routing.plan_deliveries(session, batch) == []


def _deliver(session, instance: Instance, destination: Destination, state: str, attempts: int = 1) -> None:
    session.add(Delivery(instance_id=instance.id, destination_id=destination.id,
                         study_id=instance.study_id, batch_id=instance.batch_id, state=state,
                         attempts=attempts))
    session.commit()


def test_a_resend_replaces_an_unsent_old_version(session, new_batch, ingest):
    (wrong,) = patient_study(1, patient_id="P-WRONG", name="Wrong^Patient")
    destination = Destination(name="pacs", kind="folder", options={"path": "/tmp/x"})
    session.add(destination)
    session.commit()
    old_batch = new_batch()
    first = ingest(old_batch, wrong)
    routing.plan_deliveries(session, old_batch)  # planned, never tried
    session.commit()
    second = ingest(new_batch(), refiled(wrong, patient_id="P-RIGHT", name="Right^Patient"))
    assert states(session, first, second) == [InstanceVersion.SUPERSEDED, InstanceVersion.CURRENT]
    key = key_of(session, first)
    assert (key.conflict, key.conflict_state) == (ConflictKind.RESEND, ConflictState.CHOSEN)
    # The old version's plan is gone: it can no longer go out.
    assert session.query(Delivery).filter_by(instance_id=instance_of(session, first).id).count() == 0


def test_a_resend_after_the_old_version_reached_a_pacs_waits_for_a_person(session, new_batch, ingest):
    (wrong,) = patient_study(1, patient_id="P-WRONG", name="Wrong^Patient")
    pacs, archive = (Destination(name=n, kind="folder", options={"path": "/tmp/x"})
                     for n in ("pacs", "archive"))
    session.add_all([pacs, archive])
    session.commit()
    first = ingest(new_batch(), wrong)
    old = instance_of(session, first)
    _deliver(session, old, pacs, DeliveryState.DELIVERED)
    _deliver(session, old, archive, DeliveryState.PENDING, attempts=0)
    new_batch_row = new_batch()
    second = ingest(new_batch_row, refiled(wrong, patient_id="P-RIGHT", name="Right^Patient"))

    # Neither version goes anywhere until a person chooses; what was delivered stays recorded.
    assert states(session, first, second) == [InstanceVersion.HELD, InstanceVersion.HELD]
    key = key_of(session, first)
    assert (key.conflict, key.conflict_state) == (ConflictKind.RESEND, ConflictState.OPEN)
    old_rows = session.query(Delivery).filter_by(instance_id=old.id)
    assert [d.state for d in old_rows] == [DeliveryState.DELIVERED]
    assert routing.plan_deliveries(session, new_batch_row) == []

    person = session.query(User).first()
    versions.choose(session, key, second.id, person)
    session.commit()
    assert states(session, first, second) == [InstanceVersion.SUPERSEDED, InstanceVersion.CURRENT]
    assert key_of(session, first).conflict_state == ConflictState.RESOLVED
    corrected = instance_of(session, second)
    planned = routing.plan_deliveries(session, new_batch_row)
    assert sorted(planned) == sorted({(corrected.study_id, pacs.id), (corrected.study_id, archive.id)})
    with pytest.raises(versions.ResolutionConflict):
        versions.choose(session, key_of(session, first), second.id, person)
    with pytest.raises(versions.ResolutionConflict):
        versions.send_again(session, key_of(session, first), person)  # already on its way


def test_choosing_the_version_that_reached_a_pacs_sends_its_withheld_deliveries_again(
        session, new_batch, ingest):
    (wrong,) = patient_study(1, patient_id="P1", name="Doe^Ann")
    pacs, archive = (Destination(name=n, kind="folder", options={"path": "/tmp/x"})
                     for n in ("pacs", "archive"))
    session.add_all([pacs, archive])
    session.commit()
    first = ingest(new_batch(), wrong)
    old = instance_of(session, first)
    _deliver(session, old, pacs, DeliveryState.DELIVERED)
    _deliver(session, old, archive, DeliveryState.PENDING, attempts=2)  # archive was down
    second = ingest(new_batch(), refiled(wrong, patient_id="P2", name="Roe^Bob"))
    # While a person decides, the archive does not get the old version either.
    archive_row = session.query(Delivery).filter_by(instance_id=old.id, destination_id=archive.id).one()
    assert (archive_row.state, archive_row.reason) == (DeliveryState.FAILED, versions.WITHHELD)
    from pipeline.delivery.forwarding import replay

    assert replay(session, [archive_row]) == []  # a held version is not replayed either

    person = session.query(User).first()
    pairs = versions.choose(session, key_of(session, first), first.id, person)
    session.commit()
    assert pairs == [(old.study_id, archive.id)]
    assert states(session, first, second) == [InstanceVersion.CURRENT, InstanceVersion.SUPERSEDED]
    session.expire_all()
    assert session.get(Delivery, archive_row.id).state == DeliveryState.PENDING


def test_a_person_may_still_move_a_corrected_version(session, store, new_batch, ingest):
    """The guard is against the automatic mapping of a re-send, not against moves: a person
    who files the corrected image into another study gets that study's patient."""
    from pipeline.editing import study_organisation

    (target_first,) = patient_study(1, patient_id="P-TARGET", name="Target^Patient")
    (wrong,) = patient_study(1, patient_id="P-WRONG", name="Wrong^Patient")
    ingest(new_batch(), wrong)
    batch = new_batch()
    ingest(batch, target_first)
    second = ingest(batch, refiled(wrong, patient_id="P-RIGHT", name="Right^Patient"))
    target_uid = pydicom.dcmread(io.BytesIO(target_first)).StudyInstanceUID
    person = session.query(User).first()
    study_organisation.move(session, batch, person, {
        "sop_instance_uids": [second.sop_instance_uid], "target_study_instance_uid": target_uid})
    session.commit()
    ds = sent(session, store, instance_of(session, second))
    assert (ds.PatientID, ds.StudyInstanceUID) == ("P-TARGET", target_uid)


def test_a_batch_s_conflicts_are_read_in_the_same_statements_for_one_or_many(
        session, new_batch, ingest):
    """Every poll of a parsed batch lists its conflicts: a re-sent study of hundreds of files
    must not cost statements per conflict."""
    from sqlalchemy import event

    def conflicting_batch(n: int, facility: str) -> Batch:
        batch = new_batch(facility)
        for data in patient_study(n, patient_id=f"P{n}", name="Doe^Ann"):
            ingest(batch, data, filename="a.dcm")
            ingest(batch, transcoded(data, "1.2.840.10008.1.2"), filename="b.dcm")
        return batch

    def statements(batch: Batch) -> tuple[int, list[dict]]:
        seen: list[str] = []
        engine = session.get_bind()

        def record(conn, cursor, statement, *args) -> None:  # noqa: ANN001, ANN002
            seen.append(statement)

        session.expire_all()
        event.listen(engine, "before_cursor_execute", record)
        try:
            report = versions.conflicts_of_batch(session, batch)
        finally:
            event.remove(engine, "before_cursor_execute", record)
        return len(seen), report

    one, one_report = statements(conflicting_batch(1, "Clinic A"))
    many, many_report = statements(conflicting_batch(6, "Clinic B"))
    assert (len(one_report), len(many_report)) == (1, 6)
    assert all(len(c["versions"]) == 2 and c["state"] == ConflictState.CHOSEN for c in many_report)
    assert many == one, f"{one} statements for one conflict, {many} for six"
