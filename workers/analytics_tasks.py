"""Analytics tasks (queue ``analytics``): the hourly-stats materialisation beat runs."""

from __future__ import annotations

from pipeline import stats
from workers import runtime
from workers.app import app


@app.task(name="analytics.refresh_stats", acks_late=False)
def refresh_stats() -> dict:
    """Incremental refresh; a run that finds another one in progress does nothing (the
    next tick catches up). Not acks_late: a lost run is simply the next tick's work."""
    with runtime.session_scope() as session:
        if not stats.try_lock(session):
            return {"skipped": True}
        result = stats.refresh(session)
    return {"full": result.full, "slices": result.slices, "rows": result.rows_written}


@app.task(name="analytics.rebuild_stats", acks_late=False)
def rebuild_stats() -> dict:
    """Recompute every hour from the raw rows (on demand, after a data repair)."""
    with runtime.session_scope() as session:
        if not stats.try_lock(session):
            return {"skipped": True}
        result = stats.rebuild_all(session)
    return {"full": True, "rows": result.rows_written}
