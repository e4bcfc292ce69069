"""Scheduled export tasks (queue ``exports``, routed by ``exports.*``): the per-minute
dispatcher beat runs, and one task per report run. Thin adapters over pipeline/exports/runs.py.

``now`` (ISO 8601) lets tests and operators dispatch as of a given time; unset, real time.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime

from pipeline.exports import mail as export_delivery
from pipeline.exports import runs as export_runs
from pipeline.exports.formats.sheet_xml import SheetTooLarge
from pipeline.models import ExportRun, utcnow
from workers import runtime
from workers.app import app
from workers.event_publishing import export_run_changed

log = logging.getLogger(__name__)


def clock(now: str | None) -> datetime:
    if not now:
        return utcnow()
    parsed = datetime.fromisoformat(now)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.task(name="exports.dispatch_due", acks_late=False)
def dispatch_due(now: str | None = None) -> dict:
    """Create due runs (unique per report and slot) and re-queue stuck ones; enqueue after
    the commit. Not acks_late: a lost tick is the next minute's work."""
    moment = clock(now)
    settings = runtime.settings()
    with runtime.session_scope() as session:
        recovered = export_runs.recover_stuck(session, moment, settings.export_working_timeout_seconds)
        created = export_runs.dispatch_due(session, moment)
    for run_id in (*created, *recovered):
        export_run_changed(run_id)  # before the task can move it on to "working"
        run_export.delay(run_id)
    return {"created": created, "recovered": recovered}


@app.task(name="exports.run_export", bind=True, max_retries=None, acks_late=True)
def run_export(self, run_id: int) -> dict:  # noqa: ANN001
    """Claim, build (once), mail (once). Retry policy: the run row counts attempts; a
    retryable failure comes back after exponential backoff with jitter, up to
    RELAYPACS_EXPORT_MAX_ATTEMPTS, then the run is failed with its reason (replayable)."""
    settings = runtime.settings()
    store = runtime.store()
    with runtime.session_scope() as session:
        if not export_runs.claim(session, run_id, utcnow(), settings.export_working_timeout_seconds):
            return {"run": run_id, "skipped": True}
    export_run_changed(run_id)
    try:
        with runtime.session_scope() as session:
            run = session.get_one(ExportRun, run_id)
            if not run.artifacts:
                export_runs.build_artifacts(session, store, run)
        with runtime.session_scope() as session:
            smtp = export_delivery.Smtp.from_url(settings.smtp_url) if settings.smtp_url else None
            export_runs.deliver(session, store, session.get_one(ExportRun, run_id), smtp,
                                settings.mail_from, settings.export_attachment_limit_bytes,
                                settings.export_link_ttl_seconds, utcnow())
    except Exception as exc:
        with runtime.session_scope() as session:
            attempts = session.get_one(ExportRun, run_id).attempts
            # A refused mail or a sheet Excel cannot hold fails the same way every time.
            final = (isinstance(exc, export_delivery.DeliveryFailed | SheetTooLarge)
                     or attempts >= settings.export_max_attempts)
            export_runs.record_failure(session, run_id, f"{type(exc).__name__}: {exc}", utcnow(), final)
        export_run_changed(run_id)
        log.warning("report run %s attempt %s failed (%s): %s", run_id, attempts,
                    "final" if final else "will retry", exc)
        if final:
            return {"run": run_id, "state": "failed"}
        delay = export_runs.backoff_seconds(attempts, settings.export_retry_base_seconds)
        raise self.retry(countdown=delay + random.uniform(0, delay / 4), exc=exc) from exc
    export_run_changed(run_id)
    return {"run": run_id, "state": "succeeded"}
