"""Tasks of the ``analytics`` queue: the hourly-stats materialisation, the weekly daily-forecast
fan-out, the hourly next-48-hour fan-out, and one facility's forecast of each kind."""

from __future__ import annotations

from collections.abc import Callable

from celery import Task
from sqlalchemy.orm import Session

from pipeline.analytics import stats
from pipeline.forecasting import store as forecast_store
from pipeline.models import UploadForecast
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



def _fan_out(list_facilities: Callable[[Session], list[int]], task: Task, horizon: int) -> dict:
    """One ``task`` per facility (and one for the total), so a facility's failure, or a slow
    fit, holds up no other, and the workers' processes share the fits between the cores."""
    with runtime.session_scope() as session:
        facility_ids = list_facilities(session)
    for facility_id in [*facility_ids, None]:
        task.delay(facility_id, horizon)
    return {"facilities": len(facility_ids)}


def _forecast_metrics(run: Callable[..., UploadForecast], facility_id: int | None,
                      horizon: int) -> dict:
    """``run`` for each metric of one facility, in one transaction."""
    with runtime.session_scope() as session:
        rows = [run(session, facility_id, metric, horizon=horizon) for metric in forecast_store.METRICS]
        return {"facility_id": facility_id, "models": {r.metric: r.model for r in rows}}


@app.task(name="analytics.forecast_all", acks_late=False)
def forecast_all(horizon: int = 28) -> dict:
    """The weekly daily-forecast job: one forecast_facility per facility and the total."""
    return _fan_out(forecast_store.facilities_with_stats, forecast_facility, horizon)


@app.task(name="analytics.forecast_facility", soft_time_limit=600, time_limit=660)
def forecast_facility(facility_id: int | None, horizon: int = 28) -> dict:
    """Upload count and byte forecasts of one facility (None: every facility together).
    Each run adds new rows and readers take the newest: a redelivery is harmless."""
    return _forecast_metrics(forecast_store.run_forecast, facility_id, horizon)


@app.task(name="analytics.forecast_hours_all", acks_late=False)
def forecast_hours_all(horizon: int = 48) -> dict:
    """One next-48-hour task per recently active facility (and the total), as the weekly job does."""
    return _fan_out(forecast_store.facilities_with_recent_hours, forecast_facility_hours, horizon)


@app.task(name="analytics.forecast_facility_hours", soft_time_limit=120, time_limit=150)
def forecast_facility_hours(facility_id: int | None, horizon: int = 48) -> dict:
    """Next-48-hour upload count and byte forecasts of one facility; new rows, newest wins."""
    return _forecast_metrics(forecast_store.run_hourly_forecast, facility_id, horizon)
