"""The study board's preview of a move: ``dry_run: true`` on the moves route answers what the
moved instances would go out with (the forwarding rules, computed by the server) and
changes nothing."""

from __future__ import annotations

import io

import pydicom

from pipeline.models import AuditEvent, MetadataChange
from tests.unit.editing.test_study_organisation import (  # noqa: F401 - fixtures
    clinic_day,
    ingest,
    instance_by_sop,
    sent_dataset,
    store,
    studies,
    uploader,
)


def test_dry_run_previews_the_target_attributes_and_changes_nothing(client, uploader, clinic_day,  # noqa: F811
                                                                    session, store):  # noqa: F811
    batch_id, uids, series, files = clinic_day
    before = studies(client, uploader, batch_id)
    body = {"series_instance_uids": [series["B1"]], "target_study_instance_uid": uids["A"]}
    preview = client.post(f"/api/v1/batches/{batch_id}/moves", headers=uploader,
                          json={**body, "dry_run": True})
    assert preview.status_code == 200, preview.get_json()
    answer = preview.get_json()
    first_a = pydicom.dcmread(io.BytesIO(files["A1"][0]))
    assert answer["dry_run"] is True and answer["moved_instances"] == 2
    assert answer["attributes"]["PatientName"] == "Doe^John"
    assert answer["attributes"]["StudyInstanceUID"] == uids["A"]
    assert answer["attributes"]["StudyID"] == str(first_a.StudyID)
    # Nothing moved, nothing recorded.
    assert studies(client, uploader, batch_id) == before
    session.expire_all()
    assert session.query(MetadataChange).filter_by(batch_id=batch_id).count() == 0
    assert session.query(AuditEvent).filter_by(action="batch.instances_moved").count() == 0
    # The real move then sends exactly what the preview said.
    assert client.post(f"/api/v1/batches/{batch_id}/moves", headers=uploader, json=body).status_code == 200
    _, sent = sent_dataset(session, store, instance_by_sop(session, files["B1"][0]))
    for keyword, value in answer["attributes"].items():
        if value is None:  # the target's first instance has none: removed
            assert keyword not in sent, keyword
        else:
            assert str(sent.data_element(keyword).value) == value, keyword


def test_dry_run_into_a_new_study_and_its_errors(client, uploader, clinic_day):  # noqa: F811
    batch_id, uids, series, files = clinic_day
    preview = client.post(f"/api/v1/batches/{batch_id}/moves", headers=uploader, json={
        "series_instance_uids": [series["C2"]], "new_study": True, "dry_run": True}).get_json()
    assert preview["new_study"] is True and preview["target_study_instance_uid"] is None
    assert preview["attributes"]["PatientName"] == "Poe^Eve"
    bad = client.post(f"/api/v1/batches/{batch_id}/moves", headers=uploader, json={
        "series_instance_uids": [series["C2"]], "dry_run": True})
    assert bad.status_code == 400
    assert bad.get_json()["error"]["message"] == "give either target_study_instance_uid or new_study: true"
    assert client.post(f"/api/v1/batches/{batch_id}/moves", headers=uploader, json={
        "series_instance_uids": [series["C2"]], "new_study": True, "dry_run": "yes"}).status_code == 400
