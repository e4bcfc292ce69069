"""Next-48-hour upload forecasts from hourly counts: light models chosen by their own backtest.

Pure functions over plain values (numpy arrays, datetimes): no database, no flask, no celery.
An hour's volume has a daily cycle (working hours) and a weekly one (quiet weekends), and
hourly counts are small and noisy, so a full SARIMAX on 168-hour seasonality is neither cheap
nor better. Three candidates, each scored on the same rolling-origin holdouts (the last
``folds`` 48-hour windows, each forecast only from the hours before it):

- ``seasonal_naive``: the same hour last week;
- ``weekly_mean``: the mean of the same hour of the week over the last ``weeks`` weeks;
- ``profile``: a day's volume (the mean of the same weekday over the last ``weeks`` weeks,
  scaled by the level of the last week against those weeks) spread over the hours by the
  weekday's hourly profile (its share of the day, pooled over the weeks).

The candidate with the lowest backtest MAE gives the forecast; seasonal naive is the
baseline the others must beat. The 80% / 95% intervals come from the chosen model's own
backtest errors (empirical quantiles of the absolute error), so they say how sure the model
was on the hours it was tested on. Fewer than two weeks of hours: seasonal naive, and it
says so. Hours on the facility's own closed days ahead are zero; public holidays are not
modelled hourly (the daily forecast estimates their effect).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import numpy as np

WEEK_HOURS = 168
DAY_HOURS = 24
DEFAULT_HORIZON_HOURS = 48
DEFAULT_WEEKS = 4
DEFAULT_FOLDS = 7  # a week of 48-hour holdouts, one a day: every weekday is an origin once
MIN_HISTORY_HOURS = 2 * WEEK_HOURS
MODELS = ("seasonal_naive", "weekly_mean", "profile")


@dataclass
class HourlyForecast:
    model: str
    start: datetime  # the first forecast hour
    mean: np.ndarray
    lo80: np.ndarray
    hi80: np.ndarray
    lo95: np.ndarray
    hi95: np.ndarray
    train_start: datetime | None = None
    train_end: datetime | None = None
    backtest: dict = field(default_factory=dict)  # model name -> {"mae", "mase", "mape", ...}
    fallback_reason: str | None = None

    def points(self) -> list[dict]:
        return [
            {"hour": (self.start + timedelta(hours=i)).isoformat(), "mean": _round(self.mean[i]),
             "lo80": _round(self.lo80[i]), "hi80": _round(self.hi80[i]),
             "lo95": _round(self.lo95[i]), "hi95": _round(self.hi95[i])}
            for i in range(len(self.mean))
        ]


def _round(value: float) -> float:
    return round(float(value), 4)


# --------------------------------------------------------------------------- the candidates


def seasonal_naive(y: np.ndarray, horizon: int) -> np.ndarray:
    last_week = y[-WEEK_HOURS:]
    return np.array([last_week[i % WEEK_HOURS] for i in range(horizon)], dtype=float)


def weekly_mean(y: np.ndarray, horizon: int, weeks: int = DEFAULT_WEEKS) -> np.ndarray:
    weeks = max(1, min(weeks, len(y) // WEEK_HOURS))
    block = y[len(y) - weeks * WEEK_HOURS:].reshape(weeks, WEEK_HOURS).mean(axis=0)
    return np.array([block[i % WEEK_HOURS] for i in range(horizon)], dtype=float)


def profile(y: np.ndarray, horizon: int, weeks: int = DEFAULT_WEEKS) -> np.ndarray:
    """Daily volume x hourly share, on whole weeks counted back from the end of ``y``: a
    "day" is 24 hours at the same position in the week, whatever the clock hour the series
    ends at, so the shares line up with the hours ahead."""
    weeks = max(1, min(weeks, len(y) // WEEK_HOURS))
    block = y[len(y) - weeks * WEEK_HOURS:].reshape(weeks, 7, DAY_HOURS)
    day_totals = block.sum(axis=2)  # weeks x weekday
    # The level: last week's volume against the mean week (capped: one odd week must not
    # double the forecast).
    mean_week = day_totals.sum(axis=1).mean()
    level = float(np.clip(day_totals[-1].sum() / mean_week, 0.5, 2.0)) if mean_week > 0 else 1.0
    daily = day_totals.mean(axis=0) * level
    pooled = block.sum(axis=0)  # weekday x hour
    sums = pooled.sum(axis=1, keepdims=True)
    shares = np.divide(pooled, sums, out=np.full_like(pooled, 1.0 / DAY_HOURS), where=sums > 0)
    hourly = (daily[:, None] * shares).reshape(WEEK_HOURS)
    return np.array([hourly[i % WEEK_HOURS] for i in range(horizon)], dtype=float)


CANDIDATES = {"seasonal_naive": seasonal_naive, "weekly_mean": weekly_mean, "profile": profile}


# --------------------------------------------------------------------------- the decision


def forecast_hours(y: np.ndarray | list[float], first_hour: datetime, *,
                   horizon: int = DEFAULT_HORIZON_HOURS, folds: int = DEFAULT_FOLDS,
                   closed: Iterable[date] = ()) -> HourlyForecast:
    """Forecast ``horizon`` hours after the last of ``y`` (``y[0]`` is ``first_hour``);
    hours on the facility's ``closed`` days (its own calendar, in the hours' time zone) are zero."""
    result = _forecast_hours(y, first_hour, horizon=horizon, folds=folds)
    closed = set(closed)
    if closed:
        shut = np.array([(result.start + timedelta(hours=i)).date() in closed for i in range(horizon)])
        for name in ("mean", "lo80", "hi80", "lo95", "hi95"):
            setattr(result, name, np.where(shut, 0.0, getattr(result, name)))
    return result


def _forecast_hours(y: np.ndarray | list[float], first_hour: datetime, *, horizon: int,
                    folds: int) -> HourlyForecast:
    y = np.asarray(y, dtype=float)
    n = len(y)
    start = first_hour + timedelta(hours=n)
    if n < WEEK_HOURS:
        zero = np.zeros(horizon)
        return HourlyForecast("seasonal_naive", start, zero, zero, zero, zero, zero,
                              fallback_reason=f"no full week of history ({n} hours)")
    # Whole weeks ending at the last hour: the candidates index hours by their position in
    # the week counted back from the end, so any start hour lines up.
    usable = (n // WEEK_HOURS) * WEEK_HOURS
    y = y[n - usable:]
    n = usable
    train_start = start - timedelta(hours=n)
    train_end = start - timedelta(hours=1)
    if n < MIN_HISTORY_HOURS:
        mean = seasonal_naive(y, horizon)
        return HourlyForecast("seasonal_naive", start, mean, mean, mean, mean, mean, train_start=train_start,
                              train_end=train_end,
                              fallback_reason=f"short history: {n} hours < {MIN_HISTORY_HOURS}")

    # Origins one day apart, the last one a full horizon before the end; each candidate sees
    # only whole weeks before its origin.
    origins = [n - horizon - DAY_HOURS * k for k in range(folds - 1, -1, -1)]
    origins = [o for o in origins if o >= WEEK_HOURS]
    errors: dict[str, list[np.ndarray]] = {name: [] for name in CANDIDATES}
    actual_all: list[np.ndarray] = []
    scale_all: list[float] = []
    for origin in origins:
        history = y[origin % WEEK_HOURS:origin]  # whole weeks ending at the origin
        actual = y[origin:origin + horizon]
        actual_all.append(actual)
        scale_all.append(float(np.mean(np.abs(history[WEEK_HOURS:] - history[:-WEEK_HOURS])))
                         if len(history) > WEEK_HOURS else 0.0)
        for name, candidate in CANDIDATES.items():
            errors[name].append(candidate(history, horizon) - actual)

    backtest = {name: _scores(errs, actual_all, scale_all, horizon) for name, errs in errors.items()}
    chosen = min(MODELS, key=lambda name: (backtest[name]["mae"], MODELS.index(name)))
    mean = np.maximum(CANDIDATES[chosen](y, horizon), 0)
    # Empirical quantiles of the chosen model's absolute backtest errors: symmetric bands.
    abs_errors = np.abs(np.concatenate(errors[chosen]))
    q80, q95 = (float(np.quantile(abs_errors, q)) for q in (0.8, 0.95))
    lo = np.maximum
    return HourlyForecast(chosen, start, mean, lo(mean - q80, 0), mean + q80, lo(mean - q95, 0), mean + q95,
                          train_start=train_start, train_end=train_end, backtest=backtest,
                          fallback_reason=None if chosen != "seasonal_naive"
                          else "no light model beat seasonal naive in its own backtest")


def _scores(errs: list[np.ndarray], actuals: list[np.ndarray], scales: list[float], horizon: int) -> dict:
    abs_errors = np.abs(np.concatenate(errs))
    actual = np.concatenate(actuals)
    nonzero = actual > 0
    mases = [float(np.mean(np.abs(e))) / s for e, s in zip(errs, scales, strict=True) if s > 0]
    mape = float(np.mean(abs_errors[nonzero] / actual[nonzero]) * 100) if nonzero.any() else None
    return {"folds": len(errs), "horizon": horizon, "mae": _round(float(np.mean(abs_errors))),
            "mase": _round(float(np.mean(mases))) if mases else None,
            "mape": _round(mape) if mape is not None else None}


def hourly_series(values: dict[datetime, float], start: datetime, end: datetime) -> np.ndarray:
    """Hours ``start``..``end`` inclusive (whole hours); an hour without rows is zero."""
    hours = int((end - start).total_seconds() // 3600) + 1
    out = np.zeros(max(hours, 0), dtype=float)
    for hour, value in values.items():
        index = int((hour - start).total_seconds() // 3600)
        if 0 <= index < hours:
            out[index] += float(value)
    return out
