"""The teaching file's HTTP side on SQLite and a folder store: adding a case from a delivered
study, the job that fills it (called in-process here; the integration test runs the worker),
access by role and facility, publish/withdraw, search, unknown-case mode, held pixels,
the zip with its DICOMDIR, the admin-only audited mapping."""

from __future__ import annotations

import io
import zipfile

import pydicom
import pytest
from sqlalchemy import select

from pipeline.models import AuditEvent, TeachingInstance
from pipeline.teaching import cases, preparation
from tests import teaching_seed

SECRET = b"api-test-secret"


@pytest.fixture
def world(app, session):
    store = app.extensions["relaypacs"].store
    publisher_b = teaching_seed.user(session, "Clinic B", "teaching_publisher")
    resident_a = teaching_seed.user(session, "Clinic A", "teaching")
    uploader_a = teaching_seed.user(session, "Clinic A", "uploader")
    admin = teaching_seed.user(session, "Clinic A", "admin")
    study = teaching_seed.delivered_study(session, store, facility_id=publisher_b.facility_id,
                                          user_id=publisher_b.id, with_us=True)
    session.commit()
    return {"store": store, "publisher_b": publisher_b, "resident_a": resident_a,
            "uploader_a": uploader_a, "admin": admin, "study": study}


def _fill(app, case_id):
    factory = app.extensions["relaypacs"].session_factory
    with factory() as s:
        outcome = preparation.prepare_case(s, app.extensions["relaypacs"].store, case_id,
                                           secret=SECRET, uid_root="2.25", checkpoint=s.commit)
        s.commit()
    return outcome


def _add(client, who, study_id, **extra):
    body = {"study_id": study_id, "title": "Right upper lobe mass", "diagnosis": "Hamartoma",
            "findings": "popcorn calcification", "modality": "CT", "body_part": "chest",
            "difficulty": "intermediate", "keywords": ["lung", "Nodule"], **extra}
    return client.post("/api/v1/teaching/cases", json=body, headers=who.headers)


def test_case_from_a_delivered_study_is_filled_published_found_and_downloaded(app, client, world):
    pub, resident = world["publisher_b"], world["resident_a"]
    answer = _add(client, pub, world["study"].study_id, history="seen on 12/03/2024, MRN 12345678")
    assert answer.status_code == 202, answer.json
    case_id = answer.json["id"]
    looks = {w["looks_like"] for w in answer.json["warnings"]}
    assert {"date", "identifier"} <= looks
    assert "study_id" not in answer.json
    # A draft: the resident of another facility does not see it.
    assert client.get(f"/api/v1/teaching/cases/{case_id}", headers=resident.headers).status_code == 404
    # Not ready: no publishing yet.
    assert client.post(f"/api/v1/teaching/cases/{case_id}/publish", headers=pub.headers).status_code == 409

    outcome = _fill(app, case_id)
    assert (outcome.copied, outcome.state) == (4, "ready")
    again = _fill(app, case_id)  # idempotent: nothing left to copy
    assert again.copied == 0

    published = client.post(f"/api/v1/teaching/cases/{case_id}/publish", headers=pub.headers)
    assert published.status_code == 200 and published.json["state"] == "published"
    seen = client.get(f"/api/v1/teaching/cases/{case_id}", headers=resident.headers).json
    assert seen["diagnosis"] == "Hamartoma" and "author_facility" not in seen
    assert "hold_reason" not in str(seen)
    # The US instance is held: not in the case a resident sees.
    assert {i["modality"] for i in seen["instances"]} == {"CT"}
    original_uids = set(world["study"].sop_uids) | {world["study"].study_uid}
    assert not original_uids & {i["sop_instance_uid"] for i in seen["instances"]}
    assert not {"study_id", "source", "facility_id", "patient_id"} & set(seen)
    unknown = client.get(f"/api/v1/teaching/cases/{case_id}?unknown=1", headers=resident.headers).json
    assert "diagnosis" not in unknown and "discussion" not in unknown

    found = client.get("/api/v1/teaching/cases?q=calcification&modality=ct", headers=resident.headers).json
    assert [c["id"] for c in found["cases"]] == [case_id] and found["total"] == 1
    assert {"value": "CHEST", "count": 1} in found["facets"]["body_part"]
    assert client.get("/api/v1/teaching/cases?q=melanoma", headers=resident.headers).json["total"] == 0
    hidden = client.get("/api/v1/teaching/cases?unknown=1", headers=resident.headers).json
    assert "diagnosis" not in hidden["cases"][0] and "diagnosis" not in hidden["facets"]

    png = client.get(f"/api/v1/teaching/cases/{case_id}/key-image", headers=resident.headers)
    assert png.status_code == 200 and png.data.startswith(b"\x89PNG")
    zipped = client.get(f"/api/v1/teaching/cases/{case_id}/download", headers=resident.headers)
    assert zipped.status_code == 200
    with zipfile.ZipFile(io.BytesIO(zipped.data)) as archive:
        names = archive.namelist()
        dicomdir = pydicom.dcmread(io.BytesIO(archive.read("DICOMDIR")))
        listed = {r.ReferencedSOPInstanceUIDInFile for r in dicomdir.DirectoryRecordSequence
                  if "ReferencedSOPInstanceUIDInFile" in r}
        files = [pydicom.dcmread(io.BytesIO(archive.read(n))) for n in names if n != "DICOMDIR"]
    assert len(files) == 3 and listed == {f.SOPInstanceUID for f in files}
    assert all(f.PatientIdentityRemoved == "YES" and f.PatientName == "" for f in files)


def test_held_ultrasound_waits_for_a_person_and_mask_releases_it(app, client, world, session):
    pub = world["publisher_b"]
    case_id = _add(client, pub, world["study"].study_id).json["id"]
    _fill(app, case_id)
    held = session.scalars(select(TeachingInstance).where(
        TeachingInstance.case_id == case_id, TeachingInstance.state == "held")).all()
    assert len(held) == 1 and "US" in held[0].hold_reason
    url = f"/api/v1/teaching/cases/{case_id}/instances/{held[0].id}"
    assert client.post(f"{url}/confirm", headers=world["resident_a"].headers).status_code == 404
    bad = client.post(f"{url}/mask", json={"regions": [[0, 0, 0, 5]]}, headers=pub.headers)
    assert bad.status_code == 400
    masking = client.post(f"{url}/mask", json={"regions": [[0, 0, 30, 12]]}, headers=pub.headers)
    assert masking.status_code == 202
    # What the teaching.mask_instance task runs:
    with app.extensions["relaypacs"].session_factory() as s:
        row = s.get(TeachingInstance, held[0].id)
        preparation.mask(s, world["store"], row, [preparation.pixels.Rect(0, 0, 30, 12)])
        s.commit()
        row = s.get(TeachingInstance, held[0].id)
        masked = pydicom.dcmread(world["store"].open(row.object_key))
    assert row.state == "ready" and masked.BurnedInAnnotation == "NO"
    assert (masked.pixel_array[:12, :30] == masked.pixel_array.min()).all()
    assert "113101" in [c.CodeValue for c in masked.DeidentificationMethodCodeSequence]


def test_roles_facilities_and_the_admin_only_audited_mapping(app, client, world, session):
    pub, resident, admin = world["publisher_b"], world["resident_a"], world["admin"]
    # Residents read; they do not add cases, nor from another facility's study.
    assert _add(client, resident, world["study"].study_id).status_code == 403
    assert _add(client, world["uploader_a"], world["study"].study_id).status_code == 403
    other_pub = teaching_seed.user(session, "Clinic A", "teaching_publisher")
    session.commit()
    assert _add(client, other_pub, world["study"].study_id).status_code == 403
    assert _add(client, pub, 999999).status_code == 404
    assert client.post("/api/v1/teaching/cases", json={"title": "x"}, headers=pub.headers).status_code == 400
    case_id = _add(client, pub, world["study"].study_id, show_author_facility=True).json["id"]
    _fill(app, case_id)
    client.post(f"/api/v1/teaching/cases/{case_id}/publish", headers=pub.headers)
    assert client.get(f"/api/v1/teaching/cases/{case_id}", headers=resident.headers).json[
        "author_facility"] == "Clinic B"
    withdraw_url = f"/api/v1/teaching/cases/{case_id}/withdraw"
    assert client.post(withdraw_url, headers=resident.headers).status_code == 403
    assert client.patch(f"/api/v1/teaching/cases/{case_id}", json={"title": "x"},
                        headers=resident.headers).status_code == 403
    assert client.get(f"/api/v1/teaching/cases/{case_id}/mapping", headers=pub.headers).status_code == 403
    mapping_url = f"/api/v1/teaching/cases/{case_id}/mapping"
    assert client.get(mapping_url, headers=resident.headers).status_code == 403
    mapping = client.get(f"/api/v1/teaching/cases/{case_id}/mapping", headers=admin.headers)
    assert mapping.status_code == 200
    assert mapping.json["study_id"] == world["study"].study_id
    assert {r["original_sop_uid"] for r in mapping.json["instances"]} == set(world["study"].sop_uids)
    assert all(r["original_patient_id"] == "MRN-1" for r in mapping.json["instances"])
    reads = session.scalars(select(AuditEvent).where(AuditEvent.action == "teaching.mapping_read")).all()
    assert [e.user_id for e in reads] == [admin.id]
    withdrawn = client.post(f"/api/v1/teaching/cases/{case_id}/withdraw", headers=pub.headers)
    assert withdrawn.json["state"] == "withdrawn"
    assert client.get(f"/api/v1/teaching/cases/{case_id}", headers=resident.headers).status_code == 404


def test_free_text_warnings_flag_names_ids_and_dates_not_clinical_text():
    warnings = cases.free_text_warnings({
        "history": "Mr Jones, seen 2024-03-10",
        "findings": "3 cm mass, follow-up at 6 weeks, T2 bright",
        "discussion": "patient Smith MRN: A1234567",
    })
    flagged = {(w["field"], w["looks_like"]) for w in warnings}
    assert ("history", "name") in flagged and ("history", "date") in flagged
    assert ("discussion", "identifier") in flagged and ("discussion", "name") in flagged
    assert not [w for w in warnings if w["field"] == "findings"]


def test_a_radiologist_adds_a_case_from_a_radiology_report(app, client, world, session):
    import hashlib

    from pipeline.models import RadiologyReport, TeachingCaseSource

    radiologist = teaching_seed.user(session, "Clinic B", "radiologist")
    outsider = teaching_seed.user(session, "Clinic A", "radiologist")
    text = "FINDINGS: 2 cm nodule with popcorn calcification. Patient Smith seen 2024-03-10."
    report = RadiologyReport(
        facility_id=world["publisher_b"].facility_id, study_id=world["study"].study_id,
        study_instance_uid=world["study"].study_uid, source="manual", status="final", text=text,
        text_sha256=hashlib.sha256(text.encode()).hexdigest(), author_id=radiologist.id)
    session.add(report)
    session.commit()
    body = {"report_id": report.id, "title": "Hamartoma"}
    refused = client.post("/api/v1/teaching/cases", json=body, headers=outsider.headers)
    assert refused.status_code == 404  # another facility's report, not assigned to them
    both = client.post("/api/v1/teaching/cases", json={**body, "study_id": 1}, headers=radiologist.headers)
    assert both.status_code == 400
    added = client.post("/api/v1/teaching/cases", json=body, headers=radiologist.headers)
    assert added.status_code == 202, added.json
    assert added.json["findings"] == text
    flagged = {(w["field"], w["looks_like"]) for w in added.json["warnings"]}
    assert ("findings", "date") in flagged and ("findings", "name") in flagged
    source = session.get(TeachingCaseSource, added.json["id"])
    assert (source.report_id, source.study_id) == (report.id, world["study"].study_id)
    assert "report_id" not in added.json and "study_id" not in added.json
