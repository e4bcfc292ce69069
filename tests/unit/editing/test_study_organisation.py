"""Study organisation, overrides and renditions on SQLite and a folder store: problems found,
moves, what a rendition holds, and the 409 once deliveries have started."""

from __future__ import annotations

import gc
import hashlib
import io
import secrets
from datetime import timedelta

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import event

from pipeline.delivery import renditions
from pipeline.dicom import grouping
from pipeline.models import (
    Batch,
    Delivery,
    DeliveryState,
    Destination,
    Instance,
    InstanceRendition,
    Upload,
    UploadState,
    utcnow,
)
from tests.clinic_samples import patient_study


@pytest.fixture
def store(app):
    return app.extensions["relaypacs"].store


@pytest.fixture
def uploader(client, make_token):
    return {"Authorization": f"Bearer {make_token('Clinic A', 'uploader')}"}


@pytest.fixture
def ingest(session, store, tmp_path):
    """Record files as the dicom worker would, in the given batch."""

    def run(batch_id: int, files: list[bytes]) -> list[Instance]:
        batch = session.get(Batch, batch_id)
        out = []
        for data in files:
            upload_id = secrets.token_hex(16)
            key = f"test/upload-{upload_id}/original.dcm"
            store.put_stream(key, io.BytesIO(data))
            upload = Upload(id=upload_id, batch_id=batch.id, facility_id=batch.facility_id,
                            user_id=batch.user_id, filename="f.dcm", length=len(data),
                            offset=len(data), state=UploadState.ASSEMBLED, object_key=key,
                            sha256=hashlib.sha256(data).hexdigest(),
                            expires_at=utcnow() + timedelta(days=1))
            session.add(upload)
            session.flush()
            grouping.parse_and_group(session, store, upload, tmp_path / "spool")
            out.append(session.scalar(
                Instance.__table__.select().where(Instance.upload_id == upload_id)))
        session.commit()
        return out

    return run


@pytest.fixture
def clinic_day(client, uploader, ingest):
    """Study A (patient P1), study B: the same exam of P1 under a wrong StudyInstanceUID,
    study C: patient P2 with one series of patient P3 mixed in."""
    batch_id = client.post("/api/v1/batches", json={"label": "day"}, headers=uploader).get_json()["id"]
    uids = {k: generate_uid() for k in ("A", "B", "C")}
    series = {k: generate_uid() for k in ("A1", "B1", "C1", "C2")}
    files = {
        "A1": patient_study(3, study_uid=uids["A"], series_uid=series["A1"], patient_id="P1",
                            name="Doe^John"),
        "B1": patient_study(2, study_uid=uids["B"], series_uid=series["B1"], patient_id="P1",
                            name="Doe^Jon"),
        "C1": patient_study(2, study_uid=uids["C"], series_uid=series["C1"], patient_id="P2",
                         name="Roe^Ann", accession="ACC-2"),
        "C2": patient_study(1, study_uid=uids["C"], series_uid=series["C2"], patient_id="P3",
                         name="Poe^Eve", accession="ACC-3"),
    }
    for key in ("A1", "B1", "C1", "C2"):
        ingest(batch_id, files[key])
    return batch_id, uids, series, files


def studies(client, headers, batch_id):
    response = client.get(f"/api/v1/batches/{batch_id}/studies", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def instance_by_sop(session, data: bytes) -> Instance:
    uid = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
    session.expire_all()
    return session.query(Instance).filter_by(sop_instance_uid=uid).one()


def sent_dataset(session, store, instance) -> tuple[renditions.Rendition, pydicom.Dataset]:
    rendition = renditions.prepare(session, store, instance)
    session.commit()
    with rendition.outgoing.open() as fh:
        return rendition, pydicom.dcmread(io.BytesIO(fh.read()))


def test_problems_are_detected(client, uploader, clinic_day):
    batch_id, uids, series, _ = clinic_day
    listing = studies(client, uploader, batch_id)
    by_uid = {s["study_instance_uid"]: s for s in listing["studies"]}
    assert set(by_uid) == set(uids.values())
    assert [p["code"] for p in by_uid[uids["A"]]["problems"]] == ["split_study"]
    assert by_uid[uids["A"]]["problems"][0]["other_studies"] == [uids["B"]]
    assert [p["code"] for p in by_uid[uids["C"]]["problems"]] == ["mixed_patients"]
    mixed = by_uid[uids["C"]]["problems"][0]["series_by_patient"]
    assert mixed == {"P2": [series["C1"]], "P3": [series["C2"]]}
    assert {p["code"] for p in listing["problems"]} == {"split_study", "mixed_patients"}
    # The batch report shows them too.
    report = client.get(f"/api/v1/batches/{batch_id}", headers=uploader).get_json()
    assert len(report["problems"]) == 3


def test_move_series_into_study_and_mixed_series_into_new_study(client, uploader, clinic_day,
                                                                session, store):
    batch_id, uids, series, files = clinic_day
    original_b = files["B1"][0]
    moved = client.post(f"/api/v1/batches/{batch_id}/moves", headers=uploader, json={
        "series_instance_uids": [series["B1"]], "target_study_instance_uid": uids["A"]})
    assert moved.status_code == 200, moved.get_json()
    assert moved.get_json()["moved_instances"] == 2

    sop_c2 = pydicom.dcmread(io.BytesIO(files["C2"][0])).SOPInstanceUID
    split = client.post(f"/api/v1/batches/{batch_id}/moves", headers=uploader, json={
        "sop_instance_uids": [sop_c2], "new_study": True})
    assert split.status_code == 200, split.get_json()
    new_uid = split.get_json()["target_study_instance_uid"]
    assert new_uid not in uids.values()

    listing = studies(client, uploader, batch_id)
    assert listing["problems"] == []
    by_uid = {s["study_instance_uid"]: s for s in listing["studies"]}
    assert set(by_uid) == {uids["A"], uids["C"], new_uid}
    assert [s["moved_in"] for s in by_uid[uids["A"]]["series"]] == [False, True]
    assert by_uid[new_uid]["patient_ids"] == ["P3"]

    # What goes out: the moved series under study A, with A's patient and study attributes.
    first_a = pydicom.dcmread(io.BytesIO(files["A1"][0]))
    instance = instance_by_sop(session, original_b)
    rendition, sent = sent_dataset(session, store, instance)
    assert sent.StudyInstanceUID == uids["A"]
    assert sent.SeriesInstanceUID == series["B1"]  # moved whole: keeps its series UID
    assert str(sent.PatientName) == "Doe^John"
    assert sent.StudyID == first_a.StudyID
    assert sent.PixelData == pydicom.dcmread(io.BytesIO(original_b)).PixelData
    assert rendition.object_key.startswith(instance.object_key.rsplit("/", 1)[0] + "/renditions/")
    assert rendition.sha256 != instance.sha256
    with store.open(instance.object_key) as fh:
        assert fh.read() == original_b  # the stored original never changes

    # Retried: the same object, not a second one.
    again = renditions.prepare(session, store, instance)
    assert again.object_key == rendition.object_key
    assert session.query(InstanceRendition).filter_by(instance_id=instance.id).count() == 1

    # The new study's only instance is its own first instance: new UID, own patient.
    c2 = instance_by_sop(session, files["C2"][0])
    _, sent_c2 = sent_dataset(session, store, c2)
    assert sent_c2.StudyInstanceUID == new_uid
    assert str(sent_c2.PatientName) == "Poe^Eve"

    # Untouched instances go out as they came.
    a1 = instance_by_sop(session, files["A1"][0])
    assert renditions.prepare(session, store, a1).object_key == a1.object_key

    changes = client.get(f"/api/v1/batches/{batch_id}/changes", headers=uploader).get_json()["changes"]
    assert [c["kind"] for c in changes] == ["move", "move"]
    assert changes[0]["detail"]["series"][0]["from_study"] == uids["B"]
    assert changes[1]["detail"]["new_study"] is True


def test_moving_part_of_a_series_gives_it_a_new_series_uid(client, uploader, clinic_day, session, store):
    batch_id, uids, series, files = clinic_day
    sop = pydicom.dcmread(io.BytesIO(files["A1"][0])).SOPInstanceUID
    moved = client.post(f"/api/v1/batches/{batch_id}/moves", headers=uploader,
                        json={"sop_instance_uids": [sop], "target_study_instance_uid": uids["C"]})
    assert moved.status_code == 200
    _, sent = sent_dataset(session, store, instance_by_sop(session, files["A1"][0]))
    assert sent.StudyInstanceUID == uids["C"]
    assert sent.SeriesInstanceUID not in series.values()
    assert str(sent.PatientName) == "Roe^Ann"  # study C's first instance


def test_override_and_template_reach_the_rendition_and_moved_instances_follow(
        client, uploader, clinic_day, session, store):
    batch_id, uids, series, files = clinic_day
    patched = client.patch(f"/api/v1/batches/{batch_id}/patients/P1", headers=uploader,
                           json={"PatientName": "Doe^John^Q", "PatientBirthDate": "19700101"})
    assert patched.status_code == 200, patched.get_json()
    assert patched.get_json()["override"] == {"PatientName": "Doe^John^Q", "PatientBirthDate": "19700101"}
    removed = client.patch(f"/api/v1/batches/{batch_id}/patients/P1", headers=uploader,
                           json={"PatientBirthDate": None})
    assert removed.get_json()["override"] == {"PatientName": "Doe^John^Q"}
    patients = client.get(f"/api/v1/batches/{batch_id}/patients", headers=uploader).get_json()["patients"]
    assert {p["patient_id"]: p["instances"] for p in patients} == {"P1": 5, "P2": 2, "P3": 1}

    client.post(f"/api/v1/batches/{batch_id}/moves", headers=uploader, json={
        "series_instance_uids": [series["C2"]], "target_study_instance_uid": uids["A"]})
    _, a1 = sent_dataset(session, store, instance_by_sop(session, files["A1"][0]))
    assert str(a1.PatientName) == "Doe^John^Q"
    # P3's series now belongs to study A: it takes P1's (overridden) identity.
    _, c2 = sent_dataset(session, store, instance_by_sop(session, files["C2"][0]))
    assert str(c2.PatientName) == "Doe^John^Q" and c2.PatientID == "P1"
    assert c2.AccessionNumber == "ACC-1"
    _, c1 = sent_dataset(session, store, instance_by_sop(session, files["C1"][0]))
    assert str(c1.PatientName) == "Roe^Ann"

    log = client.get(f"/api/v1/batches/{batch_id}", headers=uploader).get_json()["changes"]
    assert [(c["kind"], c["subject"]) for c in log][:2] == [("override", "P1"), ("override", "P1")]
    assert log[1]["detail"] == {"set": {}, "removed": ["PatientBirthDate"]}

    # The audit trail names keywords and counts, never the patient.
    from pipeline.models import AuditEvent

    session.expire_all()
    events = session.query(AuditEvent).filter(AuditEvent.action.in_(
        ["batch.override_changed", "batch.instances_moved"])).order_by(AuditEvent.id).all()
    assert [e.action for e in events] == ["batch.override_changed"] * 2 + ["batch.instances_moved"]
    assert "P1" not in repr([e.detail for e in events]) and "Doe" not in repr([e.detail for e in events])


def test_edits_are_refused_once_deliveries_started(client, uploader, clinic_day, session):
    batch_id, uids, series, files = clinic_day
    destination = Destination(name="pacs", kind="folder", options={"path": "/tmp/x"})
    session.add(destination)
    session.flush()
    b1 = instance_by_sop(session, files["B1"][0])
    session.add(Delivery(instance_id=b1.id, destination_id=destination.id, study_id=b1.study_id,
                         batch_id=batch_id, state=DeliveryState.DELIVERED, attempts=1))
    session.commit()
    moved = client.post(f"/api/v1/batches/{batch_id}/moves", headers=uploader, json={
        "series_instance_uids": [series["B1"]], "target_study_instance_uid": uids["A"]})
    assert moved.status_code == 409
    assert "started going to the PACS" in moved.get_json()["error"]["message"]
    patched = client.patch(f"/api/v1/batches/{batch_id}/patients/P1", headers=uploader,
                           json={"PatientName": "X^Y"})
    assert patched.status_code == 409
    # Another patient is still free to fix.
    assert client.patch(f"/api/v1/batches/{batch_id}/patients/P2", headers=uploader,
                        json={"PatientName": "X^Y"}).status_code == 200
    assert studies(client, uploader, batch_id)["studies"][1]["deliveries_started"] is True


def test_pending_deliveries_follow_the_move(client, uploader, clinic_day, session, enqueued, monkeypatch):
    from workers import chains

    sent: list = []
    monkeypatch.setattr(chains, "enqueue_forwarding", lambda pairs: sent.extend(pairs) or len(pairs))
    batch_id, uids, series, files = clinic_day
    destination = Destination(name="pacs", kind="folder", options={"path": "/tmp/x"})
    session.add(destination)
    session.flush()
    b1 = instance_by_sop(session, files["B1"][0])
    session.add(Delivery(instance_id=b1.id, destination_id=destination.id, study_id=b1.study_id,
                         batch_id=batch_id))
    session.commit()
    moved = client.post(f"/api/v1/batches/{batch_id}/moves", headers=uploader, json={
        "series_instance_uids": [series["B1"]], "target_study_instance_uid": uids["A"]})
    assert moved.status_code == 200
    session.expire_all()
    delivery = session.query(Delivery).one()
    target_id = session.get(Instance, b1.id).study_id
    assert delivery.study_id == target_id
    assert sent == [(target_id, destination.id)]


@pytest.mark.parametrize("body, status", [
    ({}, 400),
    ({"series_instance_uids": ["1.2.3"]}, 400),  # no target
    ({"series_instance_uids": ["1.2.3"], "new_study": True, "target_study_instance_uid": "1.2"}, 400),
    ({"series_instance_uids": "1.2.3", "new_study": True}, 400),
    ({"series_instance_uids": ["not a uid"], "new_study": True}, 400),
    ({"series_instance_uids": ["1.2.3"], "new_study": True}, 404),
    ({"sop_instance_uids": ["1.2.3"], "new_study": True}, 404),
    ({"series_instance_uids": ["1.2.3"], "new_study": True, "colour": 1}, 400),
])
def test_bad_moves(client, uploader, clinic_day, body, status):
    batch_id, *_ = clinic_day
    response = client.post(f"/api/v1/batches/{batch_id}/moves", headers=uploader, json=body)
    assert response.status_code == status, response.get_json()
    assert response.get_json()["error"]["status"] == status


def test_move_into_unknown_or_same_study(client, uploader, clinic_day):
    batch_id, uids, series, _ = clinic_day
    unknown = client.post(f"/api/v1/batches/{batch_id}/moves", headers=uploader, json={
        "series_instance_uids": [series["B1"]], "target_study_instance_uid": "1.2.3.4"})
    assert unknown.status_code == 404
    for not_a_uid, status in (("abc", 404), ("1.2%0A", 404), ("1" * 65, 404), ("1.2%00", 400)):
        assert client.get(f"/api/v1/batches/{batch_id}/series/{not_a_uid}/instances",
                          headers=uploader).status_code == status  # 400: the app's NUL guard
    same = client.post(f"/api/v1/batches/{batch_id}/moves", headers=uploader, json={
        "series_instance_uids": [series["B1"]], "target_study_instance_uid": uids["B"]})
    assert same.status_code == 400


def test_roles_and_facilities(client, make_token, clinic_day):
    batch_id, uids, series, _ = clinic_day
    qa = {"Authorization": f"Bearer {make_token('Clinic A', 'qa_manager')}"}
    other = {"Authorization": f"Bearer {make_token('Clinic B', 'uploader')}"}
    move = {"series_instance_uids": [series["B1"]], "target_study_instance_uid": uids["A"]}
    assert client.get(f"/api/v1/batches/{batch_id}/studies", headers=qa).status_code == 200
    assert client.get(f"/api/v1/batches/{batch_id}/changes", headers=qa).status_code == 200
    assert client.post(f"/api/v1/batches/{batch_id}/moves", headers=qa, json=move).status_code == 403
    assert client.patch(f"/api/v1/batches/{batch_id}/patients/P1", headers=qa,
                        json={"PatientName": "A^B"}).status_code == 403
    for method, url in [("get", "studies"), ("get", "patients"), ("get", "changes"),
                        ("get", "patients/P1")]:
        assert getattr(client, method)(f"/api/v1/batches/{batch_id}/{url}", headers=other).status_code == 403
        assert getattr(client, method)(f"/api/v1/batches/{batch_id}/{url}").status_code == 401
    assert client.post(f"/api/v1/batches/{batch_id}/moves", headers=other, json=move).status_code == 403
    assert client.get("/api/v1/batches/999/studies", headers=qa).status_code == 404


@pytest.mark.parametrize("body, message", [
    ({"SOPInstanceUID": "1.2"}, "SOPInstanceUID"),
    ({"StudyInstanceUID": "1.2"}, "UID"),
    ({"PatientSex": "male"}, "PatientSex"),
    ({}, "no attributes"),
])
def test_bad_overrides(client, uploader, clinic_day, body, message):
    batch_id, *_ = clinic_day
    response = client.patch(f"/api/v1/batches/{batch_id}/patients/P1", headers=uploader, json=body)
    assert response.status_code == 400
    assert message in response.get_json()["error"]["message"]


def test_preload_spares_the_per_instance_origin_and_series_queries(client, uploader, clinic_day,
                                                                   session, store):
    batch_id, uids, series, _ = clinic_day
    moved = client.post(f"/api/v1/batches/{batch_id}/moves", headers=uploader, json={
        "series_instance_uids": [series["B1"]], "target_study_instance_uid": uids["A"]})
    assert moved.status_code == 200, moved.get_json()
    session.expire_all()
    instances = session.query(Instance).order_by(Instance.id).all()
    expected = [renditions.planned_edits(session, store, i) for i in instances]
    assert any(expected) and not all(expected)  # moved ones have edits, the others none
    session.close()

    instances = session.query(Instance).order_by(Instance.id).all()
    renditions.preload(session, instances)
    gc.collect()  # rows nobody references leave the identity map
    statements: list[str] = []

    def record(conn, cursor, statement, *args):  # noqa: ANN001, ANN202
        statements.append(statement)

    event.listen(session.get_bind(), "before_cursor_execute", record)
    try:
        got = [renditions.planned_edits(session, store, i) for i in instances]
    finally:
        event.remove(session.get_bind(), "before_cursor_execute", record)
    assert got == expected
    assert not [s for s in statements if "instance_origins" in s or "FROM series" in s], statements


def test_series_instances_listed_on_demand_for_single_moves(client, uploader, make_token, clinic_day):
    """The board of any session (not only the one that read the files) can list a series'
    instances and move one of them; the listing follows moves and is scoped to the facility."""
    batch_id, uids, series, files = clinic_day
    url = f"/api/v1/batches/{batch_id}/series/{series['C1']}/instances"
    listed = client.get(url, headers=uploader)
    assert listed.status_code == 200, listed.get_json()
    sops = [i["sop_instance_uid"] for i in listed.get_json()["instances"]]
    expected = [pydicom.dcmread(io.BytesIO(d), stop_before_pixels=True).SOPInstanceUID for d in files["C1"]]
    assert sorted(sops) == sorted(expected)
    assert {i["filename"] for i in listed.get_json()["instances"]} == {"f.dcm"}
    moved = client.post(f"/api/v1/batches/{batch_id}/moves", headers=uploader, json={
        "sop_instance_uids": [sops[0]], "target_study_instance_uid": uids["A"]})
    assert moved.status_code == 200, moved.get_json()
    after = client.get(url, headers=uploader).get_json()["instances"]
    assert [i["sop_instance_uid"] for i in after] == sops[1:]
    qa = {"Authorization": f"Bearer {make_token('Clinic A', 'qa_manager')}"}
    other = {"Authorization": f"Bearer {make_token('Clinic B', 'uploader')}"}
    assert client.get(url, headers=qa).status_code == 200
    assert client.get(url, headers=other).status_code == 403
    assert client.get(url).status_code == 401
    unknown = client.get(f"/api/v1/batches/{batch_id}/series/1.2.3.4/instances", headers=uploader)
    assert unknown.status_code == 404
    for not_a_uid, status in (("abc", 404), ("1.2%0A", 404), ("1" * 65, 404), ("1.2%00", 400)):
        assert client.get(f"/api/v1/batches/{batch_id}/series/{not_a_uid}/instances",
                          headers=uploader).status_code == status  # 400: the app's NUL guard
