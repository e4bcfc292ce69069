"""The per-upload lease and tus expiration, on the SQLite schema."""

from datetime import UTC, timedelta

import pytest

from pipeline.intake import uploads as intake
from pipeline.intake.tus import TusError
from pipeline.models import Batch, UploadState, utcnow


@pytest.fixture
def upload(session, make_token):
    from pipeline.accounts.users import user_for_token

    user = user_for_token(session, make_token("Clinic A"))
    batch = Batch(facility_id=user.facility_id, user_id=user.id)
    session.add(batch)
    session.flush()
    created = intake.add_upload(session, intake.new_upload(
        batch=batch, user_id=user.id, length=10, metadata={}, max_bytes=100, expiry=timedelta(hours=1)))
    session.commit()
    return created


def test_second_writer_gets_423_until_the_lease_is_released(session, upload):
    lease = intake.acquire_lease(session, upload.id, 60)
    session.commit()
    with pytest.raises(TusError) as err:
        intake.acquire_lease(session, upload.id, 60)
    assert err.value.status == 423
    intake.release_lease(session, upload.id, lease)
    session.commit()
    assert intake.acquire_lease(session, upload.id, 60)


def test_a_crashed_holder_lease_expires(session, upload):
    intake.acquire_lease(session, upload.id, 60, now=utcnow() - timedelta(minutes=5))
    session.commit()
    assert intake.acquire_lease(session, upload.id, 60)


def test_record_needs_the_lease_and_the_offset(session, upload):
    lease = intake.acquire_lease(session, upload.id, 60)
    staged = intake.StagedChunk(key="k", offset=0, length=4, sha256="0" * 64)
    with pytest.raises(TusError) as err:
        intake.record_chunk(session, upload.id, "not-mine", staged, expiry=timedelta(hours=1),
                            batch_id=upload.batch_id)
    assert err.value.status == 409
    moved = intake.record_chunk(session, upload.id, lease, staged, expiry=timedelta(hours=1),
                                batch_id=upload.batch_id)
    assert moved.offset == 4
    stale = intake.StagedChunk(key="k2", offset=0, length=4, sha256="0" * 64)
    with pytest.raises(TusError):
        intake.record_chunk(session, upload.id, lease, stale, expiry=timedelta(hours=1),
                            batch_id=upload.batch_id)


def test_idle_uploads_expire_and_return_their_chunks(session, upload):
    lease = intake.acquire_lease(session, upload.id, 60)
    intake.record_chunk(session, upload.id, lease,
                        intake.StagedChunk(key="a/b", offset=0, length=4, sha256="0" * 64),
                        expiry=timedelta(hours=1), batch_id=upload.batch_id)
    session.commit()
    assert intake.expire_abandoned(session).upload_ids == []
    expired = intake.expire_abandoned(session, now=utcnow() + timedelta(hours=2))
    assert expired.upload_ids == [upload.id]
    assert expired.staged_keys == ["a/b"]
    assert expired.batch_ids == [upload.batch_id]
    session.refresh(upload)
    assert upload.state == UploadState.EXPIRED


def test_acquiring_the_lease_rechecks_state_and_offset(session, upload):
    with pytest.raises(TusError) as err:
        intake.acquire_lease(session, upload.id, 60, offset=4)  # the request saw another offset
    assert err.value.status == 409
    upload.state = UploadState.TERMINATED
    session.commit()
    with pytest.raises(TusError) as err:
        intake.acquire_lease(session, upload.id, 60, offset=0)
    assert err.value.status == 409


def test_staged_keys_carry_the_lease(upload):
    assert intake.chunk_key(upload, 0, "ab12") != intake.chunk_key(upload, 0, "cd34")
    assert intake.chunk_key(upload, 0, "ab12").endswith("/chunks/000000000000000-ab12")
    assert intake.original_key(upload, "ab12").endswith("/original-ab12.dcm")


def test_the_batch_activity_stamp_never_falls_behind_the_last_activity(session, upload):
    """A batch's last activity is written ACTIVITY_STAMP_AHEAD ahead and only when the stamp
    no longer covers the moment: the stamp is never before the last activity (a quiet period
    never ends early) and at most ACTIVITY_STAMP_AHEAD after it."""
    ahead = intake.ACTIVITY_STAMP_AHEAD
    t0 = utcnow() + timedelta(hours=1)  # after the creation's own stamp

    def stamp() -> object:
        session.commit()
        session.expire_all()
        return session.get(Batch, upload.batch_id).last_activity_at.replace(tzinfo=None)

    for moment, expected in ((t0, t0 + ahead),  # written ahead
                             (t0 + ahead / 2, t0 + ahead),  # covered: no write
                             (t0 + ahead, t0 + ahead),  # still covered
                             (t0 + ahead * 1.5, t0 + ahead * 2.5)):  # past it: written again
        intake.touch_batch(session, upload.batch_id, moment)
        assert stamp() == expected.replace(tzinfo=None)
        assert moment.replace(tzinfo=None) <= stamp() <= (moment + ahead).replace(tzinfo=None)


def test_a_small_body_is_read_whole_and_checked_like_a_streamed_one():
    import base64
    import hashlib
    import io

    from pipeline.intake.tus import parse_checksum

    data = b"DICM" * 1000
    body = intake.read_small_body(io.BytesIO(data), len(data), None)
    assert (body.data, body.sha256, body.interrupted) == (data, hashlib.sha256(data).hexdigest(), False)
    # The forms the statement compares with an upload's declared whole-file checksum are the
    # ones upload_for records from Upload-Metadata (checksum "sha1 ..." or sha256 "...").
    for metadata in ({"checksum": f"sha1 {base64.b64encode(hashlib.sha1(data).digest()).decode()}"},
                     {"sha256": base64.b64encode(hashlib.sha256(data).digest()).decode()}):
        declared = intake.upload_for(batch_id=1, facility_id=1, user_id=1, length=len(data),
                                     metadata=metadata, expiry=timedelta(hours=1)).declared_checksum
        assert declared in body.whole_checksums
    good = parse_checksum(f"sha1 {base64.b64encode(hashlib.sha1(data).digest()).decode()}")
    assert intake.read_small_body(io.BytesIO(data), len(data), good).data == data
    bad = parse_checksum(f"sha1 {base64.b64encode(hashlib.sha1(b'x').digest()).decode()}")
    with pytest.raises(TusError) as mismatch:
        intake.read_small_body(io.BytesIO(data), len(data), bad)
    assert mismatch.value.status == 460

    class CutOff(io.BytesIO):
        def read(self, size: int = -1) -> bytes:
            if self.tell() >= 100:
                raise OSError("client went away")
            return super().read(min(size, 100))

    cut = intake.read_small_body(CutOff(data), len(data), None)
    assert (cut.data, cut.interrupted) == (data[:100], True)  # kept: the client resumes
    with pytest.raises(TusError) as unverifiable:
        intake.read_small_body(CutOff(data), len(data), good)
    assert unverifiable.value.status == 400


def test_a_small_body_is_stored_where_its_upload_keeps_it(tmp_path):
    import io
    from datetime import datetime

    from pipeline.storage.folder import FolderStore

    store = FolderStore(tmp_path / "objects")
    body = intake.read_small_body(io.BytesIO(b"hello"), 5, None)
    day = datetime(2026, 12, 6, 23, 59, tzinfo=UTC)
    whole = intake.store_small_body(store, "u1", body, offset=0, created_at=day, whole=True,
                                    lease="ab12", spool_dir=tmp_path / "spool")
    chunk = intake.store_small_body(store, "u1", body, offset=5, created_at=day, whole=False,
                                    lease="cd34", spool_dir=tmp_path / "spool")
    assert whole.key == "2026/12/06/upload-u1/original-ab12.dcm" and whole.whole
    assert chunk.key == "2026/12/06/upload-u1/chunks/000000000000005-cd34" and not chunk.whole
    with store.open(whole.key) as fh:
        assert fh.read() == b"hello"
    assert intake.upload_prefix_day(chunk.key) == datetime(2026, 12, 6, tzinfo=UTC)
    # An upload created that day takes the chunk, and the original only when it is whole;
    # created the day after (in another zone, the same instant counts) it takes neither.
    seen = intake.SmallChunk(recorded=False, exists=True, created_at=day, whole=False)
    assert seen.stored_right(chunk) and not seen.stored_right(whole)
    assert intake.SmallChunk(recorded=False, exists=True, created_at=day, whole=True).stored_right(whole)
    later = intake.SmallChunk(recorded=False, exists=True, created_at=day + timedelta(minutes=2), whole=True)
    assert not later.stored_right(whole) and not later.stored_right(chunk)
