"""Publishing events from API requests, after the commit that made the change visible.

Never fails a request: the bus logs and goes on (pipeline/events.py ``publish_safely``).
"""

from __future__ import annotations

from api.context import resources
from pipeline import events
from pipeline.models import ReportDefinition, ReportRun, Upload, UploadState


def _bus() -> events.EventBus:
    return events.event_bus(resources().settings.redis_url)


def upload_created(upload: Upload) -> None:
    events.publish_safely(_bus(), events.upload_event(events.UPLOAD_INITIATED, upload))


def chunk_recorded(upload: Upload) -> None:
    """upload.chunk_received, and upload.completed when that chunk was the last."""
    out = [events.upload_event(events.UPLOAD_CHUNK_RECEIVED, upload)]
    if upload.state == UploadState.RECEIVED:
        out.append(events.upload_event(events.UPLOAD_COMPLETED, upload))
    events.publish_safely(_bus(), out)


def report_run_changed(definition: ReportDefinition, run: ReportRun) -> None:
    """report.status_changed for a run the API queued (run now, replay)."""
    events.publish_safely(_bus(), events.report_status_changed(definition.facility_id, definition.id,
                                                               run.id, run.state))
