"""Resolving from the batch, through the Flask test client on SQLite and a folder store:
conflicts in the batch report, choose / send again / release, their 409s, roles and facility
scope, the audit trail and the OpenAPI document."""

from __future__ import annotations

import hashlib
import io
import secrets
from datetime import timedelta

import pytest

from pipeline.dicom import grouping
from pipeline.models import (
    AuditEvent,
    Batch,
    Delivery,
    DeliveryState,
    Destination,
    Instance,
    Upload,
    UploadState,
    utcnow,
)
from tests.clinic_samples import patient_study, refiled


@pytest.fixture
def uploader(make_token):
    return {"Authorization": f"Bearer {make_token('Clinic A', 'uploader')}"}


@pytest.fixture
def calls(enqueued, monkeypatch):
    from workers import chains

    monkeypatch.setattr(chains, "enqueue_forwarding", lambda pairs: enqueued.append(("forward", list(pairs))))
    monkeypatch.setattr(chains, "enqueue_dispatch_if_completed",
                        lambda ids: enqueued.append(("dispatch", list(ids))))
    return enqueued


@pytest.fixture
def ingest(session, app, tmp_path):
    store = app.extensions["relaypacs"].store

    def run(batch_id: int, data: bytes, parse: bool = True) -> Upload:
        batch = session.get(Batch, batch_id)
        upload_id = secrets.token_hex(16)
        key = f"test/upload-{upload_id}/original.dcm"
        store.put_stream(key, io.BytesIO(data))
        upload = Upload(id=upload_id, batch_id=batch.id, facility_id=batch.facility_id,
                        user_id=batch.user_id, filename=f"{upload_id[:6]}.dcm", length=len(data),
                        offset=len(data), state=UploadState.ASSEMBLED, object_key=key,
                        sha256=hashlib.sha256(data).hexdigest(),
                        expires_at=utcnow() + timedelta(days=1))
        session.add(upload)
        session.flush()
        if parse:
            grouping.parse_and_group(session, store, upload, tmp_path / "spool")
        session.commit()
        return upload

    return run


def new_batch(client, headers) -> int:
    return client.post("/api/v1/batches", json={"label": "t"}, headers=headers).get_json()["id"]


@pytest.fixture
def resend_held(client, uploader, ingest, session):
    """Batch 1's version reached the PACS; batch 2 re-sends it under another patient."""
    (wrong,) = patient_study(1, patient_id="P-WRONG", name="Wrong^Patient")
    pacs = Destination(name="pacs", kind="folder", options={"path": "/tmp/x"})
    session.add(pacs)
    session.commit()
    first_batch = new_batch(client, uploader)
    first = ingest(first_batch, wrong)
    old = session.query(Instance).filter_by(upload_id=first.id).one()
    session.add(Delivery(instance_id=old.id, destination_id=pacs.id, study_id=old.study_id,
                         batch_id=first_batch, state=DeliveryState.DELIVERED, attempts=1))
    session.commit()
    second_batch = new_batch(client, uploader)
    second = ingest(second_batch, refiled(wrong, patient_id="P-RIGHT", name="Right^Patient"))
    return first_batch, first, second_batch, second


def report(client, headers, batch_id) -> dict:
    response = client.get(f"/api/v1/batches/{batch_id}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_the_batch_report_shows_the_conflict_and_what_it_waits_for(client, uploader, resend_held):
    first_batch, first, second_batch, second = resend_held
    body = report(client, uploader, second_batch)
    (conflict,) = body["conflicts"]
    assert conflict["kind"] == "resend" and conflict["state"] == "open"
    assert conflict["chosen_upload_id"] is None
    by_upload = {v["upload_id"]: v for v in conflict["versions"]}
    assert by_upload[first.id]["deliveries"] == {"delivered": ["pacs"]}
    assert by_upload[first.id]["patient_id"] == "P-WRONG"
    assert by_upload[second.id]["patient_id"] == "P-RIGHT"
    assert {v["state"] for v in conflict["versions"]} == {"held"}
    assert body["waiting"]["conflicts_open"] == 1
    assert [f["version"] for f in body["files"]] == ["held"]
    # The old batch shows the same conflict.
    assert [c["id"] for c in report(client, uploader, first_batch)["conflicts"]] == [conflict["id"]]


def test_choose_then_send_again(client, uploader, resend_held, session, calls):
    first_batch, first, second_batch, second = resend_held
    conflict_id = report(client, uploader, second_batch)["conflicts"][0]["id"]
    base = f"/api/v1/batches/{second_batch}/conflicts/{conflict_id}"

    # Nothing chosen yet: nothing to send again.
    assert client.post(f"{base}/send", headers=uploader).status_code == 409
    response = client.post(f"{base}/choose", json={"upload_id": second.id}, headers=uploader)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["state"] == "resolved"
    assert response.get_json()["chosen_upload_id"] == second.id
    assert ("dispatch", sorted({first_batch, second_batch})) in calls
    assert client.post(f"{base}/choose", json={"upload_id": second.id}, headers=uploader).status_code == 409
    assert client.post(f"{base}/choose", json={"upload_id": "ab" * 16}, headers=uploader).status_code == 404
    assert client.post(f"{base}/choose", json={"upload": 1}, headers=uploader).status_code == 400

    # The chosen version went out; the PACS lost it; a person sends it again.
    chosen = session.query(Instance).filter_by(upload_id=second.id).one()
    pacs = session.query(Destination).one()
    session.add(Delivery(instance_id=chosen.id, destination_id=pacs.id, study_id=chosen.study_id,
                         batch_id=second_batch, state=DeliveryState.DELIVERED, attempts=1))
    session.commit()
    response = client.post(f"{base}/send", headers=uploader)
    assert response.status_code == 200, response.get_json()
    assert ("forward", [(chosen.study_id, pacs.id)]) in calls
    session.expire_all()
    assert session.query(Delivery).filter_by(instance_id=chosen.id).one().state == DeliveryState.PENDING
    assert client.post(f"{base}/send", headers=uploader).status_code == 409  # already on its way

    actions = [a for (a,) in session.query(AuditEvent.action).order_by(AuditEvent.id)]
    assert {"instance.versions_decided", "instance.version_chosen",
            "instance.version_sent_again"} <= set(actions)


def test_release_a_quarantined_file(client, uploader, ingest, session, calls):
    batch_id = new_batch(client, uploader)
    bad = ingest(batch_id, b"not dicom at all" * 20)
    assert session.get(Upload, bad.id).state == UploadState.QUARANTINED
    (good,) = patient_study(1, patient_id="P1", name="Doe^Ann")
    parsed = ingest(batch_id, good)
    url = f"/api/v1/batches/{batch_id}/files/{{}}/release"
    assert client.post(url.format(parsed.id), headers=uploader).status_code == 409
    assert client.post(url.format("ff" * 16), headers=uploader).status_code == 404
    response = client.post(url.format(bad.id), headers=uploader)
    assert response.status_code == 200, response.get_json()
    assert ("parse", bad.id) in calls
    session.expire_all()
    assert session.get(Upload, bad.id).state == UploadState.ASSEMBLED
    assert session.query(AuditEvent).filter_by(action="upload.released").count() == 1


def test_roles_and_facilities(client, make_token, resend_held):
    _, _, second_batch, second = resend_held
    qa = {"Authorization": f"Bearer {make_token('Clinic A', 'qa_manager')}"}
    other = {"Authorization": f"Bearer {make_token('Clinic B', 'uploader')}"}
    conflict_id = report(client, qa, second_batch)["conflicts"][0]["id"]
    base = f"/api/v1/batches/{second_batch}/conflicts/{conflict_id}"
    assert client.get(f"/api/v1/batches/{second_batch}/conflicts", headers=qa).status_code == 200
    assert client.post(f"{base}/choose", json={"upload_id": second.id}, headers=qa).status_code == 403
    assert client.post(f"{base}/choose", json={"upload_id": second.id}, headers=other).status_code == 403
    assert client.get(f"/api/v1/batches/{second_batch}/conflicts", headers=other).status_code == 403
    # A conflict of another batch is not this batch's to resolve.
    unrelated = new_batch(client, {"Authorization": f"Bearer {make_token('Clinic A')}"})
    assert client.post(f"/api/v1/batches/{unrelated}/conflicts/{conflict_id}/send",
                       headers={"Authorization": f"Bearer {make_token('Clinic A')}"}).status_code == 404


def test_the_routes_are_in_the_openapi_document(app):
    from api.http.openapi import openapi_document

    paths = openapi_document(app)["paths"]
    base = "/api/v1/batches/{batch_id}"
    assert "get" in paths[f"{base}/conflicts"]
    choose = paths[f"{base}/conflicts/{{conflict_id}}/choose"]["post"]
    assert "409" in choose["responses"] and "requestBody" in choose
    assert "409" in paths[f"{base}/conflicts/{{conflict_id}}/send"]["post"]["responses"]
    assert "409" in paths[f"{base}/files/{{upload_id}}/release"]["post"]["responses"]
