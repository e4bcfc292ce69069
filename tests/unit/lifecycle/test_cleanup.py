"""The nightly staging sweep (pipeline/lifecycle/cleanup.py) on a folder store and SQLite: it
deletes the chunks of ended uploads only, within the run's facility scope."""

from __future__ import annotations

import io
import secrets
from datetime import timedelta

from pipeline.lifecycle.cleanup import sweep_staging
from pipeline.lifecycle.options import RunResult
from pipeline.models import Batch, Upload, UploadState, utcnow
from tests.storage_seed import facility_user
from tests.unit.lifecycle.helpers import run_options


def _upload_with_chunk(session, store, facility_user_ids, state, day) -> str:
    facility_id, user_id = facility_user_ids
    batch = Batch(facility_id=facility_id, user_id=user_id)
    session.add(batch)
    session.flush()
    upload = Upload(id=secrets.token_hex(16), batch_id=batch.id, facility_id=facility_id,
                    user_id=user_id, filename="f.dcm", length=10, offset=5, state=state,
                    created_at=day, updated_at=day, expires_at=day + timedelta(days=1))
    session.add(upload)
    session.commit()
    key = f"{day:%Y/%m/%d}/upload-{upload.id}/chunks/{0:015d}"
    store.put_stream(key, io.BytesIO(b"chunk"))
    return key


def test_only_ended_uploads_lose_their_chunks_and_the_scope_is_kept(session, store, tmp_path):
    north, south = facility_user(session, "Sweep North"), facility_user(session, "Sweep South")
    session.commit()
    now = utcnow()
    day = now - timedelta(days=3)  # past the expiry + 1 day: in the swept partitions
    # An intake backlog: received long ago, still waiting for assembly.
    waiting = _upload_with_chunk(session, store, north, UploadState.RECEIVED, day)
    receiving = _upload_with_chunk(session, store, north, UploadState.RECEIVING, day)
    ended = _upload_with_chunk(session, store, north, UploadState.TERMINATED, day)
    other = _upload_with_chunk(session, store, south, UploadState.EXPIRED, day)
    orphan = f"{day:%Y/%m/%d}/upload-{secrets.token_hex(16)}/chunks/{0:015d}"
    store.put_stream(orphan, io.BytesIO(b"no row at all"))

    result = RunResult()
    sweep_staging(session, store, today=now, options=run_options(tmp_path, facility_ids=(north[0],)),
                  result=result)
    assert store.exists(waiting) and store.exists(receiving)
    assert not store.exists(ended)
    assert store.exists(other)  # another facility's: outside this run
    assert not store.exists(orphan)  # no upload row: nobody's
    assert result.counts["staging_deleted"] == 2

    sweep_staging(session, store, today=now, options=run_options(tmp_path), result=RunResult())
    assert not store.exists(other)
    assert store.exists(waiting) and store.exists(receiving)
