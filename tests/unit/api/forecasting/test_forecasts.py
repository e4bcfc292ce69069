"""Forecasts over daily_facility_stats: the store reads, fills and records; the API scopes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select

from pipeline.forecasting import daily as forecasting
from pipeline.forecasting import store as forecast_store
from pipeline.models import DailyFacilityStats, Facility, FacilityCalendar

TODAY = date(2026, 6, 1)
GRID = (((1, 1, 1), (0, 0, 0, 7)),)


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def facility_id(session, name: str) -> int:
    return session.scalars(select(Facility.id).where(Facility.name == name)).one()


def seed_days(session, fid: int, days: int, *, skip: set[int] = frozenset()) -> None:
    rng = np.random.default_rng(fid)
    profile = [120, 110, 115, 105, 100, 30, 10]
    for back in range(days, 0, -1):
        if back in skip:
            continue  # no row at all: a day without uploads
        day = TODAY - timedelta(days=back)
        count = int(profile[day.weekday()] + rng.normal(0, 4))
        session.add(DailyFacilityStats(day=datetime(day.year, day.month, day.day, tzinfo=UTC),
                                       facility_id=fid, uploads=max(count, 0), bytes=count * 1000))
    session.commit()


@pytest.fixture
def world(session, make_token):
    tokens = {"qa_a": make_token("Forecast A", "qa_manager"), "qa_b": make_token("Forecast B", "qa_manager"),
              "uploader_a": make_token("Forecast A", "uploader"), "admin": make_token("HQ", "admin")}
    a, b = facility_id(session, "Forecast A"), facility_id(session, "Forecast B")
    seed_days(session, a, 140, skip={3, 10})
    seed_days(session, b, 20)
    return {"a": a, "b": b, **tokens}


def test_history_fills_missing_days_with_zero(session, world):
    first, series = forecast_store.daily_history(session, world["a"], "uploads", TODAY - timedelta(days=1))
    assert first == TODAY - timedelta(days=140)
    assert len(series) == 140
    assert series[-3] == 0 and series[-10] == 0 and series[-1] > 0


def test_forecasts_stored_and_scoped(client, session, world):
    session.add(FacilityCalendar(facility_id=world["a"], country="US",
                                 closed_days=[(TODAY + timedelta(days=2)).isoformat()]))
    session.commit()
    row = forecast_store.run_forecast(session, world["a"], "uploads", horizon=14, today=TODAY, grid=GRID,
                                      folds=2)
    forecast_store.run_forecast(session, world["b"], "uploads", horizon=14, today=TODAY)
    session.commit()
    assert row.model in forecasting.CANDIDATES
    assert row.backtest["model"]["folds"] == 2
    assert row.points[2]["mean"] == 0.0  # the facility's own closed day

    mine = client.get("/api/v1/forecasts", headers=auth(world["qa_a"])).get_json()["forecasts"]
    assert [f["facility_id"] for f in mine] == [world["a"]]
    assert len(mine[0]["points"]) == 14 and {"lo80", "hi95"} <= set(mine[0]["points"][0])
    assert mine[0]["backtest"]["seasonal_naive"]["mase"] is not None

    other = f"/api/v1/forecasts?facility={world['b']}"
    assert client.get(other, headers=auth(world["qa_a"])).status_code == 403
    assert client.get("/api/v1/forecasts", headers=auth(world["uploader_a"])).status_code == 403
    assert client.get("/api/v1/forecasts?facility=total", headers=auth(world["qa_a"])).status_code == 403
    assert client.get("/api/v1/forecasts?metric=pixels", headers=auth(world["admin"])).status_code == 400

    every = client.get("/api/v1/forecasts", headers=auth(world["admin"])).get_json()["forecasts"]
    by_facility = {f["facility_id"]: f for f in every}
    assert {world["a"], world["b"]} <= set(by_facility)
    short = by_facility[world["b"]]
    assert short["model"] == "seasonal_naive" and "short history" in short["fallback_reason"]


def test_cli_forecast(settings, world, monkeypatch):
    from click.testing import CliRunner

    from api.cli import main

    monkeypatch.setenv("RELAYPACS_DATABASE_URL", settings.database_url)
    result = CliRunner().invoke(main, ["forecast", "--facility", "Forecast B", "--horizon", "7"])
    assert result.exit_code == 0, result.output
    assert '"model": "seasonal_naive"' in result.output
    assert CliRunner().invoke(main, ["forecast", "--facility", "Nowhere"]).exit_code != 0


def seed_hours(session, fid: int, weeks: int, now: datetime) -> None:
    from pipeline.models import HourlyStats, User

    user_id = session.scalars(select(User.id).where(User.facility_id == fid)).first()
    first = now - timedelta(weeks=weeks)
    for i in range(weeks * 168):
        hour = first + timedelta(hours=i)
        if hour.weekday() >= 5 or not 8 <= hour.hour < 18:
            continue  # no row: an hour without uploads counts as zero
        for status, count in (("parsed", 6 + hour.hour % 3), ("quarantined", 1)):
            session.add(HourlyStats(hour=hour, facility_id=fid, modality="CT", status=status, user_id=user_id,
                                    uploads=count, bytes=count * 1000))
    session.commit()


def test_hourly_forecasts_stored_served_and_scoped(client, session, world):
    now = datetime(2026, 6, 1, 7, 20, tzinfo=UTC)  # a Monday, 07:20: 07:00 is not complete yet
    seed_hours(session, world["a"], 5, now.replace(minute=0))
    row = forecast_store.run_hourly_forecast(session, world["a"], "uploads", now=now)
    session.commit()
    assert row.granularity == "hour" and len(row.points) == 48
    assert row.points[0]["hour"] == "2026-06-01T07:00:00+00:00"
    # Statuses summed per hour: a weekday 10:00 is 7 parsed + 1 quarantined.
    ten = next(p for p in row.points if p["hour"] == "2026-06-01T10:00:00+00:00")
    assert ten["mean"] == pytest.approx(8.0, abs=1.5)
    assert row.backtest["seasonal_naive"]["folds"] >= 1

    served = client.get("/api/v1/forecasts?granularity=hour", headers=auth(world["qa_a"])).get_json()
    assert [f["granularity"] for f in served["forecasts"]] == ["hour"]
    assert served["forecasts"][0]["points"][0]["hour"] == "2026-06-01T07:00:00+00:00"
    # The daily listing does not mix the hourly rows in.
    daily = client.get("/api/v1/forecasts", headers=auth(world["qa_a"])).get_json()["forecasts"]
    assert all(f["granularity"] == "day" for f in daily)
    refused = client.get(f"/api/v1/forecasts?granularity=hour&facility={world['a']}",
                         headers=auth(world["qa_b"]))
    assert refused.status_code == 403
    assert client.get("/api/v1/forecasts?granularity=minute", headers=auth(world["admin"])).status_code == 400

    latest = forecast_store.latest_for_facility(session, world["a"], "uploads", "hour")
    assert latest is not None and latest.id == row.id and latest.model == row.model
    assert forecast_store.latest_for_facility(session, world["b"], "uploads", "hour") is None


def test_dashboard_facility_page_shows_its_forecasts(client, session, world, sign_in):
    import json
    import re

    now = datetime(2026, 6, 1, 7, 20, tzinfo=UTC)
    seed_hours(session, world["a"], 3, now.replace(minute=0))
    daily = forecast_store.run_forecast(session, world["a"], "uploads", horizon=14, today=TODAY, grid=GRID,
                                        folds=2)
    hourly = forecast_store.run_hourly_forecast(session, world["a"], "uploads", now=now)
    forecast_store.run_forecast(session, world["a"], "bytes", horizon=7, today=TODAY, grid=GRID, folds=1)
    session.commit()

    assert sign_in(client, world["qa_a"]).status_code == 302
    html = client.get(f"/dashboard/facilities/{world['a']}").get_data(as_text=True)
    embedded = re.search(r'<script type="application/json" id="forecast-data">(.*?)</script>', html, re.S)
    assert embedded, "forecast panel missing"
    shown = json.loads(embedded.group(1))
    # The newest upload-count forecast of each kind (not the bytes one stored after them).
    assert shown["day"]["id"] == daily.id and len(shown["day"]["points"]) == 14
    assert shown["hour"]["id"] == hourly.id and len(shown["hour"]["points"]) == 48
    assert 'data-forecast-chart="day"' in html and "forecast.js" in html
    # Why the model won and what it was compared with (issue 20), and the closures form.
    assert 'id="forecast-why"' in html and 'id="forecast-compared"' in html
    assert daily.backtest["reason"].split(" (")[0].replace("_", " ") in html.replace("_", " ")
    for compared in daily.backtest["compared"]:
        assert f"<td>{compared['model']}</td>" in html
    assert 'id="forecast-calendar-form"' in html and 'id="forecast-calendar-data"' in html
    assert client.get("/dashboard/static/forecast.js").status_code == 200
    # Another facility's page (and so its forecast) stays closed to this QA manager.
    assert client.get(f"/dashboard/facilities/{world['b']}").status_code == 403
    # A facility without forecasts still renders, with an empty panel.
    assert sign_in(client, world["admin"]).status_code == 302
    html = client.get(f"/dashboard/facilities/{world['b']}").get_data(as_text=True)
    assert '<script type="application/json" id="forecast-data">{"day": null, "hour": null}</script>' in html


def test_calendar_entered_through_the_api_decides_holiday_closing(client, session, world):
    from pipeline.models import AuditEvent

    url = f"/api/v1/forecasts/calendars/{world['a']}"
    assert client.get(url, headers=auth(world["qa_a"])).get_json()["closes_on_public_holidays"] is False
    juneteenth = date(2026, 6, 19)  # a Friday, 18 days after TODAY: a US public holiday

    def forecast_day(closes: bool) -> dict:
        body = {"country": "us", "closed_days": ["2026-06-03"], "closes_on_public_holidays": closes}
        saved = client.put(url, json=body, headers=auth(world["qa_a"]))
        assert saved.status_code == 200, saved.get_json()
        assert saved.get_json()["country"] == "US" and saved.get_json()["closed_days"] == ["2026-06-03"]
        session.expire_all()
        row = forecast_store.run_forecast(session, world["a"], "uploads", horizon=21, today=TODAY,
                                          candidates=("seasonal_naive", "weekday_mean_4w"), folds=2)
        session.commit()
        assert row.points[2]["rule"] == "closed: facility calendar" and row.points[2]["mean"] == 0.0
        # A holiday ahead that the history never saw is named in the record (unless closed).
        unseen = row.backtest["intervals"]["holidays_ahead_not_in_history"]
        assert unseen == ([] if closes else [juneteenth.isoformat()])
        return row.points[(juneteenth - TODAY).days]

    # Not closing: the holiday's effect comes from the history's holidays (this one has three
    # with no effect: about x1), never zero.
    open_day = forecast_day(False)
    assert open_day["rule"].startswith("public holiday: effect learnt") and open_day["mean"] > 50
    closed_day = forecast_day(True)
    assert closed_day["rule"] == "closed: facility calendar" and closed_day["hi95"] == 0.0
    assert session.scalar(select(AuditEvent).where(AuditEvent.action == "forecast.calendar_replaced",
                                                   AuditEvent.target == f"facility:{world['a']}")) is not None
    served = client.get(f"/api/v1/forecasts?facility={world['a']}", headers=auth(world["qa_a"])).get_json()
    newest = served["forecasts"][0]
    assert newest["reason"] and newest["intervals"]["method"].startswith("conformal")
    assert {c["model"] for c in newest["compared"]} == {"seasonal_naive", "weekday_mean_4w"}

    other = f"/api/v1/forecasts/calendars/{world['b']}"
    assert client.put(other, json={}, headers=auth(world["qa_a"])).status_code == 403
    assert client.get(url, headers=auth(world["uploader_a"])).status_code == 403
    assert client.put(url, json={"country": "ZZ"}, headers=auth(world["qa_a"])).status_code == 400
    bad_day = client.put(url, json={"closed_days": ["not a day"]}, headers=auth(world["qa_a"]))
    assert bad_day.status_code == 400
    assert client.get("/api/v1/forecasts/calendars/999999", headers=auth(world["admin"])).status_code == 404


def test_the_calendar_reaches_past_the_horizon_so_a_season_ending_after_it_counts(client, session, make_token,
                                                                                  sign_in):
    token = make_token("Forecast C", "qa_manager")
    fid = facility_id(session, "Forecast C")
    session.add(FacilityCalendar(facility_id=fid, country="US"))
    today = date(2026, 12, 4)
    rng = np.random.default_rng(3)
    for back in range(140, 0, -1):
        day = today - timedelta(days=back)
        session.add(DailyFacilityStats(day=datetime(day.year, day.month, day.day, tzinfo=UTC),
                                       facility_id=fid, uploads=int(100 + rng.normal(0, 4)), bytes=0))
    session.commit()
    # The last day forecast is December 28: New Year 2027 lies after it, and still makes
    # Christmas Eve to December 31 a holiday season.
    row = forecast_store.run_forecast(session, fid, "uploads", horizon=25, today=today,
                                      candidates=("seasonal_naive", "weekday_mean_4w"), folds=2)
    by_day = {p["day"]: p for p in row.points}
    assert by_day["2026-12-24"]["rule"].startswith("holiday season: none in the history, neutral")
    assert by_day["2026-12-28"]["rule"].startswith("holiday season")
    assert "rule" not in by_day["2026-12-15"]
    assert row.backtest["intervals"]["holiday_season_ahead_not_in_history"][0] == "2026-12-24"
    session.commit()
    # The facility's page names the season days the history never saw.
    assert sign_in(client, token).status_code == 302
    html = client.get(f"/dashboard/facilities/{fid}").get_data(as_text=True)
    note = html.split('id="forecast-unseen-holidays">')[1].split("</p>")[0]
    assert "holiday season 2026-12-24, 2026-12-28" in note and "public holidays 2026-12-25" in note
