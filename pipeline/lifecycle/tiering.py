"""The nightly storage lifecycle run: catalogue new instances, bundle small ones, move what
is due to a colder class, expire what a move or a restore left behind, delete renditions past
their days, clean up staging.

This module composes the steps, each in its own module: catalogue.py, planning.py (what is
due), bundling.py, moves.py, cleanup.py, bucket_rules.py. Every step is idempotent and
resumable, because the run may be killed at any point: announced copies and ``writing``
bundles left by a killed run are finished before anything new is planned.

With ``managed_by="s3"`` the bucket's own lifecycle rules move objects; the run writes those
rules, still bundles small instances (S3 skips objects under 128 KB), and records the class
each object is expected to be in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from pipeline.lifecycle import planning
from pipeline.lifecycle.bucket_rules import ensure_bucket_setup
from pipeline.lifecycle.bundling import make_bundles, release_bundled, resume_bundles
from pipeline.lifecycle.catalogue import catalogue_new
from pipeline.lifecycle.cleanup import expire_rehydrated, expire_renditions, sweep_staging
from pipeline.lifecycle.moves import execute_moves, record_expected, resume_moves
from pipeline.lifecycle.options import RunResult as RunResult
from pipeline.lifecycle.options import TieringOptions as TieringOptions
from pipeline.models import utcnow
from pipeline.storage import TieredStore


def run(session: Session, store: TieredStore, options: TieringOptions, now: datetime, *,
        checkpoint: Callable[[], None], dry_run: bool = False) -> RunResult:
    """The whole nightly run at clock ``now``. ``checkpoint`` commits."""
    result = RunResult()
    deadline = time.monotonic() + options.max_seconds if options.max_seconds else None

    def decide() -> planning.Plan:
        return planning.plan(session, options.policy, now, bundle_below=options.bundle_below,
                              bundle_max_bytes=options.bundle_max_bytes,
                              facility_ids=options.facility_ids, limit=options.plan_limit)

    if dry_run:
        # Plan over the catalogue as the run would see it, then take nothing back with us.
        savepoint = session.begin_nested()
        result.counts["catalogued"] = catalogue_new(session, facility_ids=options.facility_ids)
        decided = decide()
        savepoint.rollback()
        result.plan = decided.summary()
        return result
    with result.timed("catalogue"):
        result.counts["catalogued"] = catalogue_new(session, facility_ids=options.facility_ids)
        checkpoint()
    with result.timed("resume"):
        result.counts.update({f"setup_{k}": int(v) for k, v in ensure_bucket_setup(store, options).items()})
        resume_bundles(session, store, now, options=options, checkpoint=checkpoint, result=result)
        release_bundled(session, store, now, options=options, checkpoint=checkpoint, result=result)
        resume_moves(session, store, now, options=options, checkpoint=checkpoint, result=result)
    with result.timed("plan"):
        decided = decide()
    # A backlog larger than one plan (a first run over years of data): the task comes back.
    result.more = len(decided.moves) + sum(len(b.member_ids) for b in decided.bundles) >= options.plan_limit
    with result.timed("bundles"):
        make_bundles(session, store, decided.bundles, now, options=options, checkpoint=checkpoint,
                     result=result, deadline=deadline)
        release_bundled(session, store, now, options=options, checkpoint=checkpoint, result=result)
    with result.timed("moves"):
        if options.managed_by == "s3":
            record_expected(session, decided.moves, now, result)
            checkpoint()
        else:
            execute_moves(session, store, decided.moves, now, options=options, checkpoint=checkpoint,
                          result=result, deadline=deadline)
    with result.timed("cleanup"):
        expire_rehydrated(session, store, now, options=options, checkpoint=checkpoint, result=result)
        expire_renditions(session, store, now, options=options, checkpoint=checkpoint, result=result)
        # Staging and multipart uploads are real, in-flight things: the wall clock, not ``now``.
        wall = utcnow()
        sweep_staging(session, store, today=wall, options=options, result=result)
        result.counts["multipart_aborted"] = store.abort_stale_multipart(
            wall - timedelta(days=options.abort_multipart_days))
        checkpoint()
    return result
