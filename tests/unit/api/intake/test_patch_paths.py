"""A tus PATCH takes its lease and reads the upload in one statement when all is well; every
other case still answers as before from a detailed look: another writer 423, wrong offset
409 with the server's offset, terminated 404, complete 409, another facility 403, admins of
any facility allowed."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from pipeline.models import Upload, utcnow
from tests.unit.api.intake.test_files import TUS, create, patch


def test_every_refusal_of_a_patch_answers_as_before(client, make_token, enqueued, session):
    auth = {"Authorization": f"Bearer {make_token('Clinic A')}"}
    other = {"Authorization": f"Bearer {make_token('Clinic B')}"}
    admin = {"Authorization": f"Bearer {make_token('Clinic C', 'admin')}"}
    batch_id = client.post("/api/v1/batches", json={"label": "t"}, headers=auth).get_json()["id"]
    location = create(client, auth, batch_id, 10).headers["Location"]
    upload_id = location.rsplit("/", 1)[1]

    assert patch(client, other, location, 0, b"abc").status_code == 403
    wrong = patch(client, auth, location, 5, b"abc")
    assert wrong.status_code == 409 and wrong.get_json()["error"]["upload_offset"] == 0
    session.execute(update(Upload).where(Upload.id == upload_id).values(
        lock_token="someone", lock_expires_at=utcnow() + timedelta(seconds=60)))  # noqa: S106
    session.commit()
    assert patch(client, auth, location, 0, b"abc").status_code == 423
    session.execute(update(Upload).where(Upload.id == upload_id).values(
        lock_expires_at=utcnow() - timedelta(seconds=1)))  # an expired lease is taken over
    session.commit()
    assert patch(client, admin, location, 0, b"abc").headers["Upload-Offset"] == "3"
    assert patch(client, auth, location, 3, b"defghij").headers["Upload-Offset"] == "10"
    done = patch(client, auth, location, 10, b"k")
    assert done.status_code == 409
    assert patch(client, auth, "/api/v1/files/nosuchupload", 0, b"a").status_code == 404
    assert patch(client, auth, "/api/v1/files/no-such", 0, b"a").status_code == 404
    second = create(client, auth, batch_id, 10).headers["Location"]
    assert client.delete(second, headers={**auth, **TUS}).status_code == 204
    assert patch(client, auth, second, 0, b"a").status_code == 404
