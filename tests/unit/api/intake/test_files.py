"""The tus endpoints through the Flask test client, on SQLite and a folder store."""

import base64
import hashlib

import pytest

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


@pytest.fixture
def uploader(client, make_token):
    token = make_token("Clinic A")
    auth = {"Authorization": f"Bearer {token}"}
    batch = client.post("/api/v1/batches", json={"label": "t"}, headers=auth).get_json()
    return auth, batch["id"]


def create(client, auth, batch_id, length, name="a.dcm", **headers):
    return client.post("/api/v1/files", headers={
        **auth, **TUS, "Upload-Length": str(length),
        "Upload-Metadata": f"filename {b64(name)},batch_id {b64(str(batch_id))}", **headers})


def patch(client, auth, location, offset, data, **headers):
    return client.patch(location, data=data, headers={
        **auth, **TUS, "Upload-Offset": str(offset), "Content-Type": OCTET, **headers})


def test_every_route_needs_a_token(client):
    for method, url in [("post", "/api/v1/batches"), ("get", "/api/v1/batches/1"),
                        ("post", "/api/v1/files"), ("head", "/api/v1/files/abc"),
                        ("patch", "/api/v1/files/abc"), ("delete", "/api/v1/files/abc"),
                        ("post", "/api/v1/batches/1/complete"), ("get", "/api/v1/openapi.json")]:
        response = getattr(client, method)(url, headers=TUS)
        assert response.status_code == 401, (method, url)
        if method != "head":
            assert response.get_json()["error"]["status"] == 401


def test_upload_in_chunks_and_resume(client, uploader, enqueued, app):
    auth, batch_id = uploader
    data = bytes(range(256)) * 40
    created = create(client, auth, batch_id, len(data))
    assert created.status_code == 201
    location = created.headers["Location"]
    assert patch(client, auth, location, 0, data[:4000]).headers["Upload-Offset"] == "4000"
    # The client lost the connection and asks where to go on.
    head = client.head(location, headers={**auth, **TUS})
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "4000"
    assert head.headers["Upload-Length"] == str(len(data))
    assert head.headers["Cache-Control"] == "no-store"
    assert enqueued == []
    done = patch(client, auth, location, 4000, data[4000:])
    assert done.status_code == 204 and done.headers["Upload-Offset"] == str(len(data))
    upload_id = location.rsplit("/", 1)[1]
    assert enqueued == [("upload", upload_id)]


def test_wrong_offset_is_409_and_changes_nothing(client, uploader, enqueued):
    auth, batch_id = uploader
    location = create(client, auth, batch_id, 100).headers["Location"]
    patch(client, auth, location, 0, b"x" * 10)
    response = patch(client, auth, location, 5, b"y" * 10)
    assert response.status_code == 409
    assert response.get_json()["error"]["upload_offset"] == 10
    assert client.head(location, headers={**auth, **TUS}).headers["Upload-Offset"] == "10"


def test_checksum_mismatch_is_460_and_chunk_discarded(client, uploader, enqueued):
    auth, batch_id = uploader
    location = create(client, auth, batch_id, 20).headers["Location"]
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    response = patch(client, auth, location, 0, b"a" * 20, **{"Upload-Checksum": f"sha256 {wrong}"})
    assert response.status_code == 460
    assert client.head(location, headers={**auth, **TUS}).headers["Upload-Offset"] == "0"
    good = base64.b64encode(hashlib.sha1(b"a" * 20).digest()).decode()
    ok = patch(client, auth, location, 0, b"a" * 20, **{"Upload-Checksum": f"sha1 {good}"})
    assert ok.status_code == 204


def test_unknown_checksum_algorithm_is_400(client, uploader, enqueued):
    auth, batch_id = uploader
    location = create(client, auth, batch_id, 20).headers["Location"]
    response = patch(client, auth, location, 0, b"a" * 20, **{"Upload-Checksum": "md5 AAAA"})
    assert response.status_code == 400


def test_over_size_limit_is_413(client, uploader, settings):
    auth, batch_id = uploader
    response = create(client, auth, batch_id, settings.max_upload_bytes + 1)
    assert response.status_code == 413
    assert "limit" in response.get_json()["error"]["message"]


def test_chunk_past_length_is_413(client, uploader, enqueued):
    auth, batch_id = uploader
    location = create(client, auth, batch_id, 10).headers["Location"]
    assert patch(client, auth, location, 0, b"z" * 11).status_code == 413
    assert client.head(location, headers={**auth, **TUS}).headers["Upload-Offset"] == "0"


def test_protocol_errors(client, uploader):
    auth, batch_id = uploader
    no_version = client.post("/api/v1/files", headers={**auth, "Upload-Length": "1"})
    assert no_version.status_code == 412
    location = create(client, auth, batch_id, 10).headers["Location"]
    wrong_type = client.patch(location, data=b"x", headers={
        **auth, **TUS, "Upload-Offset": "0", "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    no_batch = client.post("/api/v1/files", headers={**auth, **TUS, "Upload-Length": "1"})
    assert no_batch.status_code == 400
    bad_length = client.post("/api/v1/files", headers={**auth, **TUS, "Upload-Length": "-1"})
    assert bad_length.status_code == 400


def test_creation_with_upload(client, uploader, enqueued):
    auth, batch_id = uploader
    response = create(client, auth, batch_id, 5, data=None)
    location = response.headers["Location"]
    response = client.post("/api/v1/files", data=b"hello", headers={
        **auth, **TUS, "Upload-Length": "5", "Content-Type": OCTET,
        "Upload-Metadata": f"batch_id {b64(str(batch_id))}"})
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "5"
    assert location != response.headers["Location"]
    assert len(enqueued) == 1


def test_termination(client, uploader, enqueued):
    auth, batch_id = uploader
    location = create(client, auth, batch_id, 10).headers["Location"]
    patch(client, auth, location, 0, b"12345")
    assert client.delete(location, headers={**auth, **TUS}).status_code == 204
    assert client.head(location, headers={**auth, **TUS}).status_code == 404
    assert patch(client, auth, location, 5, b"67890").status_code == 404


def test_other_facility_gets_403(client, uploader, make_token):
    auth, batch_id = uploader
    location = create(client, auth, batch_id, 10).headers["Location"]
    other = {"Authorization": f"Bearer {make_token('Clinic B')}"}
    assert client.get(f"/api/v1/batches/{batch_id}", headers=other).status_code == 403
    assert client.head(location, headers={**other, **TUS}).status_code == 403
    assert patch(client, other, location, 0, b"x").status_code == 403
    assert create(client, other, batch_id, 10).status_code == 403


def test_qa_manager_cannot_upload(client, make_token, uploader):
    _, batch_id = uploader
    qa = {"Authorization": f"Bearer {make_token('Clinic A', 'qa_manager')}"}
    assert create(client, qa, batch_id, 10).status_code == 403
    assert client.get(f"/api/v1/batches/{batch_id}", headers=qa).status_code == 200


def test_options_discovery_and_cors(client):
    response = client.options("/api/v1/files", headers={"Origin": "https://clinic.example"})
    assert response.status_code == 204
    assert "checksum" in response.headers["Tus-Extension"]
    assert "sha256" in response.headers["Tus-Checksum-Algorithm"]
    assert "Upload-Offset" in response.headers["Access-Control-Expose-Headers"]


def test_completed_batch_refuses_new_files(client, uploader, enqueued):
    auth, batch_id = uploader
    assert client.post(f"/api/v1/batches/{batch_id}/complete", headers=auth).status_code == 200
    assert create(client, auth, batch_id, 10).status_code == 409
    assert ("batch", batch_id) in enqueued


def test_bad_batch_body_is_400(client, uploader):
    auth, _ = uploader
    assert client.post("/api/v1/batches", data="[1]", headers={
        **auth, "Content-Type": "application/json"}).status_code == 400
    assert client.post("/api/v1/batches", json={"nope": 1}, headers=auth).status_code == 400


def create_with(client, auth, batch_id, data, length=None, **headers):
    """tus creation-with-upload: the body rides on the POST."""
    return client.post("/api/v1/files", data=data, headers={
        **auth, **TUS, "Upload-Length": str(len(data) if length is None else length),
        "Content-Type": OCTET, "Upload-Metadata": f"filename {b64('a.dcm')},batch_id {b64(str(batch_id))}",
        **headers})


def _upload_row(app, location):
    from pipeline.models import Upload

    with app.extensions["relaypacs"].session_factory() as session:
        upload = session.get(Upload, location.rsplit("/", 1)[1])
        return upload, list(upload.chunks)


def test_whole_file_in_the_creating_post_is_stored_as_its_original(client, uploader, enqueued, app):
    auth, batch_id = uploader
    data = bytes(range(256)) * 50
    sha1 = base64.b64encode(hashlib.sha1(data).digest()).decode()
    response = create_with(client, auth, batch_id, data, **{"Upload-Checksum": f"sha1 {sha1}"})
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == str(len(data))
    upload, chunks = _upload_row(app, response.headers["Location"])
    # Nothing to assemble: the body is the original, hashed, and parsing is queued next.
    assert upload.state == "assembled" and chunks == []
    assert upload.object_key.endswith(f"upload-{upload.id}/original.dcm")
    assert upload.sha256 == hashlib.sha256(data).hexdigest()
    with app.extensions["relaypacs"].store.open(upload.object_key) as fh:
        assert fh.read() == data
    assert enqueued == [("parse", upload.id)]
    head = client.head(response.headers["Location"], headers={**auth, **TUS})
    assert head.headers["Upload-Offset"] == str(len(data))
    again = patch(client, auth, response.headers["Location"], len(data), b"x")
    assert again.status_code == 409


def test_whole_file_in_one_patch_is_stored_as_its_original(client, uploader, enqueued, app):
    auth, batch_id = uploader
    data = b"\x01\x02" * 3000
    location = create(client, auth, batch_id, len(data)).headers["Location"]
    assert patch(client, auth, location, 0, data).status_code == 204
    upload, chunks = _upload_row(app, location)
    assert upload.state == "assembled" and chunks == [] and upload.lock_token is None
    assert enqueued == [("parse", upload.id)]


def test_declared_whole_file_checksum_decides_the_shortcut(client, uploader, enqueued, app):
    auth, batch_id = uploader
    data = b"clinic" * 1000
    good = base64.b64encode(hashlib.sha256(data).digest()).decode()
    bad = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    results = {}
    for label, declared in (("good", good), ("bad", bad)):
        response = client.post("/api/v1/files", data=data, headers={
            **auth, **TUS, "Upload-Length": str(len(data)), "Content-Type": OCTET,
            "Upload-Metadata": f"batch_id {b64(str(batch_id))},sha256 {b64(declared)}"})
        assert response.status_code == 201
        results[label] = _upload_row(app, response.headers["Location"])
    assert results["good"][0].state == "assembled"
    # A mismatch is not decided in the request: the file goes through assembly, which
    # quarantines it with the reason (the batch report shows it).
    bad_upload, bad_chunks = results["bad"]
    assert bad_upload.state == "received" and len(bad_chunks) == 1
    assert enqueued == [("parse", results["good"][0].id), ("upload", bad_upload.id)]


def test_refused_creation_body_leaves_no_upload_behind(client, uploader, enqueued, app):
    from sqlalchemy import func, select

    from pipeline.models import Upload

    auth, batch_id = uploader
    wrong = base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    mismatch = create_with(client, auth, batch_id, b"hello", **{"Upload-Checksum": f"sha1 {wrong}"})
    assert mismatch.status_code == 460
    too_long = create_with(client, auth, batch_id, b"hello", length=3)
    assert too_long.status_code == 413
    with app.extensions["relaypacs"].session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Upload)) == 0
    assert enqueued == []


def test_a_batch_closed_while_the_body_streamed_refuses_the_file(session, make_token):
    from datetime import timedelta

    from pipeline.accounts.users import user_for_token
    from pipeline.intake import uploads as intake
    from pipeline.intake.tus import TusError
    from pipeline.models import Batch, BatchState, Upload

    user = user_for_token(session, make_token("Clinic A"))
    batch = Batch(facility_id=user.facility_id, user_id=user.id)
    session.add(batch)
    session.commit()
    upload = intake.new_upload(batch=batch, user_id=user.id, length=4, metadata={},
                               max_bytes=100, expiry=timedelta(hours=1))
    staged = intake.StagedChunk(key="k", offset=0, length=4, sha256="0" * 64, whole=True)
    batch.state = BatchState.COMPLETED  # the client completed it meanwhile
    session.commit()
    with pytest.raises(TusError) as err:
        intake.record_new_upload(session, upload, staged)
    assert err.value.status == 409
    session.rollback()
    assert session.get(Upload, upload.id) is None


def test_an_empty_files_plain_creation_is_complete_and_starts_its_chain(client, uploader, enqueued, session):
    # An empty file is complete as it is created: RECEIVED, with upload.completed beside
    # upload.initiated (the event starts its chain). The general path (SQLite here, admins
    # and readers on PostgreSQL) wrote the events before it knew the file was complete.
    from pipeline.models import OutboxEvent, Upload, UploadState

    auth, batch_id = uploader
    response = create(client, auth, batch_id, 0)
    assert response.status_code == 201 and response.headers["Upload-Offset"] == "0"
    upload_id = response.headers["Location"].rsplit("/", 1)[1]
    assert session.get(Upload, upload_id).state == UploadState.RECEIVED
    types = [e.type for e in session.query(OutboxEvent).order_by(OutboxEvent.id)
             if e.data.get("upload_id") == upload_id]
    assert types == ["upload.initiated", "upload.completed"]
    assert enqueued == [("upload", upload_id)]
