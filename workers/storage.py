"""Storage lifecycle tasks (queue ``storage``, routed by ``storage.*``): the nightly tiering
run, the restore poller and the disaster-recovery copy. Each is a thin adapter over
pipeline/lifecycle/tiering.py, pipeline/lifecycle/restore.py and pipeline/lifecycle/replication.py.

``now`` (ISO 8601) is the clock the lifecycle decides with: unset, the real time; tests and
benchmarks move it forward. Every task holds its job's lock, records a run, and is safe to
run twice or to be killed half way: the next run picks up where it stopped.
"""

from __future__ import annotations

import logging
from functools import cache

from celery.signals import worker_process_init

from pipeline.delivery import forwarding
from pipeline.lifecycle import replication, restore, tiering
from pipeline.lifecycle import runs as storage_runs
from pipeline.lifecycle.job_options import clock, tiering_options
from pipeline.storage import TieredStore, open_s3_store, open_store
from workers import chains, runtime
from workers.app import app

log = logging.getLogger(__name__)

# A restore pass asked for while another runs comes back after this long.
RESTORE_RECHECK_SECONDS = 5.0


@cache
def dr_store() -> TieredStore | None:
    cfg = runtime.settings()
    if not cfg.dr_storage_url:
        return None
    if cfg.dr_storage_url.startswith("s3://"):
        return open_s3_store(cfg.dr_storage_url, endpoint_url=cfg.dr_endpoint_url,
                             access_key_id=cfg.dr_access_key_id,
                             secret_access_key=cfg.dr_secret_access_key, region=cfg.dr_region)
    return open_store(cfg.dr_storage_url)  # type: ignore[return-value]


@worker_process_init.connect
def _fresh_dr_client(**_: object) -> None:
    dr_store.cache_clear()


@app.task(name="storage.run_lifecycle", acks_late=True, max_retries=3, autoretry_for=(OSError,),
          retry_backoff=30, retry_jitter=True)
def run_lifecycle(now: str | None = None, facility_ids: list[int] | None = None) -> dict:
    """The nightly run: catalogue, bundle, tier, expire leftovers, clean staging."""
    options = tiering_options(runtime.settings(), facility_ids)
    at = clock(now)
    with runtime.session_scope() as session, storage_runs.exclusive(session, "lifecycle") as mine:
        if not mine:
            log.info("storage lifecycle already running elsewhere; this run stops")
            return {"skipped": "already running"}
        run = storage_runs.start(session, "lifecycle", at)
        session.commit()
        try:
            result = tiering.run(session, runtime.store(), options, at, checkpoint=session.commit)
        except Exception as exc:
            session.rollback()
            storage_runs.finish(run, {}, "failed", f"{type(exc).__name__}: {exc}"[:1000])
            session.commit()
            raise
        storage_runs.finish(run, result.as_dict())
    if result.more:
        run_lifecycle.apply_async(kwargs={"now": now, "facility_ids": facility_ids})
    return result.as_dict()


@app.task(name="storage.process_restores", acks_late=True, max_retries=5, autoretry_for=(OSError,),
          retry_backoff=True, retry_jitter=True)
def process_restores(now: str | None = None) -> dict:
    """Start, poll and complete restores; parked deliveries go out again when back."""
    cfg = runtime.settings()
    at = clock(now)
    with runtime.session_scope() as session, storage_runs.exclusive(session, "restores") as mine:
        if not mine:
            # The running pass may have read its requests before ours was committed: come back
            # shortly rather than leave it to the beat poll (a forward waits on it).
            if restore.has_unstarted(session):
                process_restores.apply_async(kwargs={"now": now}, countdown=RESTORE_RECHECK_SECONDS)
            return {"skipped": "already running"}
        run = storage_runs.start(session, "restores", at)
        result = restore.process(session, runtime.store(), replay=forwarding.replay, now=at,
                                 days=cfg.storage_restore_days, checkpoint=session.commit)
        storage_runs.finish(run, result.as_dict())
    chains.enqueue_forwarding(result.forwards)  # after the commit that made them pending
    return result.as_dict()


@app.task(name="storage.replicate", acks_late=True, max_retries=5, autoretry_for=(OSError,),
          retry_backoff=True, retry_jitter=True)
def replicate(now: str | None = None, facility_ids: list[int] | None = None, audit: int = 200) -> dict:
    """Copy kept objects to the DR bucket (verified), mirror bundling there, audit old copies."""
    cfg = runtime.settings()
    dr = dr_store()
    if dr is None:
        return {"skipped": "no DR bucket configured"}
    at = clock(now)
    with runtime.session_scope() as session, storage_runs.exclusive(session, "replicate") as mine:
        if not mine:
            return {"skipped": "already running"}
        run = storage_runs.start(session, "replicate", at)
        session.commit()
        counts = replication.replicate(
            session, runtime.store(), dr, storage_class=cfg.dr_storage_class, spool_dir=runtime.spool_dir(),
            checkpoint=session.commit, now=at, concurrency=cfg.storage_tier_concurrency,
            facility_ids=facility_ids)
        if audit:
            counts.update(replication.audit(session, dr, now=at, limit=audit, checkpoint=session.commit))
        storage_runs.finish(run, dict(counts))
    return dict(counts)
