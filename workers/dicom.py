"""Tasks of the ``dicom`` queue: an assembled upload's header is read and the instance recorded
under its study and series.

Task names are stable (``area.verb_noun``): renaming a module must not orphan queued work.
"""

from __future__ import annotations

from pipeline.dicom import grouping
from pipeline.models import Upload
from workers import chains, runtime
from workers.app import app


@app.task(name="dicom.parse_and_group", max_retries=10, autoretry_for=(OSError, *runtime.DATABASE_AWAY),
          retry_backoff=True, retry_backoff_max=60, retry_jitter=True)
def parse_and_group(upload_id: str) -> None:
    with runtime.session_scope() as session:
        upload = session.get(Upload, upload_id)
        if upload is None:
            return
        grouping.parse_and_group(session, runtime.store(), upload, runtime.spool_dir())
        batch_id = upload.batch_id
    chains.enqueue_dispatch_if_completed([batch_id])
