"""The one place where task chains are composed and enqueued."""

from __future__ import annotations

from collections.abc import Iterable

from celery import chain


def enqueue_upload_chain(upload_id: str) -> None:
    """assemble (intake) -> parse_and_group (dicom); forwarding is dispatched from there."""
    from workers.tasks import assemble_upload, parse_and_group

    chain(assemble_upload.si(upload_id), parse_and_group.si(upload_id)).apply_async()


def enqueue_parse(upload_id: str) -> None:
    """An upload already stored whole (DIMSE intake) starts its chain at parse_and_group."""
    from workers.tasks import parse_and_group

    parse_and_group.delay(upload_id)


def enqueue_forwarding(pairs: Iterable[tuple[int, int]]) -> int:
    """One pacs task per (study, destination)."""
    from workers.tasks import forward_study

    count = 0
    for study_id, destination_id in pairs:
        forward_study.delay(study_id, destination_id)
        count += 1
    return count


def enqueue_batch_dispatch(batch_id: int) -> None:
    from workers.tasks import dispatch_batch

    dispatch_batch.delay(batch_id)


def enqueue_restores() -> None:
    """Start restores now (after the commit that recorded them), not at the next beat poll."""
    from workers.storage_tasks import process_restores

    process_restores.delay()
