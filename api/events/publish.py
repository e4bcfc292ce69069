"""Events of API requests, written into the request's transaction (the outbox).

Each function adds the events to the session before the caller commits, so the change and
its events commit (or roll back) together; the process's relay publishes them right after
the commit (pipeline/ops/outbox.py), so a request never waits for Redis or a broker.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy import Insert
from sqlalchemy.orm import Session

from config.logging import request_id
from pipeline.models import ExportDefinition, ExportRun, Notification, ReportComment, Upload, UploadState
from pipeline.ops import events, outbox
from pipeline.reports import notifications


def upload_created(session: Session, upload: Upload, first_chunk: bool = False) -> None:
    """upload.initiated; with ``first_chunk`` (creation-with-upload, whose row is added with
    its chunk already in) the chunk's events follow it, and initiated says offset 0."""
    session.flush()  # the upload's id
    outbox.record(session, created_events(upload, first_chunk))


def created_events(upload: Upload, first_chunk: bool) -> list[events.Event]:
    """:func:`upload_created`'s events, for a caller that writes them in its own statement
    (pipeline.intake.uploads.insert_checked_upload). An upload complete as it is created (an
    empty file) is also completed: that event starts its chain (workers.chains.after_events)."""
    initiated = events.upload_event(events.UPLOAD_INITIATED, upload)
    if not first_chunk:
        return [initiated, *_completed(upload)]
    initiated = dataclasses.replace(initiated, data={**initiated.data, "offset": 0})
    return [initiated, *_chunk_events(upload)]


def initiated_statement(session: Session, upload: Upload) -> Insert | None:
    """upload.initiated (and upload.completed for an empty file) as an outbox INSERT the
    caller sends with the upload's own INSERT in one statement
    (pipeline.intake.uploads.insert_upload), in the same transaction."""
    return outbox.record_statement(session, created_events(upload, first_chunk=False))


def _chunk_events(upload: Upload) -> list[events.Event]:
    return [events.upload_event(events.UPLOAD_CHUNK_RECEIVED, upload), *_completed(upload)]


def _completed(upload: Upload) -> list[events.Event]:
    # A whole file in one body is recorded ASSEMBLED at once (pipeline/intake/uploads.py).
    if upload.state not in (UploadState.RECEIVED, UploadState.ASSEMBLED):
        return []
    completed = events.upload_event(events.UPLOAD_COMPLETED, upload)
    # The chain starts from this event in whichever process relays it: the id of the request
    # that completed the file rides on it so the tasks it causes log that id (config.logging).
    current = request_id.get()
    if current:
        completed = dataclasses.replace(completed, data={**completed.data, "request_id": current})
    return [completed]


def chunk_recorded(session: Session, upload: Upload) -> None:
    """upload.chunk_received, and upload.completed when that chunk was the last (its chain
    starts from that committed event: workers.chains.after_events)."""
    outbox.record(session, _chunk_events(upload))


def export_run_changed(session: Session, definition: ExportDefinition, run: ExportRun) -> None:
    """export.run_state_changed for a run the API queued (run now, replay)."""
    session.flush()  # the run's id
    outbox.record(session, events.export_run_state_changed(definition.facility_id, definition.id,
                                                           run.id, run.state))


def report_events(session: Session, out: list[events.Event]) -> None:
    """report.status_changed (and any other radiology-report events), in the change's transaction."""
    outbox.record(session, out)


def comment_created(session: Session, comment: ReportComment, notices: list[Notification]) -> None:
    """comment.created, then notification.created for each recipient, in the comment's transaction."""
    session.flush()  # the comment's and the notices' ids
    out = [events.comment_created(comment.facility_id, comment.report_id, comment.id,
                                  comment.author_id, comment.version)]
    out += [notifications.notice_event(n) for n in notices]
    outbox.record(session, out)


def notices(session: Session, rows: list[Notification]) -> None:
    """notification.created for notices, in the transaction that adds them."""
    if rows:
        session.flush()
        outbox.record(session, [notifications.notice_event(n) for n in rows])
