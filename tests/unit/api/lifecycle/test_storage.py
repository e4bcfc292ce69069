"""The storage API (api/lifecycle/storage.py): the cost report for admins, restore requests
validated, and instance downloads through the restore gate after a tiering run."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from pipeline.delivery import forwarding
from pipeline.lifecycle import restore, tiering
from pipeline.models import RestoreRequest, StoredObject, StoredObjectKind
from tests.unit.lifecycle.helpers import KIB, days, run_options, seed


def test_report_api_is_for_admins_and_restore_requests_are_validated(client, make_token, session, store,
                                                                     clinic, tmp_path):
    assert client.get("/api/v1/storage/report").status_code == 401
    uploader = {"Authorization": f"Bearer {make_token('Lifecycle Clinic', 'uploader')}"}
    admin = {"Authorization": f"Bearer {make_token('Lifecycle Clinic', 'admin')}"}
    assert client.get("/api/v1/storage/report", headers=uploader).status_code == 403
    seed(session, store, clinic, days(0), [300 * KIB, 5 * KIB])
    tiering.run(session, store, run_options(tmp_path), days(100), checkpoint=session.commit)
    body = client.get("/api/v1/storage/report", headers=admin,
                      query_string={"facility": "Lifecycle Clinic"}).get_json()
    bundle = session.scalar(select(StoredObject).where(StoredObject.kind == StoredObjectKind.BUNDLE))
    assert set(body["by_class"]) == {"GLACIER_IR"}
    assert body["by_class"]["GLACIER_IR"]["objects"] == 2
    assert body["by_class"]["GLACIER_IR"]["bytes"] == 300 * KIB + bundle.size
    assert body["all_standard"]["bytes"] == 305 * KIB
    assert body["policy"].startswith("STANDARD 0-30 d")
    # Fees count the 30 days before the report's clock (now): these moves are long past.
    assert body["fees"]["transition_requests"] == {} and body["fees"]["cold_reads"] > 0
    assert body["monthly_cost"] == pytest.approx(body["total"]["monthly_cost"] + body["fees"]["total"],
                                                 abs=1e-5)
    assert client.get("/api/v1/storage/report", headers=admin,
                      query_string={"facility": "Nowhere"}).status_code == 404
    for bad in ({}, {"study_id": 1, "instance_id": 1}, {"study_id": 0}, {"study_id": 1, "purpose": "x"},
                {"study_id": 1, "colour": "red"}):
        answer = client.post("/api/v1/storage/restores", json=bad, headers=admin)
        assert answer.status_code == 400, (bad, answer.get_json())
    assert client.post("/api/v1/storage/restores", json={"study_id": 1}, headers=uploader).status_code == 403


def test_instance_download_goes_through_the_restore_gate(client, make_token, session, store, clinic,
                                                         tmp_path, enqueued):
    seeded = seed(session, store, clinic, days(0), [300 * KIB, 5 * KIB])
    big, small = seeded.instance_ids
    manager = {"Authorization": f"Bearer {make_token('Lifecycle Clinic', 'qa_manager')}"}
    other = {"Authorization": f"Bearer {make_token('Other Clinic', 'qa_manager')}"}
    uploader = {"Authorization": f"Bearer {make_token('Lifecycle Clinic', 'uploader')}"}
    url = f"/api/v1/storage/instances/{small}/file"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=uploader).status_code == 403
    assert client.get(url, headers=other).status_code == 403
    assert client.get("/api/v1/storage/instances/999999/file", headers=manager).status_code == 404
    answer = client.get(url, headers=manager)
    assert answer.status_code == 200 and answer.data == seeded.data[seeded.keys[1]]
    assert answer.mimetype == "application/dicom"

    # 100 days on: the big one is in GLACIER_IR (read as it is), the small one in a bundle.
    tiering.run(session, store, run_options(tmp_path), days(100), checkpoint=session.commit)
    answer = client.get(f"/api/v1/storage/instances/{big}/file", headers=manager)
    assert answer.status_code == 200 and answer.data == seeded.data[seeded.keys[0]]
    answer = client.get(url, headers=manager)
    assert answer.status_code == 202, answer.data
    body = answer.get_json()
    assert body["state"] == "restoring" and body["restores"][0]["purpose"] == "read"
    assert enqueued == [("restores", None)]  # started now, not at the next beat poll
    again = client.get(url, headers=manager).get_json()
    assert again["restores"][0]["id"] == body["restores"][0]["id"]  # one request, not two
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(RestoreRequest)) == 1
    # Once the storage worker has put it back, the download serves the original bytes.
    restore.process(session, store, replay=forwarding.replay, days=7, checkpoint=session.commit)
    answer = client.get(url, headers=manager)
    assert answer.status_code == 200 and answer.data == seeded.data[seeded.keys[1]]
