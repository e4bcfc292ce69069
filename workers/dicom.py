"""Tasks of the ``dicom`` queue: an assembled upload's header is read and the instance recorded
under its study and series.

Task names are stable (``area.verb_noun``): renaming a module must not orphan queued work.
"""

from __future__ import annotations

from pipeline.dicom import grouping
from pipeline.intake import photos
from pipeline.models import Upload
from workers import chains, runtime
from workers.app import app


# The database away (unreachable, restarting, or SQLite locked by the parse of another file of
# the same instance): the task is idempotent, so trying again is safe, for a minute or two.
@app.task(name="dicom.parse_and_group", max_retries=10, autoretry_for=(OSError, *runtime.DATABASE_AWAY),
          retry_backoff=True, retry_backoff_max=60, retry_jitter=True)
def parse_and_group(upload_id: str) -> None:
    batch_ids: list[int] = []
    with runtime.upload_attempt(upload_id, "parse") as attempt:
        if attempt.go:
            with runtime.session_scope() as session:
                upload = session.get(Upload, upload_id)
                # A phone photo becomes its DICOM instance first; its own bytes (EXIF, GPS)
                # are deleted once that is committed.
                leftovers = photos.convert(session, runtime.store(), upload)
                session.commit()
                for key in leftovers:
                    runtime.store().delete(key)
                grouping.parse_and_group(session, runtime.store(), upload, runtime.spool_dir(),
                                         runtime.parse_limits())
                # A new version may have stopped another batch's work: that batch may be done now.
                batch_ids = grouping.batches_of_versions(session, upload)
    if attempt.batch_id is not None:
        batch_ids = sorted({*batch_ids, attempt.batch_id})
    chains.enqueue_dispatch_if_completed(batch_ids)
