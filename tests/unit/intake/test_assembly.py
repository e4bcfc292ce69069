"""Assembly on the SQLite schema and a folder store: a missing chunk quarantines, and a DELETE
that lands while the chunks are joined is never undone."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest

from pipeline.intake import uploads as intake
from pipeline.intake.assembly import AssemblyError, assemble
from pipeline.intake.tus import TusError
from pipeline.models import Batch, Upload, UploadChunk, UploadState
from pipeline.storage import FolderStore

BODY = b"0123456789" * 10


@pytest.fixture
def store(tmp_path):
    return FolderStore(tmp_path / "objects")


@pytest.fixture
def received(session, make_token, store, tmp_path):
    """An upload of two staged chunks, RECEIVED (waiting for assembly)."""
    from pipeline.accounts.users import user_for_token

    user = user_for_token(session, make_token("Clinic A"))
    batch = Batch(facility_id=user.facility_id, user_id=user.id)
    session.add(batch)
    session.flush()
    upload = intake.add_upload(session, intake.new_upload(
        batch=batch, user_id=user.id, length=len(BODY), metadata={}, max_bytes=1000,
        expiry=timedelta(hours=1)))
    for offset in (0, 50):
        part = BODY[offset:offset + 50]
        key = intake.chunk_key(upload, offset)
        part_file = tmp_path / f"part-{offset}"
        part_file.write_bytes(part)
        store.put_file(key, part_file)
        session.add(UploadChunk(upload_id=upload.id, offset=offset, length=50, object_key=key,
                                sha256=hashlib.sha256(part).hexdigest()))
    upload.offset = len(BODY)
    upload.state = UploadState.RECEIVED
    session.commit()
    return upload


def test_assembles_and_returns_the_staged_keys(session, store, received, tmp_path):
    done = assemble(session, store, received, tmp_path / "spool")
    session.commit()
    assert not done.ended and len(done.staged_keys) == 2
    session.refresh(received)
    assert received.state == UploadState.ASSEMBLED
    with store.open(received.object_key) as fh:
        assert fh.read() == BODY
    assert session.query(UploadChunk).count() == 0


def test_a_missing_chunk_is_an_assembly_error_not_a_key_error(session, store, received, tmp_path):
    store.delete(received.chunks[1].object_key)  # what the staging sweep used to do
    with pytest.raises(AssemblyError) as err:
        assemble(session, store, received, tmp_path / "spool")
    assert err.value.reason == "missing_chunk"
    assert "chunk at 50" in err.value.detail


class DeleteWhileJoining(FolderStore):
    """Runs ``during`` (another request's DELETE) once the joined file is being stored."""

    during = None

    def put_file(self, key: str, path: Path) -> None:
        super().put_file(key, path)
        if self.during is not None:
            self.during()


def test_delete_during_assembly_is_not_undone(app, session, received, tmp_path):
    store = DeleteWhileJoining(tmp_path / "objects")  # the same folder as the fixture's store
    other = app.extensions["relaypacs"].session_factory()
    keys: list[str] = []

    def delete_request() -> None:
        upload = other.get(Upload, received.id)
        keys.extend(intake.terminate(other, upload))
        other.commit()

    store.during = delete_request
    done = assemble(session, store, received, tmp_path / "spool")
    session.commit()
    other.close()

    session.expire_all()
    upload = session.get(Upload, received.id)
    assert upload.state == UploadState.TERMINATED
    assert upload.object_key is None
    assert keys and done.ended
    # The object written for it is the caller's to delete: nothing points at it.
    assert done.staged_keys == [intake.original_key(upload)]


def test_delete_after_assembly_is_refused(app, session, store, received, tmp_path):
    stale = app.extensions["relaypacs"].session_factory()
    seen = stale.get(Upload, received.id)  # the DELETE request read the row before assembly
    assert seen.state == UploadState.RECEIVED
    assemble(session, store, received, tmp_path / "spool")
    session.commit()
    with pytest.raises(TusError) as err:
        intake.terminate(stale, seen)
    assert err.value.status == 409
    stale.rollback()
    stale.close()
    session.expire_all()
    assert session.get(Upload, received.id).state == UploadState.ASSEMBLED
