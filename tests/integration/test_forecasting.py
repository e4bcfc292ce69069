"""The weekly forecast job (and the hourly next-48-hour one) through a real worker on the
analytics queue, on PostgreSQL: one task per facility, a failing facility does not stop the
others, the API serves the result."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import requests
from celery import Celery
from sqlalchemy import select

from pipeline.db.engine import make_engine, make_session_factory
from pipeline.forecasting import daily as forecasting
from pipeline.models import DailyFacilityStats, Facility, FacilityCalendar, HourlyStats, UploadForecast, User

pytestmark = pytest.mark.integration

NORTH, SHORT, BROKEN = "Forecast IT North", "Forecast IT Short", "Forecast IT Broken"


def seed(session, facility_id: int, days: int, seed_value: int) -> None:
    rng = np.random.default_rng(seed_value)
    profile = [120, 110, 115, 105, 100, 30, 10]
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for back in range(days, 0, -1):
        day = today - timedelta(days=back)
        if back % 45 == 0:
            continue  # a day without any row: must count as zero, not be dropped
        count = max(int(profile[day.weekday()] + 0.2 * (days - back) + rng.normal(0, 5)), 0)
        session.add(DailyFacilityStats(day=day, facility_id=facility_id, uploads=count,
                                       bytes=count * 5_000_000))


def test_weekly_job_fans_out_per_facility(gateway_env, postgres_url, redis_url, make_user, spawn_worker,
                                          api_server):
    token = make_user(NORTH, "qa_manager")
    make_user(SHORT, "uploader")
    make_user(BROKEN, "uploader")
    sessions = make_session_factory(make_engine(postgres_url))
    with sessions() as session:
        ids = {f.name: f.id for f in session.scalars(select(Facility).where(
            Facility.name.in_([NORTH, SHORT, BROKEN])))}
        seed(session, ids[NORTH], 200, 1)
        seed(session, ids[SHORT], 20, 2)
        seed(session, ids[BROKEN], 120, 3)
        # An unknown country code makes this facility's task fail (holidays raises).
        session.add(FacilityCalendar(facility_id=ids[BROKEN], country="XX", closed_days=[]))
        session.commit()
        started = datetime.now(UTC)

    spawn_worker(queues="analytics", concurrency=2)
    client = Celery("forecast-tests", broker=redis_url, set_as_current=False)
    client.send_task("analytics.forecast_all", queue="analytics")

    def fresh(session) -> list[UploadForecast]:  # noqa: ANN001
        return list(session.scalars(select(UploadForecast).where(UploadForecast.created_at >= started)))

    deadline = time.monotonic() + 240
    while True:
        with sessions() as session:
            rows = fresh(session)
            done = {(r.facility_id, r.metric) for r in rows}
            if {(ids[NORTH], "uploads"), (ids[NORTH], "bytes"), (ids[SHORT], "uploads"),
                (None, "uploads")} <= done:
                break
        assert time.monotonic() < deadline, f"forecasts not stored in time: {sorted(done, key=str)}"
        time.sleep(1)

    by_key = {(r.facility_id, r.metric): r for r in rows}
    north = by_key[(ids[NORTH], "uploads")]
    assert north.backtest["model"]["folds"] == 3 and north.backtest["seasonal_naive"]["mase"] is not None
    # Every candidate compared, the ranking and the reason stored (issue 20).
    # (median_all competes only with a holiday season ahead: this facility has no calendar.)
    assert {c["model"] for c in north.backtest["compared"]} == set(forecasting.CANDIDATES) - {"median_all"}
    assert north.backtest["chosen"] == north.model and north.model in north.backtest["reason"]
    # The series has a weekly cycle and a trend: a model must beat seasonal naive here.
    assert north.model != "seasonal_naive", north.backtest["reason"]
    if north.model in {"sarimax", "auto_arima"}:
        assert north.model_order
    assert len(north.points) == 28
    short = by_key[(ids[SHORT], "uploads")]
    assert short.model == "seasonal_naive" and "short history" in short.fallback_reason
    time.sleep(3)  # the broken facility's task has had its turn; it stored nothing
    with sessions() as session:
        assert not [r for r in fresh(session) if r.facility_id == ids[BROKEN]]

    response = requests.get(f"{api_server.url}/api/v1/forecasts", timeout=10,
                            headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    served = response.json()["forecasts"]
    assert [f["facility_id"] for f in served] == [ids[NORTH]]
    assert served[0]["points"][0]["lo95"] <= served[0]["points"][0]["hi95"]


def test_hourly_job_forecasts_the_next_48_hours(gateway_env, postgres_url, redis_url, make_user, spawn_worker,
                                                api_server):
    facility = "Forecast IT Hours"
    token = make_user(facility, "qa_manager")
    sessions = make_session_factory(make_engine(postgres_url))
    this_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with sessions() as session:
        fid = session.scalars(select(Facility.id).where(Facility.name == facility)).one()
        uid = session.scalars(select(User.id).where(User.facility_id == fid)).first()
        # Four weeks of working hours (weekdays 08-18 UTC), nothing at night or weekends; the
        # current hour too, in case the clock passes the hour before the task runs.
        for back in range(4 * 168, -1, -1):
            hour = this_hour - timedelta(hours=back)
            if hour.weekday() < 5 and 8 <= hour.hour < 18:
                session.add(HourlyStats(hour=hour, facility_id=fid, modality="CT", status="parsed",
                                        user_id=uid, uploads=12, bytes=12 * 4_000_000))
        session.commit()
        started = datetime.now(UTC)

    spawn_worker(queues="analytics", concurrency=2)
    client = Celery("forecast-hours-tests", broker=redis_url, set_as_current=False)
    client.send_task("analytics.forecast_hours_all", queue="analytics")

    deadline = time.monotonic() + 120
    while True:
        with sessions() as session:
            rows = list(session.scalars(select(UploadForecast).where(
                UploadForecast.created_at >= started, UploadForecast.facility_id == fid,
                UploadForecast.granularity == "hour")))
            if {r.metric for r in rows} == {"uploads", "bytes"}:
                break
        assert time.monotonic() < deadline, "hourly forecasts not stored in time"
        time.sleep(1)

    response = requests.get(f"{api_server.url}/api/v1/forecasts?granularity=hour", timeout=10,
                            headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    served = response.json()["forecasts"]
    assert [(f["facility_id"], f["granularity"]) for f in served] == [(fid, "hour")]
    points = served[0]["points"]
    assert len(points) == 48
    assert datetime.fromisoformat(points[0]["hour"]) in (this_hour, this_hour + timedelta(hours=1))
    # The same working-hours week every week: the forecast is 12 in working hours, 0 outside.
    for p in points:
        hour = datetime.fromisoformat(p["hour"])
        expected = 12 if hour.weekday() < 5 and 8 <= hour.hour < 18 else 0
        assert p["mean"] == expected, p
    assert served[0]["backtest"]["seasonal_naive"]["mae"] == 0
