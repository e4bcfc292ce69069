"""Concurrent writers on a real PostgreSQL: two threads, two sessions, the interleavings that
used to lose a write."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from pipeline.accounts.users import create_user, user_for_token
from pipeline.db.engine import make_engine, make_session_factory
from pipeline.db.migrate import upgrade_database
from pipeline.editing import batch_edits
from pipeline.models import Batch, MetadataChange, Upload, UploadChunk, User
from pipeline.storage import FolderStore
from tests.integration.services import create_database, database_url, drop_database, ensure_postgres

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sessions() -> Iterator[sessionmaker[Session]]:
    ensure_postgres()
    name = create_database("relaypacs_race_")
    url = database_url(name)
    upgrade_database(url)
    engine = make_engine(url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()
        drop_database(name)


@pytest.fixture
def batch_and_user(sessions) -> tuple[int, int]:
    with sessions() as session:
        _, token = create_user(session, f"editor-{time.time_ns()}@race.test", "Race Clinic", "uploader")
        user = user_for_token(session, token)
        batch = Batch(facility_id=user.facility_id, user_id=user.id,
                      overrides={"P1": {"PatientName": "Old^Name"}})
        session.add(batch)
        session.commit()
        return batch.id, user.id


def test_two_concurrent_overrides_on_one_batch_both_stay(sessions, batch_and_user):
    """Each request reads the batch, merges its change and writes the whole JSON back: the
    first holds its transaction open a moment (as a slow request does) while the second runs."""
    batch_id, user_id = batch_and_user
    loaded = threading.Barrier(2)
    errors: list[BaseException] = []

    def edit(patient_id: str, changes: dict, hold: float) -> None:
        try:
            with sessions() as session:
                batch = session.get(Batch, batch_id)  # what the view loads first
                user = session.get(User, user_id)
                loaded.wait(10)
                if not hold:
                    time.sleep(0.2)  # the first one writes first
                batch_edits.set_override(session, batch, user, patient_id, changes)
                time.sleep(hold)
                session.commit()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    first = threading.Thread(target=edit, args=("P1", {"PatientID": "NEW-1"}, 1.0))
    second = threading.Thread(target=edit, args=("P2", {"PatientName": "Second^Patient"}, 0.0))
    first.start()
    second.start()
    first.join(30)
    second.join(30)
    assert not errors, errors

    with sessions() as session:
        overrides = session.get(Batch, batch_id).overrides
        logged = session.query(MetadataChange).filter_by(batch_id=batch_id, kind="override").count()
    assert logged == 2
    assert overrides == {"P1": {"PatientName": "Old^Name", "PatientID": "NEW-1"},
                         "P2": {"PatientName": "Second^Patient"}}


class SlowFirstPut(FolderStore):
    """A store whose first PUT takes ``delay`` seconds (a big chunk over a slow S3 link)."""

    def __init__(self, root, delay: float) -> None:
        super().__init__(root)
        self.delay = delay
        self.puts = 0

    def put_file(self, key, path) -> None:  # noqa: ANN001
        self.puts += 1
        if self.puts == 1:
            time.sleep(self.delay)
        super().put_file(key, path)


def test_a_patch_whose_put_outlasts_the_lease_never_loses_another_writers_chunk(tmp_path):
    """The first PATCH's PUT takes longer than the lease; a second PATCH of the same offset
    arrives meanwhile. Whatever the outcome, the chunk the upload records is in storage."""
    import base64

    from api import create_app
    from config import load_settings

    ensure_postgres()
    name = create_database("relaypacs_lease_")
    try:
        settings = load_settings({
            "RELAYPACS_VAR_DIR": str(tmp_path), "RELAYPACS_BROKER_URL": "memory://",
            "RELAYPACS_DATABASE_URL": database_url(name), "RELAYPACS_UPLOAD_LOCK_SECONDS": "1",
        })
        upgrade_database(settings.database_url)
        app = create_app(settings)
        resources = app.extensions["relaypacs"]
        store = SlowFirstPut(tmp_path / "objects", delay=3.0)
        resources.store = store
        with resources.session_factory() as session:
            _, token = create_user(session, "lease@race.test", "Lease Clinic", "uploader")
            session.commit()
        auth = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
        client = app.test_client()
        batch_id = client.post("/api/v1/batches", json={}, headers=auth).get_json()["id"]
        meta = f"batch_id {base64.b64encode(str(batch_id).encode()).decode()}"
        location = client.post("/api/v1/files", headers={
            **auth, "Upload-Length": "200", "Upload-Metadata": meta}).headers["Location"]
        answers: dict[str, int] = {}

        def patch(who: str, body: bytes) -> None:
            answers[who] = app.test_client().patch(location, data=body, headers={
                **auth, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
            }).status_code

        first = threading.Thread(target=patch, args=("first", b"a" * 100))
        first.start()
        time.sleep(1.8)  # the first one's lease (1 s) would have run out by now
        patch("second", b"b" * 100)
        first.join(30)

        assert sorted(answers.values()) in ([204, 409], [204, 423]), answers
        with resources.session_factory() as session:
            upload = session.query(Upload).one()
            chunks = session.query(UploadChunk).filter_by(upload_id=upload.id).all()
        assert upload.offset == 100 and len(chunks) == 1
        assert store.exists(chunks[0].object_key), "the recorded chunk was deleted by the loser"
        with store.open(chunks[0].object_key) as fh:
            assert fh.read() in (b"a" * 100, b"b" * 100)
    finally:
        drop_database(name)
