"""The teaching file end to end on real services: PostgreSQL (full-text search on the
generated tsvector), the S3 byte store (moto_server), Redis, the API server and a real
``relaypacs worker -Q teaching``.

A publisher of facility B adds a case from B's delivered study; the worker copies it through
de-identification; a teaching user of facility A finds it by facet and text, reads it and
downloads its zip (pydicom opens it, the DICOMDIR lists every instance) but never reaches B's
original; the ultrasound instance with likely burned-in text stays held.
"""

from __future__ import annotations

import io
import time
import zipfile

import pydicom
import pytest
import requests

from pipeline.db.engine import make_engine, make_session_factory
from pipeline.storage import open_store
from tests import teaching_seed

pytestmark = pytest.mark.integration


def _wait_ready(url: str, headers: dict, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = requests.get(url, headers=headers, timeout=10).json()
        if body.get("preparation") in ("ready", "failed"):
            return body
        time.sleep(0.5)
    raise AssertionError(f"case not ready after {timeout}s: {body}")


def test_teaching_user_of_a_finds_b_case_but_never_b_original(gateway_env, s3, api_server, spawn_worker):
    factory = make_session_factory(make_engine(gateway_env["RELAYPACS_DATABASE_URL"]))
    store = open_store(gateway_env["RELAYPACS_STORAGE_URL"])
    with factory() as session:
        publisher = teaching_seed.user(session, "Teaching Clinic B", "teaching_publisher")
        resident = teaching_seed.user(session, "Teaching Clinic A", "teaching")
        study = teaching_seed.delivered_study(session, store, facility_id=publisher.facility_id,
                                              user_id=publisher.id, patient_id="MRN-B-77",
                                              name="Doe^Jane", ct_count=3, with_us=True)
        session.commit()
    spawn_worker(queues="teaching", concurrency=1)
    api = f"{api_server.url}/api/v1/teaching"

    added = requests.post(f"{api}/cases", headers=publisher.headers, timeout=10, json={
        "study_id": study.study_id, "title": "Pulmonary hamartoma", "diagnosis": "Hamartoma",
        "findings": "Well-circumscribed nodule with popcorn calcification",
        "modality": "CT", "body_part": "chest", "difficulty": "primary", "keywords": ["nodule"],
    })
    assert added.status_code == 202, added.text
    case_id = added.json()["id"]
    case = _wait_ready(f"{api}/cases/{case_id}", publisher.headers)
    assert case["preparation"] == "ready", case
    held = [i for i in case["instances"] if i["state"] == "held"]
    assert len(held) == 1 and held[0]["modality"] == "US" and "US" in held[0]["hold_reason"]
    assert requests.post(f"{api}/cases/{case_id}/publish", headers=publisher.headers,
                         timeout=10).status_code == 200

    # Facility A's teaching user finds it by facet and by text (PostgreSQL full-text search).
    by_facet = requests.get(f"{api}/cases", params={"modality": "CT", "difficulty": "primary"},
                            headers=resident.headers, timeout=10).json()
    assert case_id in [c["id"] for c in by_facet["cases"]]
    by_text = requests.get(f"{api}/cases", params={"q": "popcorn nodules"},
                           headers=resident.headers, timeout=10).json()
    assert [c["id"] for c in by_text["cases"]] == [case_id]
    assert requests.get(f"{api}/cases", params={"q": "glioblastoma"}, headers=resident.headers,
                        timeout=10).json()["total"] == 0

    seen = requests.get(f"{api}/cases/{case_id}", headers=resident.headers, timeout=10).json()
    assert {i["modality"] for i in seen["instances"]} == {"CT"}  # the held US is not shown
    assert "author_facility" not in seen
    assert not set(study.sop_uids) & {i["sop_instance_uid"] for i in seen["instances"]}
    # B's original is never reachable: not through the case, not through the storage API.
    for instance_id in study.instance_ids:
        original = requests.get(f"{api_server.url}/api/v1/storage/instances/{instance_id}/file",
                                headers=resident.headers, timeout=10)
        assert original.status_code == 403
    assert requests.get(f"{api}/cases/{case_id}/mapping", headers=resident.headers,
                        timeout=10).status_code == 403

    zipped = requests.get(f"{api}/cases/{case_id}/download", headers=resident.headers, timeout=30)
    assert zipped.status_code == 200
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
        dicomdir = pydicom.dcmread(io.BytesIO(archive.read("DICOMDIR")))
        files = [pydicom.dcmread(io.BytesIO(archive.read(name)))
                 for name in archive.namelist() if name != "DICOMDIR"]
    listed = {r.ReferencedSOPInstanceUIDInFile for r in dicomdir.DirectoryRecordSequence
              if "ReferencedSOPInstanceUIDInFile" in r}
    assert len(files) == 3 and listed == {f.SOPInstanceUID for f in files}
    for ds in files:
        assert ds.PatientIdentityRemoved == "YES"
        assert "Doe" not in str(ds.PatientName) and ds.PatientID != "MRN-B-77"
        assert ds.StudyInstanceUID != study.study_uid
    key_image = requests.get(f"{api}/cases/{case_id}/key-image", headers=resident.headers, timeout=10)
    assert key_image.content.startswith(b"\x89PNG")
