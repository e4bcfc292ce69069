"""tus on a real PostgreSQL, where a creation (plain or with its body) and the PATCH of a
small body are each one statement on an autocommit connection (api/intake/files.py,
pipeline.intake.uploads.insert_checked_upload and record_small_chunk): they keep every check
of the general and the lease paths (batch, facility, open batch, the open-upload limit; the
upload's facility, state, offset, another writer's lease, its length) and their bookkeeping
(the row in its final state, the chunk row, the batch's activity stamp, the events), a
refusal leaves nothing behind, two PATCHes at one offset move it once, and the batch row is
held against a completion without files waiting for each other."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from pipeline.accounts.users import create_user, user_for_token
from pipeline.intake import uploads as intake
from pipeline.models import Batch, BatchState, OutboxEvent, Upload, UploadChunk, UploadState, utcnow
from tests.integration.services import app_on_new_database, poll_for
from tests.started_chains import record_started_uploads

pytestmark = pytest.mark.integration

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"
MAX_OPEN = 3


@pytest.fixture(scope="module")
def app(redis_url, tmp_path_factory) -> Iterator:  # noqa: ANN001
    var = tmp_path_factory.mktemp("tus1")
    with app_on_new_database("relaypacs_tus1_", redis_url, var,
                             RELAYPACS_MAX_OPEN_UPLOADS=str(MAX_OPEN)) as app:
        app.config["objects"] = var / "objects"
        yield app


@pytest.fixture
def enqueued(monkeypatch, app) -> list:  # noqa: ANN001
    """The chains started, as intake.start_uploads would start them, for the uploads whose
    upload.completed the app's relay thread sent (read them through :func:`_started`)."""
    calls: list = []
    record_started_uploads(monkeypatch, app, calls)
    return calls


def _started(app, enqueued: list) -> list:  # noqa: ANN001
    """``enqueued`` once the relay thread has sent every committed event (and so has handed
    each batch to chains.after_events)."""
    def relayed() -> bool:
        with app.extensions["relaypacs"].session_factory() as session:
            return not session.scalar(select(func.count()).select_from(OutboxEvent)
                                      .where(OutboxEvent.published_at.is_(None)))

    poll_for(relayed, "the relay to send every event", timeout=10, interval=0.05)
    return enqueued


def test_a_files_chain_starts_from_its_committed_event_after_the_api_died(app, enqueued, monkeypatch,  # noqa: ANN001
                                                                          redis_url):
    """The upload and its upload.completed commit in one statement; the API process dies
    before its relay runs (here: its relay sends nothing). No task was published by the
    request, and the next relay of any process (another worker's, ``relaypacs events-relay``)
    starts the chain from the committed row: nothing is lost between commit and publish."""
    from pipeline.ops import outbox
    from workers import chains

    dead = app.extensions["relaypacs.relay"].relay
    monkeypatch.setattr(dead, "run_once", lambda: 0)
    client = app.test_client()
    auth = _user(app, "Clinic Crash")
    batch_id = _batch(client, auth)
    response = _post(client, auth, batch_id, b"DICM" * 100)
    assert response.status_code == 201
    upload_id = response.headers["Location"].rsplit("/", 1)[1]
    assert enqueued == []
    engine = app.extensions["relaypacs"].session_factory.kw["bind"]
    other = outbox.Relay(engine, outbox.sinks_for(redis_url, None, "", chains.after_events))
    assert other.drain() >= 3  # upload.initiated, chunk_received, completed (and any left before)
    assert enqueued == [("parse", upload_id)]


def _user(app, facility: str) -> dict:  # noqa: ANN001
    with app.extensions["relaypacs"].session_factory() as session:
        _, token = create_user(session, f"u{time.time_ns()}@tus1.test", facility, "uploader")
        session.commit()
    return {"Authorization": f"Bearer {token}", **TUS}


def _batch(client, auth: dict) -> int:  # noqa: ANN001
    response = client.post("/api/v1/batches", json={"label": "tus1"}, headers=auth)
    assert response.status_code == 201
    return response.json["id"]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _post(client, auth: dict, batch_id: int, data: bytes | None, length: int | None = None,  # noqa: ANN001
          **extra: str):  # noqa: ANN202
    headers = {**auth, "Upload-Length": str(len(data or b"") if length is None else length),
               "Upload-Metadata": f"filename {_b64('a.dcm')},batch_id {_b64(str(batch_id))}", **extra}
    if data is not None:
        headers["Content-Type"] = OCTET
    return client.post("/api/v1/files", data=data, headers=headers)


def _counts(app, batch_id: int) -> tuple[int, int]:  # noqa: ANN001
    """Uploads of the batch, and outbox rows about the batch."""
    with app.extensions["relaypacs"].session_factory() as session:
        uploads = session.scalar(select(func.count()).select_from(Upload).where(Upload.batch_id == batch_id))
        events = [e for e in session.scalars(select(OutboxEvent)) if e.data.get("batch_id") == batch_id]
    return uploads, len(events)


def _stored(app) -> list[Path]:  # noqa: ANN001
    root = Path(app.config["objects"])
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_a_whole_file_goes_in_assembled_with_its_events_and_stamp(app, enqueued):  # noqa: ANN001
    client = app.test_client()
    auth = _user(app, "Clinic One")
    batch_id = _batch(client, auth)
    with app.extensions["relaypacs"].session_factory() as session:
        session.execute(update(Batch).where(Batch.id == batch_id)
                        .values(last_activity_at=utcnow() - timedelta(minutes=5)))
        session.commit()
    data = b"DICM" * 5000
    sha1 = base64.b64encode(hashlib.sha1(data).digest()).decode()
    before = utcnow()
    response = _post(client, auth, batch_id, data, **{"Upload-Checksum": f"sha1 {sha1}"})
    assert response.status_code == 201, response.json
    assert response.headers["Upload-Offset"] == str(len(data))
    upload_id = response.headers["Location"].rsplit("/", 1)[1]
    with app.extensions["relaypacs"].session_factory() as session:
        upload = session.get(Upload, upload_id)
        assert (upload.state, upload.offset, upload.length) == (UploadState.ASSEMBLED, len(data), len(data))
        assert upload.sha256 == hashlib.sha256(data).hexdigest() and upload.lock_token is None
        assert upload.object_key.endswith(f"upload-{upload_id}/original.dcm")
        assert session.scalar(select(func.count()).select_from(UploadChunk)
                              .where(UploadChunk.upload_id == upload_id)) == 0
        batch = session.get(Batch, batch_id)
        # The stale stamp was moved ahead (never behind the activity).
        assert batch.last_activity_at >= before
        events = [(e.type, e.data["offset"]) for e in session.scalars(
            select(OutboxEvent).order_by(OutboxEvent.id)) if e.data.get("upload_id") == upload_id]
    assert events == [("upload.initiated", 0), ("upload.chunk_received", len(data)),
                      ("upload.completed", len(data))]
    with app.extensions["relaypacs"].store.open(upload.object_key) as fh:
        assert fh.read() == data
    assert _started(app, enqueued) == [("parse", upload_id)]


def test_a_partial_body_goes_in_receiving_with_its_chunk_and_the_rest_follows(app, enqueued):  # noqa: ANN001
    client = app.test_client()
    auth = _user(app, "Clinic Two")
    batch_id = _batch(client, auth)
    response = _post(client, auth, batch_id, b"hello", length=10)
    assert response.status_code == 201 and response.headers["Upload-Offset"] == "5"
    location = response.headers["Location"].replace("http://localhost", "")
    upload_id = location.rsplit("/", 1)[1]
    with app.extensions["relaypacs"].session_factory() as session:
        upload = session.get(Upload, upload_id)
        assert (upload.state, upload.offset) == (UploadState.RECEIVING, 5)
        assert [(c.offset, c.length) for c in upload.chunks] == [(0, 5)]
    assert _started(app, enqueued) == []
    rest = client.patch(location, data=b"world", headers={**auth, "Upload-Offset": "5",
                                                          "Content-Type": OCTET})
    assert rest.status_code == 204 and rest.headers["Upload-Offset"] == "10"
    assert _started(app, enqueued) == [("upload", upload_id)]


def test_refusals_answer_as_before_and_leave_nothing_behind(app, enqueued):  # noqa: ANN001
    client = app.test_client()
    auth = _user(app, "Clinic Three")
    other = _user(app, "Clinic Elsewhere")
    batch_id = _batch(client, auth)
    foreign = _batch(client, other)
    stored = _stored(app)
    assert _post(client, auth, 987654321, b"x" * 100).status_code == 404
    assert _post(client, auth, foreign, b"x" * 100).status_code == 403
    assert _counts(app, foreign) == (0, 0)
    for _ in range(MAX_OPEN):  # plain creations stay RECEIVING: the user's open uploads
        assert _post(client, auth, batch_id, None, length=10).status_code == 201
    assert _counts(app, batch_id) == (MAX_OPEN, MAX_OPEN)
    crowded = _post(client, auth, batch_id, b"x" * 100)
    assert crowded.status_code == 429 and crowded.headers["Retry-After"] == "60"
    assert _counts(app, batch_id) == (MAX_OPEN, MAX_OPEN)
    second = _user(app, "Clinic Three")  # the limit is the user's: another one may send
    assert _post(client, second, batch_id, b"x" * 100).status_code == 201
    assert client.post(f"/api/v1/batches/{batch_id}/complete", headers=auth).status_code == 200
    closed = _post(client, second, batch_id, b"x" * 100)
    assert closed.status_code == 409 and "completed" in closed.json["error"]["message"]
    assert _counts(app, batch_id) == (MAX_OPEN + 1, MAX_OPEN + 3)
    # One body was accepted (the second user's); every refused one was deleted.
    assert len(_stored(app)) == len(stored) + 1
    assert len([c for c in _started(app, enqueued) if c[0] == "parse"]) == 1


# ---------------------------------------------------------------- the batch row's lock


def _pipeline_upload(app, facility: str) -> tuple[int, int, int]:  # noqa: ANN001
    with app.extensions["relaypacs"].session_factory() as session:
        _, token = create_user(session, f"p{time.time_ns()}@tus1.test", facility, "uploader")
        user = user_for_token(session, token)
        batch = Batch(facility_id=user.facility_id, user_id=user.id,
                      last_activity_at=utcnow() - timedelta(minutes=5))
        session.add(batch)
        session.commit()
        return batch.id, user.facility_id, user.id


def _insert(connection, batch_id: int, facility_id: int, user_id: int) -> tuple:  # noqa: ANN001
    upload = intake.upload_for(batch_id=batch_id, facility_id=facility_id, user_id=user_id,
                               length=4, metadata={}, expiry=timedelta(hours=1))
    staged = intake.StagedChunk(key=f"k-{upload.id}", offset=0, length=4, sha256="0" * 64, whole=True)
    intake.take_first_chunk(upload, staged, upload.created_at)
    found = intake.insert_checked_upload(connection, upload, staged, max_open_uploads=MAX_OPEN,
                                         outbox_rows=[], now=upload.created_at)
    return upload, found


def _in_thread(work) -> tuple[threading.Thread, list]:  # noqa: ANN001
    out: list = []

    def run() -> None:
        try:
            out.append(work())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_a_file_racing_a_stale_stamp_is_asked_again_not_deadlocked(app):  # noqa: ANN001
    """Two files find the batch's stamp stale: the first rewrites it under the row lock
    (its transaction held open here), the second waits for it, finds the stamp moved,
    inserts nothing and says raced; asked again it goes in under a share lock."""
    batch_id, facility_id, user_id = _pipeline_upload(app, "Clinic Race")
    engine = app.extensions["relaypacs"].session_factory.kw["bind"]
    autocommit = app.extensions["relaypacs.autocommit"]
    with engine.connect() as first:
        _, found = _insert(first, batch_id, facility_id, user_id)
        assert found.inserted
        thread, out = _in_thread(lambda: _second(autocommit, batch_id, facility_id, user_id))
        thread.join(0.5)
        assert thread.is_alive()  # waiting for the first file's row lock
        first.commit()
    thread.join(10)
    (found, again), = out
    assert not found.inserted and found.raced
    assert again.inserted and not again.raced


def _second(autocommit, batch_id: int, facility_id: int, user_id: int) -> tuple:  # noqa: ANN001
    with autocommit.connect() as connection:
        _, found = _insert(connection, batch_id, facility_id, user_id)
        _, again = _insert(connection, batch_id, facility_id, user_id)
    return found, again


def test_a_completion_waits_for_files_going_in_and_files_do_not_wait_for_each_other(app):  # noqa: ANN001
    batch_id, facility_id, user_id = _pipeline_upload(app, "Clinic Lock")
    engine = app.extensions["relaypacs"].session_factory.kw["bind"]
    autocommit = app.extensions["relaypacs.autocommit"]
    with autocommit.connect() as connection:  # the stale stamp rewritten: fresh from now on
        assert _insert(connection, batch_id, facility_id, user_id)[1].inserted
    with engine.connect() as first:
        assert _insert(first, batch_id, facility_id, user_id)[1].inserted  # share lock, held
        with autocommit.connect() as other:  # another file does not wait
            assert _insert(other, batch_id, facility_id, user_id)[1].inserted

        def complete() -> None:
            with engine.connect() as closing:
                closing.execute(update(Batch).where(Batch.id == batch_id)
                                .values(state=BatchState.COMPLETED.value))
                closing.commit()

        thread, out = _in_thread(complete)
        thread.join(0.5)
        assert thread.is_alive()  # the completion waits for the file still going in
        first.commit()
    thread.join(10)
    assert out == [None]
    with autocommit.connect() as connection:  # and after it, a file is refused
        _, found = _insert(connection, batch_id, facility_id, user_id)
    assert not found.inserted and found.batch_state == BatchState.COMPLETED and not found.raced


# ---------------------------------------------------------------- plain creation, small PATCH


def _create(client, auth: dict, batch_id: int, length: int, **metadata: str):  # noqa: ANN001, ANN202
    """A plain creation (no body): tuspy's and tus-js-client's first request."""
    extra = "".join(f",{k} {_b64(v)}" for k, v in metadata.items())
    headers = {**auth, "Upload-Length": str(length),
               "Upload-Metadata": f"filename {_b64('a.dcm')},batch_id {_b64(str(batch_id))}{extra}"}
    return client.post("/api/v1/files", headers=headers)


def _patch(client, auth: dict, location: str, offset: int, data: bytes, **extra: str):  # noqa: ANN001, ANN202
    return client.patch(location.replace("http://localhost", ""), data=data, headers={
        **auth, "Upload-Offset": str(offset), "Content-Type": OCTET, **extra})


def _events(app, upload_id: str) -> list[tuple]:  # noqa: ANN001
    with app.extensions["relaypacs"].session_factory() as session:
        return [(e.type, e.data["offset"], e.data.get("request_id")) for e in session.scalars(
            select(OutboxEvent).order_by(OutboxEvent.id)) if e.data.get("upload_id") == upload_id]


def _set(app, upload_id: str, **values) -> None:  # noqa: ANN001, ANN003
    with app.extensions["relaypacs"].session_factory() as session:
        session.execute(update(Upload).where(Upload.id == upload_id).values(**values))
        session.commit()


def test_a_plain_creation_then_one_patch_completes_the_file_with_its_events_stamp_and_chain(app, enqueued):  # noqa: ANN001
    client = app.test_client()
    auth = _user(app, "Clinic Patch")
    batch_id = _batch(client, auth)
    data = b"DICM" * 10_000
    sha1 = base64.b64encode(hashlib.sha1(data).digest()).decode()
    created = _create(client, auth, batch_id, len(data), checksum=f"sha1 {sha1}")
    assert created.status_code == 201 and created.headers["Upload-Offset"] == "0"
    upload_id = created.headers["Location"].rsplit("/", 1)[1]
    with app.extensions["relaypacs"].session_factory() as session:
        upload = session.get(Upload, upload_id)
        assert (upload.state, upload.offset, upload.declared_checksum) == (
            UploadState.RECEIVING, 0, f"sha1 {sha1}")
        session.execute(update(Batch).where(Batch.id == batch_id)
                        .values(last_activity_at=utcnow() - timedelta(minutes=5)))
        session.commit()
    stored = _stored(app)
    before = utcnow()
    response = _patch(client, auth, created.headers["Location"], 0, data, **{"X-Request-ID": "req-patch-1"})
    assert response.status_code == 204, response.json
    assert response.headers["Upload-Offset"] == str(len(data)) and response.headers["Upload-Expires"]
    with app.extensions["relaypacs"].session_factory() as session:
        upload = session.get(Upload, upload_id)
        assert (upload.state, upload.offset, upload.lock_token) == (UploadState.ASSEMBLED, len(data), None)
        assert upload.sha256 == hashlib.sha256(data).hexdigest()
        # Under the upload's creation day, as its original (with the writer's token).
        assert upload.object_key.startswith(f"{upload.created_at:%Y/%m/%d}/upload-{upload_id}/original-")
        assert upload.expires_at > before + timedelta(minutes=5)
        assert session.scalar(select(func.count()).select_from(UploadChunk)
                              .where(UploadChunk.upload_id == upload_id)) == 0
        assert session.get(Batch, batch_id).last_activity_at >= before  # the stale stamp moved ahead
    with app.extensions["relaypacs"].store.open(upload.object_key) as fh:
        assert fh.read() == data
    assert len(_stored(app)) == len(stored) + 1
    assert _events(app, upload_id) == [("upload.initiated", 0, None),
                                       ("upload.chunk_received", len(data), None),
                                       ("upload.completed", len(data), "req-patch-1")]
    assert _started(app, enqueued) == [("parse", upload_id)]


def test_a_plain_creations_refusals_answer_as_before_and_leave_nothing(app, enqueued):  # noqa: ANN001
    client = app.test_client()
    auth = _user(app, "Clinic Plain")
    other = _user(app, "Clinic Plain Elsewhere")
    batch_id, foreign = _batch(client, auth), _batch(client, other)
    assert _create(client, auth, 987654321, 10).status_code == 404
    assert _create(client, auth, foreign, 10).status_code == 403
    assert _counts(app, foreign) == (0, 0)
    for _ in range(MAX_OPEN):
        assert _create(client, auth, batch_id, 10).status_code == 201
    crowded = _create(client, auth, batch_id, 10)
    assert crowded.status_code == 429 and crowded.headers["Retry-After"] == "60"
    assert _counts(app, batch_id) == (MAX_OPEN, MAX_OPEN)
    second = _user(app, "Clinic Plain")
    empty = _create(client, second, batch_id, 0)  # complete at creation: its chain starts
    assert empty.status_code == 201
    assert client.post(f"/api/v1/batches/{batch_id}/complete", headers=auth).status_code == 200
    closed = _create(client, second, batch_id, 10)
    assert closed.status_code == 409 and "completed" in closed.json["error"]["message"]
    # MAX_OPEN + the empty file; their initiated events, and the empty one's completed.
    assert _counts(app, batch_id) == (MAX_OPEN + 1, MAX_OPEN + 2)
    empty_id = empty.headers["Location"].rsplit("/", 1)[1]
    assert _started(app, enqueued) == [("upload", empty_id)]


def test_patch_refusals_answer_as_the_lease_path_and_leave_nothing_behind(app, enqueued):  # noqa: ANN001
    client = app.test_client()
    auth = _user(app, "Clinic Refuse")
    other = _user(app, "Clinic Refuse Elsewhere")
    batch_id = _batch(client, auth)
    location = _create(client, auth, batch_id, 10).headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    assert _patch(client, auth, location, 0, b"abc").status_code == 204  # offset 3
    stored, events = _stored(app), _events(app, upload_id)

    def refused(status: int, response, offset: int | None = None) -> None:  # noqa: ANN001
        assert response.status_code == status, response.json
        if offset is not None:
            assert response.json["error"]["upload_offset"] == offset
        assert _stored(app) == stored and _events(app, upload_id) == events  # nothing left
        with app.extensions["relaypacs"].session_factory() as session:
            assert session.get(Upload, upload_id).offset == 3

    refused(404, _patch(client, auth, "/api/v1/files/nosuchupload", 0, b"a"))
    refused(403, _patch(client, other, location, 3, b"def"))
    refused(409, _patch(client, auth, location, 0, b"abc"), offset=3)  # a stale writer
    refused(413, _patch(client, auth, location, 3, b"defghijk"))  # past Upload-Length
    _set(app, upload_id, lock_token="someone",  # noqa: S106 - another request's lease
         lock_expires_at=utcnow() + timedelta(seconds=60))
    refused(423, _patch(client, auth, location, 3, b"def"))  # a large body's live lease
    _set(app, upload_id, state=UploadState.EXPIRED.value)
    refused(410, _patch(client, auth, location, 3, b"def"))
    _set(app, upload_id, state=UploadState.TERMINATED.value)
    refused(404, _patch(client, auth, location, 3, b"def"))
    _set(app, upload_id, state=UploadState.RECEIVING.value, lock_expires_at=utcnow() - timedelta(seconds=1))
    done = _patch(client, auth, location, 3, b"defghij")  # an expired lease is taken over
    assert done.status_code == 204 and done.headers["Upload-Offset"] == "10"
    stored, events = _stored(app), _events(app, upload_id)
    with app.extensions["relaypacs"].session_factory() as session:
        assert session.get(Upload, upload_id).lock_token is None
    complete = _patch(client, auth, location, 10, b"k")
    assert complete.status_code == 409 and complete.json["error"]["upload_offset"] == 10
    assert _stored(app) == stored and _events(app, upload_id) == events
    assert _started(app, enqueued) == [("upload", upload_id)]


def test_two_patches_at_one_offset_move_it_once_and_the_loser_leaves_nothing(app, enqueued):  # noqa: ANN001
    """Both bodies are stored without a lease; the statements meet at the upload's row lock
    (held here by a third transaction until both bodies are in): one moves the offset, the
    other finds it moved and answers 409 with the server's offset, its object deleted."""
    client = app.test_client()
    auth = _user(app, "Clinic Twice")
    batch_id = _batch(client, auth)
    data = b"DICM" * 1000
    location = _create(client, auth, batch_id, len(data)).headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    stored = _stored(app)
    engine = app.extensions["relaypacs"].session_factory.kw["bind"]
    with engine.connect() as holder:
        holder.execute(select(Upload.id).where(Upload.id == upload_id).with_for_update())
        threads = [_in_thread(lambda: _patch(app.test_client(), auth, location, 0, data)) for _ in range(2)]
        poll_for(lambda: len(_stored(app)) == len(stored) + 2, "both bodies stored before the statements",
                 timeout=10, interval=0.05)
        holder.commit()
    for thread, _ in threads:
        thread.join(10)
    responses = sorted((out[0] for _, out in threads), key=lambda r: r.status_code)
    assert [r.status_code for r in responses] == [204, 409]
    assert responses[1].json["error"]["upload_offset"] == len(data)
    with app.extensions["relaypacs"].session_factory() as session:
        upload = session.get(Upload, upload_id)
        assert (upload.state, upload.offset) == (UploadState.ASSEMBLED, len(data))
    assert [p for p in _stored(app) if p not in stored] == [
        Path(app.config["objects"]) / upload.object_key]
    assert [e[:2] for e in _events(app, upload_id)] == [
        ("upload.initiated", 0), ("upload.chunk_received", len(data)), ("upload.completed", len(data))]
    assert _started(app, enqueued) == [("parse", upload_id)]


def test_small_bodies_go_where_their_upload_keeps_them(app, enqueued):  # noqa: ANN001
    """A first chunk at offset 0 that is not the whole file (stored first as the original)
    ends as a chunk; a body for an upload created on another day goes under that day's
    folder; a whole file whose declared checksum does not match goes the assembly way."""
    client = app.test_client()
    auth = _user(app, "Clinic Keys")
    batch_id = _batch(client, auth)
    stored = _stored(app)
    first = _create(client, auth, batch_id, 10).headers["Location"]
    first_id = first.rsplit("/", 1)[1]
    assert _patch(client, auth, first, 0, b"hello").headers["Upload-Offset"] == "5"
    with app.extensions["relaypacs"].session_factory() as session:
        upload = session.get(Upload, first_id)
        (chunk,) = upload.chunks
        prefix = f"{upload.created_at:%Y/%m/%d}/upload-{first_id}"
        assert (upload.state, chunk.offset, chunk.length) == (UploadState.RECEIVING, 0, 5)
        assert chunk.object_key.startswith(f"{prefix}/chunks/000000000000000-")
    assert [p for p in _stored(app) if p not in stored] == [Path(app.config["objects"]) / chunk.object_key]
    assert _patch(client, auth, first, 5, b"world").headers["Upload-Offset"] == "10"

    data = b"DICM" * 100
    old = _create(client, auth, batch_id, len(data)).headers["Location"]
    old_id = old.rsplit("/", 1)[1]
    yesterday = utcnow() - timedelta(days=1)
    _set(app, old_id, created_at=yesterday)
    assert _patch(client, auth, old, 0, data).status_code == 204
    with app.extensions["relaypacs"].session_factory() as session:
        upload = session.get(Upload, old_id)
        assert upload.state == UploadState.ASSEMBLED
        assert upload.object_key.startswith(f"{yesterday:%Y/%m/%d}/upload-{old_id}/original-")
    assert not [p for p in _stored(app) if f"upload-{old_id}" in str(p) and str(p) != str(
        Path(app.config["objects"]) / upload.object_key)]

    second = _user(app, "Clinic Keys")
    mismatch = f"sha256 {_b64('x' * 32)}"
    wrong = _create(client, second, batch_id, len(data), checksum=mismatch).headers["Location"]
    wrong_id = wrong.rsplit("/", 1)[1]
    assert _patch(client, second, wrong, 0, data).status_code == 204
    with app.extensions["relaypacs"].session_factory() as session:
        upload = session.get(Upload, wrong_id)
        assert upload.state == UploadState.RECEIVED and [c.length for c in upload.chunks] == [len(data)]
    assert _started(app, enqueued) == [("upload", first_id), ("parse", old_id), ("upload", wrong_id)]
