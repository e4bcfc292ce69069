"""Moves: kept objects copied onto themselves in a colder class, many at a time.

Resumable, because the run may be killed at any point: a chunk of copies is announced first
(``moving_to`` committed), so the next run checks those objects with a HEAD and records a
finished copy instead of copying again. With ``managed_by="s3"`` nothing is copied: the bucket
moves the bytes and the class each object is expected to be in is recorded.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pipeline.lifecycle.options import RunResult, TieringOptions
from pipeline.lifecycle.planning import Move
from pipeline.models import ObjectState, StoredObject
from pipeline.storage import ObjectMissing, TieredStore

log = logging.getLogger(__name__)


def _copy(store: TieredStore, key: str, size: int, to_class: str,
          check_first: bool) -> tuple[str, str | None]:
    """One object to ``to_class``: ("moved"|"recovered"|"missing"|"error", detail).

    ``check_first`` for objects a killed run announced: a HEAD tells whether that copy
    already happened, so it is recorded, not repeated."""
    try:
        if check_first:
            head = store.head(key)
            if head.storage_class == to_class:
                store.delete_noncurrent(key, size)
                return "recovered", None
        result = store.copy_to_class(key, to_class, size)
        if result.previous_version_id and result.previous_version_id != result.version_id:
            # With versioning on, the old version would stay billed in its old class.
            store.delete_version(key, result.previous_version_id)
        return "moved", None
    except ObjectMissing:
        return "missing", "object not in storage"
    except Exception as exc:  # noqa: BLE001 - one bad object must not stop the night's run
        return "error", f"{type(exc).__name__}: {exc}"[:500]


def _record(session: Session, outcomes: Iterable[tuple[Move, str, str | None]], now: datetime,
            counts: Counter) -> None:
    done, missing, failed = [], [], []
    for move, verdict, detail in outcomes:
        counts[verdict] += 1
        if verdict in ("moved", "recovered", "expected"):
            counts[f"to_{move.to_class}"] += 1
            done.append({"id": move.object_id, "storage_class": move.to_class, "tiered_at": now,
                         "moving_to": None, "last_error": None, "updated_at": now})
        elif verdict == "missing":
            missing.append({"id": move.object_id, "state": ObjectState.MISSING, "moving_to": None,
                            "last_error": detail, "updated_at": now})
        else:
            failed.append({"id": move.object_id, "moving_to": None, "last_error": detail, "updated_at": now})
    for rows in (done, missing, failed):
        if rows:
            session.execute(update(StoredObject), rows)


def _announce(session: Session, moves: Sequence[Move]) -> None:
    by_class: dict[str, list[int]] = {}
    for move in moves:
        by_class.setdefault(move.to_class, []).append(move.object_id)
    for to_class, ids in by_class.items():
        session.execute(
            update(StoredObject).where(StoredObject.id.in_(ids)).values(moving_to=to_class)
            .execution_options(synchronize_session=False)
        )


def execute_moves(session: Session, store: TieredStore, moves: Sequence[Move], now: datetime, *,
                  options: TieringOptions, checkpoint: Callable[[], None], result: RunResult,
                  check_first: bool = False, deadline: float | None = None) -> None:
    """Announce a chunk, copy it with a pool of threads (S3 calls only, no session in them),
    record the outcomes, commit; chunk after chunk until done or past ``deadline``."""
    with ThreadPoolExecutor(max_workers=max(options.concurrency, 1)) as pool:
        for start in range(0, len(moves), options.chunk):
            if deadline is not None and time.monotonic() > deadline:
                result.more = True
                return
            chunk = moves[start:start + options.chunk]
            if not check_first:
                _announce(session, chunk)
                checkpoint()
            verdicts = pool.map(lambda m: _copy(store, m.object_key, m.size, m.to_class, check_first), chunk)
            _record(session, [(m, *v) for m, v in zip(chunk, verdicts, strict=True)], now, result.counts)
            checkpoint()


def record_expected(session: Session, moves: Sequence[Move], now: datetime, result: RunResult) -> None:
    """``managed_by=s3``: the bucket moves the bytes; we record where they are expected to be."""
    _record(session, [(m, "expected", None) for m in moves], now, Counter())
    result.counts["expected"] += len(moves)
    for move in moves:
        result.counts[f"to_{move.to_class}"] += 1


def resume_moves(session: Session, store: TieredStore, now: datetime, *, options: TieringOptions,
                 checkpoint: Callable[[], None], result: RunResult) -> None:
    """Objects a killed run announced: check each, record or finish its copy."""
    query = select(StoredObject).where(StoredObject.moving_to.is_not(None))
    if options.facility_ids:
        query = query.where(StoredObject.facility_id.in_(options.facility_ids))
    pending = [
        Move(o.id, o.object_key, o.size, o.storage_class, o.moving_to)
        for o in session.scalars(query.order_by(StoredObject.id))
    ]
    if pending:
        log.info("resuming %d announced moves of an interrupted run", len(pending))
        execute_moves(session, store, pending, now, options=options, checkpoint=checkpoint,
                      result=result, check_first=True)
