"""Next-48-hour forecasts on hourly series whose structure is known."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np

from pipeline.forecasting import hourly as hf

START = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # a Monday, midnight


def working_hours(weeks: int, *, seed: int = 5, level: float = 1.0) -> np.ndarray:
    """Uploads 8:00-18:00 on weekdays (busiest late morning), a trickle at night and weekends."""
    rng = np.random.default_rng(seed)
    hours = np.arange(weeks * hf.WEEK_HOURS)
    hour_of_day, weekday = hours % 24, (hours // 24) % 7
    busy = np.where((hour_of_day >= 8) & (hour_of_day < 18), 20 - np.abs(hour_of_day - 11) * 1.5, 0.5)
    mean = level * np.where(weekday < 5, busy, 0.2 * busy)
    return rng.poisson(mean).astype(float)


def test_working_hours_beat_seasonal_naive_and_keep_the_day_shape():
    y = working_hours(6)
    result = hf.forecast_hours(y, START)
    assert result.model in {"weekly_mean", "profile"}, result.backtest
    assert result.fallback_reason is None
    chosen, naive = result.backtest[result.model], result.backtest["seasonal_naive"]
    assert chosen["folds"] == hf.DEFAULT_FOLDS and chosen["mae"] < naive["mae"]
    points = result.points()
    assert len(points) == 48
    assert points[0]["hour"] == (START + timedelta(weeks=6)).isoformat()  # Monday 00:00
    # Monday 11:00 is busy, Monday 03:00 is not.
    assert points[11]["mean"] > 10 > 2 > points[3]["mean"]
    for p in points:
        assert 0 <= p["lo95"] <= p["lo80"] <= p["mean"] <= p["hi80"] <= p["hi95"]
    assert any(p["hi95"] > p["hi80"] for p in points)


def test_a_level_shift_is_followed_by_the_profile_model():
    # Volume doubled three weeks ago (a new referrer): an average over four weeks lags,
    # the profile scaled by the last week's level does not.
    y = np.concatenate([working_hours(3, seed=1), working_hours(4, seed=2, level=2.0)])
    result = hf.forecast_hours(y, START)
    assert result.backtest["profile"]["mae"] < result.backtest["weekly_mean"]["mae"]


def test_short_history_is_seasonal_naive_and_says_so():
    y = working_hours(2)
    result = hf.forecast_hours(y[:200], START)
    assert result.model == "seasonal_naive"
    assert "short history" in result.fallback_reason
    # The same hour last week, counted back from the end.
    assert [p["mean"] for p in result.points()][:24] == list(y[200 - 168:200 - 144])
    empty = hf.forecast_hours([], START)
    assert "no full week" in empty.fallback_reason and empty.points()[0]["hour"] == START.isoformat()


def test_hourly_series_fills_missing_hours_with_zero():
    values = {START: 3, START + timedelta(hours=2): 4, START - timedelta(hours=1): 99}
    assert hf.hourly_series(values, START, START + timedelta(hours=3)).tolist() == [3, 0, 4, 0]


def test_a_closed_day_ahead_is_zero():
    y = working_hours(6)
    monday = (START + timedelta(weeks=6)).date()
    result = hf.forecast_hours(y, START, closed=[monday, date(2020, 1, 1)])
    points = result.points()
    assert all(p["mean"] == p["hi95"] == 0 for p in points[:24])  # Monday: closed
    assert points[24 + 11]["mean"] > 10  # Tuesday 11:00 as usual
