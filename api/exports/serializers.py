"""How export definitions and their runs answer over HTTP: the JSON shapes of /api/v1/exports
(the QA managers' scheduled export builder)."""

from __future__ import annotations

from pipeline.models import ExportDefinition, ExportRun


def run_json(run: ExportRun) -> dict:
    return {
        "id": run.id, "export_id": run.export_id, "run_key": run.run_key, "trigger": run.trigger,
        "due_at": run.due_at.isoformat(),
        "period_start": run.period_start.isoformat() if run.period_start else None,
        "period_end": run.period_end.isoformat() if run.period_end else None,
        "state": run.state, "attempts": run.attempts,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "error": run.error, "files": sorted(run.artifacts or {}), "bytes": run.artifact_bytes,
        "recipients_notified": run.recipients_notified or [], "delivery": run.delivery,
    }


def definition_json(definition: ExportDefinition) -> dict:
    return {
        "id": definition.id, "facility_id": definition.facility_id, **definition.spec,
        "cron": definition.cron,
        "next_due_at": definition.next_due_at.isoformat() if definition.next_due_at else None,
        "created_at": definition.created_at.isoformat(), "updated_at": definition.updated_at.isoformat(),
    }
