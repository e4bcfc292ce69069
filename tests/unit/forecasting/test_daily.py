"""Forecasting on series whose structure is known: the model must find it, or fall back."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pytest

from pipeline.forecasting import daily as fc

START = date(2025, 1, 6)  # a Monday
# One or two small candidates keep the unit suite fast; the default grid is for production.
GRID = (((1, 1, 1), (0, 0, 0, 7)),)
# These tests are about the regression with ARIMA errors: it competes with the floor alone
# (the wider candidate set has its own tests in test_candidates.py).
ONLY_SARIMAX = ("sarimax",)


def weekly(n: int, *, trend: float = 0.3, noise: float = 4.0, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    profile = np.array([120, 110, 115, 105, 100, 30, 10], dtype=float)  # quiet weekends
    return np.maximum(profile[t % 7] + trend * t + rng.normal(0, noise, n), 0)


def test_daily_series_fills_missing_days_with_zero():
    values = {START: 5, START + timedelta(days=3): 7, START - timedelta(days=1): 99}
    assert fc.daily_series(values, START, START + timedelta(days=4)).tolist() == [5, 0, 0, 7, 0]


def test_weekly_cycle_with_trend_beats_seasonal_naive():
    y = weekly(168)
    result = fc.forecast_series(y, START, horizon=14, grid=GRID, folds=2, candidates=ONLY_SARIMAX)
    assert result.model == "sarimax", result.fallback_reason
    assert result.order == [[1, 1, 1], [0, 0, 0, 7]]
    assert result.aic is not None and result.backtest["model"]["folds"] == 2
    assert result.backtest["model"]["mase"] < result.backtest["seasonal_naive"]["mase"]
    points = result.points()
    assert len(points) == 14 and points[0]["day"] == (START + timedelta(days=168)).isoformat()
    # The weekly shape survives: a Monday well above the Sunday next to it.
    assert points[0]["mean"] > 2 * points[6]["mean"]
    for p in points:
        assert 0 <= p["lo95"] <= p["lo80"] <= p["mean"] <= p["hi80"] <= p["hi95"]
    # The trend carries on: next Monday near the last Monday plus a week's growth.
    assert abs(points[0]["mean"] - (120 + 0.3 * 168)) < 20


def test_flat_series_keeps_seasonal_naive():
    result = fc.forecast_series(np.full(140, 50.0), START, horizon=14, grid=GRID, folds=2)
    assert result.model == "seasonal_naive"
    assert result.fallback_reason
    assert [p["mean"] for p in result.points()] == [50.0] * 14
    assert all(p["lo95"] == p["hi95"] == 50.0 for p in result.points())


def test_short_series_falls_back_and_says_why():
    y = weekly(30)
    result = fc.forecast_series(y, START, horizon=10, grid=GRID)
    assert result.model == "seasonal_naive"
    assert "short history" in result.fallback_reason
    means = [p["mean"] for p in result.points()]
    assert means[:7] == pytest.approx(list(np.round(y[-7:], 4)))
    assert means[7:] == means[:3]
    # Intervals widen with the weeks ahead.
    width = [p["hi95"] - p["lo95"] for p in result.points()]
    assert width[7] > width[0]


def test_closure_week_is_a_regressor_not_a_new_normal():
    n = 168
    y = weekly(n, trend=0.0)
    # Closed two weeks before the end (and once earlier, so the regressor can be estimated
    # before the first backtest origin): the last holdout is the week after the closure.
    closed_days = [*range(70, 77), *range(n - 14, n - 7)]
    y[closed_days] = 0
    closed = [START + timedelta(days=d) for d in closed_days]
    result = fc.forecast_series(y, START, horizon=7, grid=GRID, folds=2, closed=closed,
                                candidates=ONLY_SARIMAX)
    assert result.regressors == ["closed"]
    # A raw seasonal naive would copy the closed week into the next one. The regression has
    # the closure as a regressor; the seasonal-naive candidate sees the closed days replaced
    # by the week before (issue 20): both expect a normal week, neither scores the zeros.
    for name in ("sarimax", "seasonal_naive"):
        assert result.alternatives[name][0] > 90, name
        assert result.backtest["compared"][0]["mae"] < 10
    assert result.points()[0]["mean"] > 90


def test_known_future_closure_is_zero():
    y = weekly(140)
    holiday = START + timedelta(days=142)
    result = fc.forecast_series(y, START, horizon=7, grid=GRID, folds=1, closed=[holiday])
    assert result.points()[2]["mean"] == 0.0


def test_failed_fit_falls_back(monkeypatch):
    def broken(*_args, **_kwargs):
        raise fc.FitFailed("LinAlgError: LU decomposition error")

    monkeypatch.setattr(fc, "fit", broken)
    result = fc.forecast_series(weekly(140), START, horizon=14, grid=GRID, candidates=ONLY_SARIMAX)
    assert result.model == "seasonal_naive"
    assert result.fallback_reason
    assert result.candidates[0]["error"].startswith("LinAlgError")
    assert result.backtest["dropped"][0].startswith("sarimax: LinAlgError")
    assert [c["model"] for c in result.backtest["compared"]] == ["seasonal_naive"]


def test_holiday_effect_is_estimated_not_assumed_closed():
    n = 168
    y = weekly(n, trend=0.0)
    holidays = [START + timedelta(days=d) for d in (15, 50, 85, 120, 155)]
    for day in holidays:
        y[(day - START).days] *= 0.5  # a holiday halves the volume; it does not stop it
    ahead = START + timedelta(days=n)  # a Monday holiday right after the history
    result = fc.forecast_series(y, START, horizon=7, grid=GRID, folds=2, holidays=[*holidays, ahead])
    # Day 15 is a Tuesday holiday: the Monday before it is a bridge day.
    assert result.regressors == ["holiday", "bridge"]
    monday = result.points()[0]["mean"]
    assert 30 < monday < 90, monday


def test_calendar_regressors_know_bridges_and_the_holiday_season():
    # US 1988: Thanksgiving Thu 24 Nov, Christmas Sun 25 Dec observed Mon 26, New Year Sun 1 Jan
    # observed Mon 2 Jan.
    holidays = [date(1988, 11, 24), date(1988, 12, 25), date(1988, 12, 26), date(1989, 1, 1),
                date(1989, 1, 2)]
    days = [date(1988, 11, 20) + timedelta(days=i) for i in range(50)]
    x, names = fc.calendar_regressors(days, [date(1988, 12, 1)], holidays)
    flagged = {name: [d for d, row in zip(days, x, strict=True) if row[names.index(name)]] for name in names}
    assert flagged["closed"] == [date(1988, 12, 1)]
    # A weekend holiday is left to the weekly cycle; its observed Monday counts.
    assert flagged["holiday"] == [date(1988, 11, 24), date(1988, 12, 26), date(1989, 1, 2)]
    assert flagged["bridge"] == [date(1988, 11, 25)]  # the Friday after Thanksgiving
    assert flagged["holiday_season"] == [date(1988, 12, d) for d in (27, 28, 29, 30)]


def test_yearly_cycle_is_carried_into_the_forecast():
    # Two and a half years with a strong yearly wave: 28 days in a falling stretch must be
    # forecast falling, not flat at the last level.
    n = 900
    t = np.arange(n + 28)
    rng = np.random.default_rng(3)
    profile = np.array([120, 110, 115, 105, 100, 30, 10], dtype=float)
    wave = 40 * np.sin(2 * np.pi * (START.toordinal() + t) / 365.25)
    full = profile[t % 7] + wave + rng.normal(0, 3, n + 28)
    result = fc.forecast_series(full[:n], START, horizon=28, folds=2)
    assert result.model == "sarimax", result.fallback_reason
    assert {"yearly_sin1", "yearly_cos1"} <= set(result.regressors)
    mean = np.array([p["mean"] for p in result.points()])
    naive = np.array([full[n - 7:n][i % 7] for i in range(28)])
    actual = full[n:]
    assert np.mean(np.abs(mean - actual)) < 0.6 * np.mean(np.abs(naive - actual))


def multiplicative(n: int, *, seed: int = 5) -> np.ndarray:
    """A weekly profile times a level that doubles over the history, with noise proportional
    to the level: the structure a log scale describes and a linear one does not."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    profile = np.array([1.0, 0.9, 0.95, 0.85, 0.8, 0.25, 0.08])
    level = 40 * np.exp(np.log(2) * t / n)
    return np.round(level * profile[t % 7] * np.exp(rng.normal(0, 0.12, n)))


def test_scale_is_chosen_by_aic_of_the_counts():
    # Effects that multiply: the log scale wins; effects that add up: the linear one does.
    log_result = fc.forecast_series(multiplicative(364), START, horizon=14, grid=GRID, folds=2,
                                    candidates=ONLY_SARIMAX)
    assert log_result.scale == "log", log_result.candidates
    assert log_result.backtest["model"]["scale"] == "log"
    assert {c["scale"] for c in log_result.candidates} == {"linear", "log"}
    linear_result = fc.forecast_series(weekly(364), START, horizon=14, grid=GRID, folds=2,
                                       candidates=ONLY_SARIMAX)
    assert linear_result.scale == "linear", linear_result.candidates
    by_scale = {c["scale"]: c["aic"] for c in linear_result.candidates}
    assert by_scale["linear"] < by_scale["log"]


def test_log_scale_forecast_keeps_the_weekly_ratio_and_orders_its_intervals():
    n = 364
    result = fc.forecast_series(multiplicative(n), START, horizon=14, grid=GRID, folds=2, scales=("log",),
                                candidates=ONLY_SARIMAX)
    assert result.model == "sarimax" and result.scale == "log", result.fallback_reason
    points = result.points()
    # Monday over Sunday as in the profile (1 / 0.08), at the level reached (about 80).
    assert 60 < points[0]["mean"] < 100
    assert points[0]["mean"] > 5 * points[6]["mean"]
    for p in points:
        assert 0 <= p["lo95"] <= p["lo80"] <= p["mean"] <= p["hi80"] <= p["hi95"]
    # Multiplicative noise: the busy day's interval is wider than the quiet day's.
    assert points[0]["hi95"] - points[0]["lo95"] > 3 * (points[6]["hi95"] - points[6]["lo95"])


@pytest.mark.parametrize("scale", ["linear", "log"])
def test_backtest_point_is_the_forecast_point(scale):
    # The backtest's cheap point forecast (differenced residuals) equals the full model's.
    y = multiplicative(300)
    days = [START + timedelta(days=i) for i in range(314)]
    x, _ = fc.design_matrix(days, (), (), yearly=False)
    fitted = fc.fit(y, x[:300], (1, 1, 1), (0, 0, 1, 7), scale=scale)
    prediction, aic = fc.predict(fitted, y, x[:300], x[300:], 14)
    point = fc.predict_point(fitted, y, x[:300], x[300:], 14)
    assert np.allclose(point, prediction.mean, rtol=1e-6, atol=1e-6)
    # Filtering the fit's own data gives back the fit's AIC.
    assert aic == pytest.approx(fitted.aic, rel=1e-6)
