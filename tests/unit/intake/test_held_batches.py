"""Batches opened from the upload screen are held: neither completion nor the quiet period
sends them until a person confirms them (audited); other batches keep the quiet period."""

from __future__ import annotations

from datetime import timedelta

from pipeline.intake import batches
from pipeline.models import AuditEvent, Batch, BatchState, utcnow


def _open(client, headers, **body) -> int:
    answer = client.post("/api/v1/batches", json=body, headers=headers)
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()["id"]


def test_held_batch_waits_for_confirmation_and_others_keep_the_quiet_period(
        client, make_token, session, enqueued):
    headers = {"Authorization": f"Bearer {make_token('Clinic A', 'uploader')}"}
    held_id = _open(client, headers, label="screen", hold=True)
    plain_id = _open(client, headers, label="cli")
    assert client.get(f"/api/v1/batches/{held_id}", headers=headers).get_json()["held"] is True
    past = utcnow() - timedelta(hours=1)
    for batch_id in (held_id, plain_id):
        session.get(Batch, batch_id).last_activity_at = past
    session.commit()
    quiet = timedelta(seconds=60)
    assert [b.id for b in batches.quiet_open_batches(session, quiet)] == [plain_id]

    # Completed but held: the dispatch does not claim it, the quiet scan does not see it.
    assert client.post(f"/api/v1/batches/{held_id}/complete", headers=headers).status_code == 200
    session.expire_all()
    session.get(Batch, held_id).last_activity_at = past
    session.commit()
    assert not batches.claim_completed_batch(session, held_id)
    assert batches.quiet_completed_batches(session, quiet) == []
    report = client.get(f"/api/v1/batches/{held_id}", headers=headers).get_json()
    assert report["waiting"]["confirmation"] is True

    confirmed = client.post(f"/api/v1/batches/{held_id}/confirm", headers=headers)
    assert confirmed.status_code == 200, confirmed.get_json()
    assert confirmed.get_json()["held"] is False and confirmed.get_json()["confirmed_at"]
    assert ("batch", held_id) in enqueued
    session.expire_all()
    assert session.get(Batch, held_id).state == BatchState.COMPLETED
    assert batches.claim_completed_batch(session, held_id)  # no upload: settled at once
    assert session.query(AuditEvent).filter_by(action="batch.confirmed",
                                               target=f"batch:{held_id}").count() == 1
    # Again: harmless; an unheld batch: 409 with the reason.
    assert client.post(f"/api/v1/batches/{held_id}/confirm", headers=headers).status_code == 200
    refused = client.post(f"/api/v1/batches/{plain_id}/confirm", headers=headers)
    assert refused.status_code == 409
    assert "not held" in refused.get_json()["error"]["message"]


def test_confirming_an_open_held_batch_completes_it_and_other_facilities_cannot(client, make_token, session,
                                                                                  enqueued):
    headers = {"Authorization": f"Bearer {make_token('Clinic A', 'uploader')}"}
    other = {"Authorization": f"Bearer {make_token('Clinic B', 'uploader')}"}
    qa = {"Authorization": f"Bearer {make_token('Clinic A', 'qa_manager')}"}
    held_id = _open(client, headers, hold=True)
    assert client.post(f"/api/v1/batches/{held_id}/confirm", headers=other).status_code == 403
    assert client.post(f"/api/v1/batches/{held_id}/confirm", headers=qa).status_code == 403
    assert client.post(f"/api/v1/batches/{held_id}/confirm", headers=headers).status_code == 200
    session.expire_all()
    batch = session.get(Batch, held_id)
    assert batch.state == BatchState.COMPLETED and batch.completed_at is not None
    assert client.post("/api/v1/batches", json={"hold": "maybe"}, headers=headers).status_code == 400
