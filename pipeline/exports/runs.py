"""Report runs in the database: saving definitions, dispatching due reports, claiming,
building, delivering and recording each run.

Guarantees, and where they come from:
- one run per report and due time, however many dispatchers: ``export_runs.run_key`` is
  unique, and the insert happens in a SAVEPOINT that is dropped on conflict;
- a missed slot (the beat was down) runs once, late: the dispatcher runs the latest slot
  at or before now, then moves ``next_due_at`` past now;
- a run left "working" by a dead worker is queued again after the working timeout;
- one mail per run: ``notified_at`` is committed with the send, and artifacts are kept on
  the run so a retry after a mail failure re-sends the same files instead of rebuilding.
Callers own the transactions (commit after each step); ``now`` is always passed in.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.exports import data as export_data
from pipeline.exports import mail as export_delivery
from pipeline.exports.definitions import ExportSpec, period_bounds, period_label, slug
from pipeline.exports.formats.pdf import write_pdf
from pipeline.exports.formats.xlsx import write_csv, write_xlsx
from pipeline.exports.schedule import latest_due, next_due, run_key
from pipeline.models import ExportDefinition, ExportRun, ExportRunState

# ------------------------------------------------------------------------- definitions


def spec_of(definition: ExportDefinition) -> ExportSpec:
    return ExportSpec.model_validate(definition.spec)


def save_definition(session: Session, definition: ExportDefinition, spec: ExportSpec,
                    now: datetime) -> ExportDefinition:
    """Apply ``spec`` and reschedule from ``now`` (a changed schedule takes effect at once)."""
    definition.name = spec.name
    definition.spec = spec.model_dump(mode="json")
    definition.cron = spec.cron
    definition.timezone = spec.timezone
    definition.enabled = spec.enabled
    definition.next_due_at = next_due(spec.cron, spec.timezone, now) if spec.enabled else None
    definition.updated_at = now
    session.add(definition)
    session.flush()
    return definition


def facility_ids(definition: ExportDefinition, spec: ExportSpec) -> list[int]:
    return spec.filters.facility_ids or [definition.facility_id]


# ------------------------------------------------------------------------- dispatching


def _insert_run(session: Session, definition: ExportDefinition, due: datetime, trigger: str,
                key: str, now: datetime) -> ExportRun | None:
    spec = spec_of(definition)
    start, end = period_bounds(spec.filters.period, due, spec.timezone)
    run = ExportRun(export_id=definition.id, run_key=key, trigger=trigger, due_at=due,
                    period_start=start, period_end=end, state=ExportRunState.QUEUED,
                    artifacts={}, recipients_notified=[], created_at=now)
    try:
        with session.begin_nested():
            session.add(run)
    except IntegrityError:
        # Another dispatcher created this run first: theirs is the one that gets sent.
        return None
    return run


def dispatch_due(session: Session, now: datetime) -> list[int]:
    """Create the runs that are due; returns their ids, to enqueue after the commit."""
    created: list[int] = []
    due_definitions = session.scalars(
        select(ExportDefinition).where(ExportDefinition.enabled.is_(True),
                                       ExportDefinition.next_due_at <= now)
        .order_by(ExportDefinition.next_due_at)).all()
    for definition in due_definitions:
        due = latest_due(definition.cron, definition.timezone, now) or definition.next_due_at
        due = max(due, definition.next_due_at)  # type: ignore[type-var]
        run = _insert_run(session, definition, due, "schedule", run_key(definition.id, due), now)
        if run is not None:
            created.append(run.id)
        definition.next_due_at = next_due(definition.cron, definition.timezone, now)
    session.flush()
    return created


def run_now(session: Session, definition: ExportDefinition, now: datetime) -> ExportRun:
    """A manual run for the period the report would cover if it were due now."""
    key = f"export-{definition.id}@manual-{now:%Y%m%dT%H%M%S.%f}"
    run = _insert_run(session, definition, now, "manual", key, now)
    if run is None:  # pragma: no cover - the key has microseconds
        raise RuntimeError("a manual run with this key exists")
    return run


def recover_stuck(session: Session, now: datetime, timeout_seconds: int) -> list[int]:
    """Queue again runs whose worker vanished (working, retrying, or queued and never picked
    up, longer than the timeout); returns their ids to enqueue."""
    limit = now - timedelta(seconds=timeout_seconds)
    stuck = session.scalars(select(ExportRun).where(or_(
        # Working (worker died) or retrying (its delayed retry message was lost) too long.
        ExportRun.state.in_([ExportRunState.WORKING, ExportRunState.RETRYING])
        & (ExportRun.started_at < limit),
        (ExportRun.state == ExportRunState.QUEUED) & (ExportRun.created_at < limit)))
        # claim() updates without loading: rows already in this session may be stale.
        .execution_options(populate_existing=True)).all()
    for run in stuck:
        if run.state == ExportRunState.WORKING:
            run.error = f"worker lost: still working after {timeout_seconds} s, queued again"
        run.state = ExportRunState.QUEUED
        run.created_at = now
    session.flush()
    return [run.id for run in stuck]


def replay(session: Session, run: ExportRun, now: datetime) -> None:
    """Queue a failed run again (after fixing the mail server, say), with fresh attempts."""
    run.state = ExportRunState.QUEUED
    run.attempts = 0
    run.created_at = now
    run.finished_at = None
    session.flush()


# ---------------------------------------------------------------------------- running


def claim(session: Session, run_id: int, now: datetime, timeout_seconds: int) -> bool:
    """Take the run for this worker: one conditional UPDATE, so of two deliveries of the
    same task (or a recovered one) only one proceeds."""
    stale = now - timedelta(seconds=timeout_seconds)
    result = session.execute(
        update(ExportRun).where(ExportRun.id == run_id, or_(
            ExportRun.state.in_([ExportRunState.QUEUED, ExportRunState.RETRYING]),
            (ExportRun.state == ExportRunState.WORKING) & (ExportRun.started_at < stale)))
        .values(state=ExportRunState.WORKING, started_at=now, attempts=ExportRun.attempts + 1)
        .execution_options(synchronize_session=False))
    return result.rowcount == 1


def file_names(definition: ExportDefinition, run: ExportRun, spec: ExportSpec,
               sections: Sequence[str]) -> dict[str, str]:
    """Attachment names carry the report name and the period (no bare "export.xlsx")."""
    base = f"{slug(definition.name)}_{period_label(run.period_start, run.period_end, spec.timezone)}"
    names: dict[str, str] = {}
    for fmt in spec.formats:
        if fmt == "csv":
            for title in sections:
                names[f"csv:{title}"] = f"{base}_{slug(title)}.csv"
        else:
            names[fmt] = f"{base}.{fmt}"
    return names


def build_artifacts(session: Session, store: object, run: ExportRun) -> dict[str, str]:
    """Build every format into a temporary folder and store it; returns {file name: key}.
    Stored under a key unique to the run, so a second attempt overwrites, never duplicates."""
    definition = session.get_one(ExportDefinition, run.export_id)
    spec = spec_of(definition)
    data = export_data.build(session, spec, facility_ids(definition, spec), run.period_start,
                             run.period_end)
    names = file_names(definition, run, spec, [s.title for s in data.sections])
    prefix = f"exports/{definition.facility_id}/export-{definition.id}/run-{run.id}"
    keys: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="relaypacs-export-") as folder:
        for kind, filename in names.items():
            path = Path(folder) / filename
            if kind == "xlsx":
                write_xlsx(data, path)
            elif kind == "pdf":
                write_pdf(data, path)
            else:
                section = next(s for s in data.sections if f"csv:{s.title}" == kind)
                write_csv(section, path)
            key = f"{prefix}/{filename}"
            store.put_file(key, path)  # type: ignore[attr-defined]
            keys[filename] = key
    run.artifacts = keys
    run.artifact_bytes = sum(store.size(k) for k in keys.values())  # type: ignore[attr-defined]
    session.flush()
    return keys


def deliver(session: Session, store: object, run: ExportRun, smtp: export_delivery.Smtp | None,
            sender: str, attachment_limit: int, link_ttl: int, now: datetime) -> None:
    """Mail the run's files (once), then mark it succeeded."""
    definition = session.get_one(ExportDefinition, run.export_id)
    spec = spec_of(definition)
    if spec.recipients and run.notified_at is None:
        if smtp is None:
            raise export_delivery.DeliveryFailed("no SMTP server configured (RELAYPACS_SMTP_URL)")
        period = period_label(run.period_start, run.period_end, spec.timezone)
        subject = f"{definition.name} - {period}"
        body = [f"The report {definition.name!r} for {period} ({spec.timezone}).", ""]
        with tempfile.TemporaryDirectory(prefix="relaypacs-mail-") as folder:
            attachments: list[export_delivery.Attachment] = []
            if run.artifact_bytes <= attachment_limit:
                for filename, key in run.artifacts.items():
                    path = Path(folder) / filename
                    with store.open(key) as source, path.open("wb") as target:  # type: ignore[attr-defined]
                        target.write(source.read())
                    attachments.append(export_delivery.Attachment(filename, path))
                run.delivery = "attachment"
                body.append("The files are attached.")
            else:
                hours = min(link_ttl, export_delivery.PRESIGNED_MAX_SECONDS) // 3600
                body.append(f"The files are too large to attach; these links work for {hours} hours:")
                for filename, key in run.artifacts.items():
                    url = export_delivery.presigned_url(store, key, link_ttl) or (
                        f"/api/v1/exports/{definition.id}/runs/{run.id}/files/{filename}")
                    body.append(f"- {filename}: {url}")
                run.delivery = "link"
            message = export_delivery.compose(sender, spec.recipients, subject, "\n".join(body),
                                              attachments)
            accepted = export_delivery.send(smtp, message)
        run.recipients_notified = accepted
        run.notified_at = now
    elif not spec.recipients:
        run.delivery = "none"
    run.state = ExportRunState.SUCCEEDED
    run.error = None
    run.finished_at = now
    session.flush()


def record_failure(session: Session, run_id: int, error: str, now: datetime, final: bool) -> None:
    run = session.get_one(ExportRun, run_id)
    run.error = error[:2000]
    run.state = ExportRunState.FAILED if final else ExportRunState.RETRYING
    if final:
        run.finished_at = now
    session.flush()


def backoff_seconds(attempt: int, base: int, cap: int = 3600) -> int:
    """60 s, 120 s, 240 s ... (base doubled per attempt), capped; jitter is the task's."""
    return int(min(cap, base * 2 ** max(attempt - 1, 0)))


def latest_runs(session: Session, export_id: int, limit: int = 50) -> list[ExportRun]:
    return list(session.scalars(select(ExportRun).where(ExportRun.export_id == export_id)
                                .order_by(ExportRun.due_at.desc(), ExportRun.id.desc()).limit(limit)))
