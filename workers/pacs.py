"""Tasks of the ``pacs`` queue: a completed (or quiet) batch is planned into deliveries, and each
study goes to each destination, exactly once per instance.

Task names are stable (``area.verb_noun``): renaming a module must not orphan queued work.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from pipeline.delivery import forwarding, routing
from pipeline.delivery.destinations import sender_for
from pipeline.intake import batches as batch_progress
from pipeline.models import Batch, Delivery, Destination
from workers import chains, event_publishing, runtime, sender_heartbeats
from workers.app import app


@app.task(name="pacs.dispatch_batch", max_retries=10, autoretry_for=runtime.DATABASE_AWAY,
          retry_backoff=True, retry_backoff_max=30, retry_jitter=True)
def dispatch_batch(batch_id: int) -> int:
    """A completed batch whose uploads are all settled goes to forwarding, exactly once; in a
    batch already forwarding, a file recorded since (a straggler, a chosen version) goes out
    on its own."""
    with runtime.session_scope() as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            return 0
        if batch_progress.claim_completed_batch(session, batch_id):
            session.refresh(batch)  # the claim's UPDATE bypassed the loaded row
            pairs = routing.plan_deliveries(session, batch)
        elif batch_progress.forwarding_started(batch):
            pairs = routing.plan_deliveries(session, batch, new_only=True)
            if pairs:
                batch_progress.reopen_for_replay(session, {batch_id})
        else:
            return 0
        if not pairs:
            batch_progress.settle_batch(session, batch_id)
    return chains.enqueue_forwarding(pairs)


@app.task(name="pacs.forward_quiet_batches")
def forward_quiet_batches() -> int:
    """Batches quiet for the quiet period go out with what they hold, whatever their
    unfinished uploads do: open ones stay open, completed ones move to forwarding."""
    quiet = timedelta(seconds=runtime.settings().batch_quiet_seconds)
    pairs: list[tuple[int, int]] = []
    with runtime.session_scope() as session:
        for batch in batch_progress.quiet_open_batches(session, quiet):
            pairs.extend(routing.plan_deliveries(session, batch))
        for batch_id in batch_progress.quiet_completed_batches(session, quiet):
            if batch_progress.claim_completed_batch(session, batch_id, quiet=quiet):
                pairs.extend(routing.plan_deliveries(session, session.get(Batch, batch_id)))
    return chains.enqueue_forwarding(pairs)


@app.task(name="pacs.forward_study", bind=True, max_retries=None, acks_late=True,
          autoretry_for=runtime.DATABASE_AWAY, retry_backoff=True, retry_backoff_max=30,
          retry_jitter=True)
def forward_study(self, study_id: int, destination_id: int) -> dict:  # noqa: ANN001
    cfg = runtime.settings()
    claim = self.request.id or "local"
    with runtime.session_scope() as session:
        destination = session.get(Destination, destination_id)
        if destination is None or not destination.enabled:
            return {"skipped": True}
    # Beating until the run ends: a killed worker's study is taken over within the stale
    # age, a slow one's never. (The row stays readable after its session: no expiry on commit.)
    with sender_heartbeats.sending(claim, study_id, destination_id), \
            runtime.session_scope() as session:
        sender = sender_for(destination, runtime.secret_box(),
                            timeout=cfg.stow_timeout_seconds, batch_size=cfg.stow_batch_size)
        try:
            result = forwarding.forward_study(
                session, runtime.store(), sender, study_id=study_id,
                destination_id=destination_id, claim=claim,
                batch_size=cfg.stow_batch_size, max_attempts=cfg.delivery_max_attempts,
                checkpoint=session.commit,
                stale_after=timedelta(seconds=cfg.claim_stale_seconds),
            )
        finally:
            sender.close()
        for batch_id in set(session.scalars(
                select(Delivery.batch_id).where(Delivery.study_id == study_id).distinct())):
            batch_progress.settle_batch(session, batch_id)
        event_publishing.study_forwarded(session, study_id, destination_id, result)  # same commit
    if result.restoring:
        # Start the restores now, not at the next beat poll: an instance in a GLACIER_IR
        # bundle is readable again within seconds, and its delivery replays by itself.
        chains.enqueue_restores()
    if result.come_back_after is not None:
        # The same task id comes back later: it reclaims any row it left in flight.
        raise self.retry(countdown=max(result.come_back_after, 0.5))
    return {"delivered": result.delivered, "failed": result.failed, "deferred": result.deferred}
