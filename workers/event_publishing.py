"""Events that workers publish after their commits (pipeline/ops/events.py has the contract)."""

from __future__ import annotations

import logging

from pipeline.delivery.forwarding import ForwardResult
from pipeline.models import ExportDefinition, ExportRun, Study
from pipeline.ops import events
from workers import runtime

log = logging.getLogger(__name__)


def bus() -> events.EventBus:
    return events.event_bus(runtime.settings().redis_url)


def study_forwarded(study_id: int, destination_id: int, result: ForwardResult) -> None:
    """study.forwarded after a forwarding run that changed something; never raises."""
    if not (result.delivered or result.failed):
        return
    try:
        with runtime.session_scope() as session:
            study = session.get(Study, study_id)
            facility_id = study.facility_id if study else None
        if facility_id is None:
            return
        out = [events.study_forwarded(facility_id, study_id, destination_id, delivered=result.delivered,
                                      failed=result.failed, deferred=result.deferred)]
        if result.failed:  # dead letters: someone has to look at the destination or the data
            out.append(events.dead_lettered(facility_id, study_id, destination_id, result.failed))
        events.publish_safely(bus(), out)
    except Exception as exc:  # noqa: BLE001 - the forwarding is committed; the event is a courtesy
        log.warning("study.forwarded not published: %s", type(exc).__name__)


def export_run_changed(run_id: int) -> None:
    """export.run_state_changed for the run's committed state (and export.notification when
    it mailed its recipients just now or failed for good); never raises."""
    try:
        with runtime.session_scope() as session:
            run = session.get(ExportRun, run_id)
            definition = session.get(ExportDefinition, run.export_id) if run else None
            if run is None or definition is None:
                return
            # deliver() stamps notified_at and finished_at with the same moment when it mails.
            notified_now = run.notified_at is not None and run.notified_at == run.finished_at
            out = events.export_run_events(definition.facility_id, definition.id, run.id, run.state,
                                           recipients_notified=len(run.recipients_notified or []),
                                           notified_now=notified_now)
        events.publish_safely(bus(), out)
    except Exception as exc:  # noqa: BLE001 - the run is committed; the event is a courtesy
        log.warning("export.run_state_changed not published: %s", type(exc).__name__)


def report_events(out: list[events.Event]) -> None:
    """report.status_changed events the report poll returned, after its commit; never raises."""
    events.publish_safely(bus(), out)
