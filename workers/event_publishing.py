"""Events of worker tasks, written into the task's own transaction (the outbox; the relay in
pipeline/ops/outbox.py publishes them after the commit)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from pipeline.delivery.forwarding import ForwardResult
from pipeline.models import ExportDefinition, ExportRun, Notification, Study
from pipeline.ops import events, outbox
from pipeline.reports import notifications


def study_forwarded(session: Session, study_id: int, destination_id: int, result: ForwardResult) -> None:
    """study.forwarded for a forwarding run that changed something, and the dead letters'
    event, committed with the run's last ledger writes."""
    if not (result.delivered or result.failed):
        return
    study = session.get(Study, study_id)
    if study is None:
        return
    out = [events.study_forwarded(study.facility_id, study_id, destination_id, delivered=result.delivered,
                                  failed=result.failed, deferred=result.deferred)]
    if result.failed:  # dead letters: someone has to look at the destination or the data
        out.append(events.dead_lettered(study.facility_id, study_id, destination_id, result.failed))
    outbox.record(session, out)


def export_run_changed(session: Session, run_id: int) -> None:
    """export.run_state_changed for the run's state in this transaction (and export.notification
    when it mailed its recipients just now or failed for good)."""
    session.flush()
    run = session.get(ExportRun, run_id)
    definition = session.get(ExportDefinition, run.export_id) if run else None
    if run is None or definition is None:
        return
    # deliver() stamps notified_at and finished_at with the same moment when it mails.
    notified_now = run.notified_at is not None and run.notified_at == run.finished_at
    outbox.record(session, events.export_run_events(
        definition.facility_id, definition.id, run.id, run.state,
        recipients_notified=len(run.recipients_notified or []), notified_now=notified_now))


def report_events(session: Session, out: list[events.Event]) -> None:
    """report.status_changed events of the report poll, in its transaction."""
    outbox.record(session, out)


def notices(session: Session, rows: list[Notification]) -> None:
    """notification.created for notices a task adds, in its transaction."""
    if not rows:
        return
    session.flush()
    outbox.record(session, [notifications.notice_event(row) for row in rows])
