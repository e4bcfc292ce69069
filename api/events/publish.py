"""Publishing events from API requests, after the commit that made the change visible.

Never fails a request: the bus logs and goes on (pipeline/ops/events.py ``publish_safely``).
"""

from __future__ import annotations

import dataclasses

from api.http.context import resources
from pipeline.models import ExportDefinition, ExportRun, Upload, UploadState
from pipeline.ops import events


def _bus() -> events.EventBus:
    return events.event_bus(resources().settings.redis_url)


def upload_created(upload: Upload, first_chunk: bool = False) -> None:
    """upload.initiated; with ``first_chunk`` (creation-with-upload, whose row is added with
    its chunk already in) the chunk's events follow it, and initiated says offset 0."""
    initiated = events.upload_event(events.UPLOAD_INITIATED, upload)
    if not first_chunk:
        events.publish_safely(_bus(), initiated)
        return
    initiated = dataclasses.replace(initiated, data={**initiated.data, "offset": 0})
    events.publish_safely(_bus(), [initiated, *_chunk_events(upload)])


def _chunk_events(upload: Upload) -> list[events.Event]:
    out = [events.upload_event(events.UPLOAD_CHUNK_RECEIVED, upload)]
    # A whole file in one body is recorded ASSEMBLED at once (pipeline/intake/uploads.py).
    if upload.state in (UploadState.RECEIVED, UploadState.ASSEMBLED):
        out.append(events.upload_event(events.UPLOAD_COMPLETED, upload))
    return out


def chunk_recorded(upload: Upload) -> None:
    """upload.chunk_received, and upload.completed when that chunk was the last."""
    events.publish_safely(_bus(), _chunk_events(upload))


def export_run_changed(definition: ExportDefinition, run: ExportRun) -> None:
    """export.run_state_changed for a run the API queued (run now, replay)."""
    events.publish_safely(_bus(), events.export_run_state_changed(definition.facility_id, definition.id,
                                                                  run.id, run.state))


def report_events(out: list[events.Event]) -> None:
    """report.status_changed (and any other radiology-report events) after the commit."""
    events.publish_safely(_bus(), out)
