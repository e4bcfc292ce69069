"""The one place where task chains are composed and enqueued: the public entry point of the
workers for the API, the CLI and the tasks themselves.

Tasks are named here by their stable names (``area.verb_noun``), never imported: a caller that
enqueues work needs the Celery app and the broker, not the task modules and what they import,
and the task modules can enqueue what follows through this module without an import cycle.
The routes in config send each name to its queue. An operator's shell command may also run a
storage job here, in its own process, to print what the run did (the ``run_*_here`` functions).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from celery import chain
from sqlalchemy import select

from pipeline.models import Batch, BatchState
from pipeline.ops import events
from pipeline.ops.outbox import Outgoing
from workers import runtime
from workers.app import app, load_tasks


def _task(name: str, *args: object):  # noqa: ANN202 - a celery Signature
    return app.signature(name, args=args, immutable=True)


def enqueue_upload_chain(upload_id: str) -> None:
    """assemble (intake) -> parse_and_group (dicom); forwarding is dispatched from there."""
    chain(_task("intake.assemble_upload", upload_id), _task("dicom.parse_and_group", upload_id)).apply_async()


def enqueue_parse(upload_id: str) -> None:
    """An upload already stored whole (DIMSE intake) starts its chain at parse_and_group."""
    _task("dicom.parse_and_group", upload_id).apply_async()


def after_events(batch: Sequence[Outgoing]) -> None:
    """Every event relay's follow-up (pipeline.ops.outbox.FollowUp): the uploads whose
    ``upload.completed`` went out in this batch start their chains, through one task message
    for the batch (``intake.start_uploads``) instead of one publish per upload on the
    request that completed it."""
    completed = {item.data["upload_id"]: item.data.get("request_id") for item in batch
                 if item.type == events.UPLOAD_COMPLETED and item.data.get("upload_id")}
    if completed:
        start_uploads(completed)


def start_uploads(uploads: dict[str, str | None]) -> None:
    """One task that starts each upload's chain at its step (workers.intake.start_uploads);
    ``uploads``: upload id -> the id of the request that completed it (or None), carried onto
    its chain's tasks; in the order the uploads completed."""
    _task("intake.start_uploads", dict(uploads)).apply_async()


# The workers' own relays (workers.runtime, which this module imports) hand their batches here
# too: a worker's relay may send the API's committed rows.
runtime.use_follow_up(after_events)


def enqueue_forwarding(pairs: Iterable[tuple[int, int]]) -> int:
    """One pacs task per (study, destination)."""
    count = 0
    for study_id, destination_id in pairs:
        _task("pacs.forward_study", study_id, destination_id).apply_async()
        count += 1
    return count


def enqueue_batch_dispatch(batch_id: int) -> None:
    _task("pacs.dispatch_batch", batch_id).apply_async()


def enqueue_dispatch_if_completed(batch_ids: list[int]) -> None:
    """Read after the caller's commit: if the client already completed the batch, this change
    may have been the last one it waited for (completion itself also dispatches); if the
    batch's forwarding already started, the file recorded now goes out on its own."""
    with runtime.session_scope() as session:
        completed = session.scalars(select(Batch.id).where(
            Batch.id.in_(batch_ids),
            Batch.state.in_([BatchState.COMPLETED, BatchState.FORWARDING, BatchState.DONE]),
        )).all()
    for batch_id in completed:
        enqueue_batch_dispatch(batch_id)


def enqueue_restores() -> None:
    """Start restores now (after the commit that recorded them), not at the next beat poll."""
    _task("storage.process_restores").apply_async()


def enqueue_export_run(run_id: int) -> None:
    """Build and send one export run (queue ``exports``), after the commit that created it."""
    _task("exports.run_export", run_id).apply_async()


def _run_here(signature):  # noqa: ANN001, ANN202 - a celery Signature; the task's result
    # The task's own code, called in this process (no broker round trip, no worker); work it
    # enqueues, such as the continuation of a long lifecycle run, still goes to the workers.
    load_tasks()
    return app.tasks[signature.task](*signature.args, **signature.kwargs)


def run_lifecycle_here(now: str | None = None, facility_ids: list[int] | None = None) -> dict:
    """The nightly storage lifecycle, run now in the calling process (``relaypacs storage tier``)."""
    return _run_here(_task("storage.run_lifecycle", now, facility_ids))


def run_replication_here() -> dict:
    """The DR copy, run now in the calling process (``relaypacs storage replicate``)."""
    return _run_here(_task("storage.replicate"))


def enqueue_notice_mail(notification_ids: list[int]) -> None:
    """Mail the notices whose recipients want each one (queue ``exports``), after the commit
    that created them."""
    if notification_ids:
        _task("consults.mail_notices", list(notification_ids)).apply_async()


def enqueue_addendum_filing(addendum_id: int) -> None:
    """Make the addendum's DICOM instance and forward it, after the commit that added it."""
    _task("consults.file_addendum", addendum_id).apply_async()


def enqueue_teaching_case(case_id: int) -> None:
    """Fill a teaching case from its source study (queue teaching)."""
    _task("teaching.prepare_case", case_id).apply_async()


def enqueue_teaching_mask(instance_id: int, regions: list[list[int]]) -> None:
    _task("teaching.mask_instance", instance_id, regions).apply_async()


def enqueue_teaching_package(case_id: int) -> None:
    _task("teaching.refresh_package", case_id).apply_async()
