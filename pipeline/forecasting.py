"""Upload volume forecasting: daily series, SARIMAX with weekly seasonality, seasonal naive.

Pure functions over plain values (dates, floats): no database, no flask, no celery.
``forecast_series`` is the whole decision for one series:

- fewer than ``MIN_HISTORY_DAYS`` of history: seasonal naive, and it says so;
- else each order of a small grid (all with one weekly seasonal difference, so their AICs
  are comparable) is fitted on the data before the first backtest origin; the lowest AIC
  wins; closure days (holidays, a facility's own closures) enter as a 0/1 regressor;
- a rolling-origin backtest (several ``horizon``-day holdouts) scores the chosen model and
  seasonal naive on the same holdouts (MAPE, MASE); the model is used only if it beats
  seasonal naive there, otherwise seasonal naive is, with the reason;
- the chosen model is refitted on the latest window and gives the points and the 80% / 95%
  prediction intervals (clipped at zero: volumes are never negative).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

# Many small state-space fits: BLAS threads only oversubscribe the cores the fan-out already
# uses (measured: 5x slower with default threads under load). Only effective if numpy is
# not imported yet; workers import this module early for that reason.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

SEASON = 7
MIN_HISTORY_DAYS = 8 * SEASON
DEFAULT_HORIZON = 28
DEFAULT_FOLDS = 3
# About a year: enough for the weekly cycle and the trend, short enough to keep a fit cheap.
MAX_HISTORY_DAYS = 364
Z80, Z95 = 1.2815515655446004, 1.959963984540054

# (p, d, q), (P, D, Q, s): every candidate has the same differencing (D=1 weekly), which is
# what makes their AICs comparable (simple differencing drops the same first observations).
DEFAULT_GRID: tuple[tuple[tuple[int, int, int], tuple[int, int, int, int]], ...] = (
    ((1, 0, 0), (0, 1, 1, SEASON)),
    ((1, 0, 1), (0, 1, 1, SEASON)),
    ((2, 0, 0), (0, 1, 1, SEASON)),
    ((1, 0, 1), (1, 1, 1, SEASON)),
)


# --------------------------------------------------------------------------- series


def daily_series(values: Mapping[date, float], start: date, end: date) -> np.ndarray:
    """Days ``start``..``end`` inclusive; a missing day is zero uploads, not a gap."""
    days = (end - start).days + 1
    out = np.zeros(max(days, 0), dtype=float)
    for day, value in values.items():
        index = (day - start).days
        if 0 <= index < days:
            out[index] += float(value)
    return out


def closure_flags(days: Sequence[date], closed: Iterable[date]) -> np.ndarray:
    closed_set = set(closed)
    return np.array([1.0 if day in closed_set else 0.0 for day in days])


# --------------------------------------------------------------------------- results


@dataclass
class Prediction:
    mean: np.ndarray
    lo80: np.ndarray
    hi80: np.ndarray
    lo95: np.ndarray
    hi95: np.ndarray


@dataclass
class Backtest:
    folds: int
    horizon: int
    mape: float | None  # percent, over holdout days with non-zero volume
    mase: float | None  # MAE over the in-sample seasonal-naive MAE of each fold's training data
    mae: float

    def as_dict(self) -> dict:
        return {"folds": self.folds, "horizon": self.horizon, "mape": _round(self.mape),
                "mase": _round(self.mase), "mae": _round(self.mae)}


@dataclass
class Forecast:
    model: str  # "sarimax" | "seasonal_naive"
    start: date  # the first forecast day
    prediction: Prediction
    order: list | None = None  # [[p, d, q], [P, D, Q, s]]
    aic: float | None = None
    regressors: list[str] = field(default_factory=list)
    train_start: date | None = None
    train_end: date | None = None
    backtest: dict = field(default_factory=dict)  # {"model": ..., "seasonal_naive": ...}
    fallback_reason: str | None = None
    candidates: list[dict] = field(default_factory=list)  # the grid's AICs, for the record

    def points(self) -> list[dict]:
        p = self.prediction
        return [
            {"day": (self.start + timedelta(days=i)).isoformat(), "mean": _round(p.mean[i]),
             "lo80": _round(p.lo80[i]), "hi80": _round(p.hi80[i]),
             "lo95": _round(p.lo95[i]), "hi95": _round(p.hi95[i])}
            for i in range(len(p.mean))
        ]


def _round(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 4)


# --------------------------------------------------------------------------- seasonal naive


def seasonal_naive(y: np.ndarray, horizon: int, season: int = SEASON) -> Prediction:
    """Each day as the same weekday last week; the interval widens with the weeks ahead
    (the seasonal random walk: sd * sqrt(weeks))."""
    last = y[-season:]
    mean = np.array([last[i % season] for i in range(horizon)], dtype=float)
    diffs = y[season:] - y[:-season]
    sigma = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0
    weeks = np.floor(np.arange(horizon) / season) + 1
    sd = sigma * np.sqrt(weeks)
    return _interval(mean, sd)


def _interval(mean: np.ndarray, sd: np.ndarray) -> Prediction:
    clip = np.maximum
    return Prediction(mean=clip(mean, 0), lo80=clip(mean - Z80 * sd, 0), hi80=clip(mean + Z80 * sd, 0),
                      lo95=clip(mean - Z95 * sd, 0), hi95=clip(mean + Z95 * sd, 0))


# --------------------------------------------------------------------------- SARIMAX


class FitFailed(RuntimeError):
    """The optimiser did not converge or the numerics broke (e.g. an LU decomposition)."""


@dataclass
class Fitted:
    order: tuple[int, int, int]
    seasonal_order: tuple[int, int, int, int]
    params: np.ndarray
    aic: float
    use_exog: bool


def _model(y: np.ndarray, exog: np.ndarray | None, order, seasonal_order, *, simple: bool):  # noqa: ANN001, ANN202
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    # A constant on the weekly-differenced series is a drift: the week-on-week growth.
    return SARIMAX(y, exog=exog, order=order, seasonal_order=seasonal_order, trend="c",
                   simple_differencing=simple, concentrate_scale=True)


def fit(y: np.ndarray, exog: np.ndarray | None, order: tuple[int, int, int],
        seasonal_order: tuple[int, int, int, int], *, maxiter: int = 50,
        start_params: np.ndarray | None = None) -> Fitted:
    """Maximum likelihood on the differenced series (simple differencing: no diffuse states,
    several times faster); the parameters are the same as the undifferenced model's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = _model(y, exog, order, seasonal_order, simple=True).fit(
                disp=False, maxiter=maxiter, start_params=start_params)
        except (np.linalg.LinAlgError, ValueError) as exc:
            raise FitFailed(f"{type(exc).__name__}: {exc}") from exc
    if not result.mle_retvals.get("converged", True):
        raise FitFailed("optimiser did not converge")
    if not np.all(np.isfinite(result.params)) or not math.isfinite(result.aic):
        raise FitFailed("non-finite parameters or AIC")
    return Fitted(order, seasonal_order, np.asarray(result.params), float(result.aic), exog is not None)


def predict(fitted: Fitted, y: np.ndarray, exog: np.ndarray | None, exog_future: np.ndarray | None,
            horizon: int) -> Prediction:
    """Filter ``y`` with fixed parameters (no re-estimation) and forecast with intervals."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = _model(y, exog if fitted.use_exog else None, fitted.order, fitted.seasonal_order,
                            simple=False).filter(fitted.params)
            forecast = result.get_forecast(horizon, exog=exog_future if fitted.use_exog else None)
        except (np.linalg.LinAlgError, ValueError) as exc:
            raise FitFailed(f"{type(exc).__name__}: {exc}") from exc
    mean = np.asarray(forecast.predicted_mean, dtype=float)
    sd = np.sqrt(np.maximum(np.asarray(forecast.var_pred_mean, dtype=float), 0))
    if not np.all(np.isfinite(mean)):
        raise FitFailed("non-finite forecast")
    return _interval(mean, sd)


# --------------------------------------------------------------------------- scores


def mase_scale(train: np.ndarray, season: int = SEASON) -> float:
    return float(np.mean(np.abs(train[season:] - train[:-season]))) if len(train) > season else 0.0


def _score(actuals: list[np.ndarray], predictions: list[np.ndarray], scales: list[float],
           folds: int, horizon: int) -> Backtest:
    abs_errors = [np.abs(a - p) for a, p in zip(actuals, predictions, strict=True)]
    mae = float(np.mean(np.concatenate(abs_errors)))
    mases = [float(np.mean(e)) / s for e, s in zip(abs_errors, scales, strict=True) if s > 0]
    actual = np.concatenate(actuals)
    errors = np.concatenate(abs_errors)
    nonzero = actual > 0
    mape = float(np.mean(errors[nonzero] / actual[nonzero]) * 100) if nonzero.any() else None
    return Backtest(folds, horizon, mape, float(np.mean(mases)) if mases else None, mae)


# --------------------------------------------------------------------------- the decision


def forecast_series(
    y: Sequence[float] | np.ndarray,
    first_day: date,
    *,
    horizon: int = DEFAULT_HORIZON,
    closed: Iterable[date] = (),
    holidays: Iterable[date] = (),
    grid: Sequence[tuple[tuple[int, int, int], tuple[int, int, int, int]]] = DEFAULT_GRID,
    folds: int = DEFAULT_FOLDS,
    max_history: int = MAX_HISTORY_DAYS,
) -> Forecast:
    """Forecast ``horizon`` days after the last of ``y`` (``y[0]`` is ``first_day``).

    ``closed``: days the facility is shut (forecast zero); ``holidays``: days whose effect the
    regressor estimates from the past ones (both feed the one 0/1 regressor)."""
    y = np.asarray(y, dtype=float)
    n = len(y)
    start = first_day + timedelta(days=n)
    if n < SEASON:
        zero = np.zeros(horizon)
        return Forecast("seasonal_naive", start, Prediction(zero, zero, zero, zero, zero),
                        fallback_reason=f"no history ({n} days)")
    days = [first_day + timedelta(days=i) for i in range(n + horizon)]
    closed = set(closed)
    flags = closure_flags(days, closed | set(holidays))
    shut = closure_flags(days, closed) > 0
    # A holiday ahead with no past one to learn its effect from is taken as closed (zero);
    # once the history has some, the regressor estimates the effect instead (a public holiday
    # may halve the volume rather than stop it). A closed day is zero either way.
    zero_closed = True

    def ahead_zero(start_index: int, h: int) -> np.ndarray:
        window = slice(start_index, start_index + h)
        return (flags[window] > 0) if zero_closed else shut[window]

    def naive(history: np.ndarray, h: int, closed_ahead: np.ndarray) -> Prediction:
        return _zero_closed(seasonal_naive(history, h), closed_ahead)

    future_closed = ahead_zero(n, horizon)

    if n < MIN_HISTORY_DAYS:
        return Forecast("seasonal_naive", start, naive(y, horizon, future_closed),
                        train_start=first_day, train_end=days[n - 1],
                        fallback_reason=f"short history: {n} days < {MIN_HISTORY_DAYS}")
    folds = min(folds, (n - MIN_HISTORY_DAYS) // horizon)
    if folds < 1:
        return Forecast("seasonal_naive", start, naive(y, horizon, future_closed),
                        train_start=first_day, train_end=days[n - 1],
                        fallback_reason=f"history of {n} days too short to backtest a {horizon}-day horizon")

    origins = [n - horizon * k for k in range(folds, 0, -1)]
    first_origin = origins[0]
    lo = max(0, first_origin - max_history)
    use_exog = _exog_usable(flags[lo:first_origin]) and _exog_usable(flags[max(0, n - max_history):n])
    x = flags.reshape(-1, 1) if use_exog else None
    zero_closed = not use_exog
    future_closed = ahead_zero(n, horizon)
    regressors = ["closed"] if use_exog else []

    # Order by AIC on the data before the first holdout: the backtest then never saw its holdouts.
    candidates: list[dict] = []
    best: Fitted | None = None
    errors: list[str] = []
    for order, seasonal_order in grid:
        try:
            fitted = fit(y[lo:first_origin], x[lo:first_origin] if use_exog else None, order, seasonal_order)
        except FitFailed as exc:
            errors.append(str(exc))
            candidates.append({"order": [list(order), list(seasonal_order)], "aic": None, "error": str(exc)})
            continue
        candidates.append({"order": [list(order), list(seasonal_order)], "aic": _round(fitted.aic)})
        if best is None or fitted.aic < best.aic:
            best = fitted

    record = dict(train_start=days[max(0, n - max_history)], train_end=days[n - 1], candidates=candidates,
                  regressors=regressors)
    if best is None:
        reason = f"every fit failed: {errors[0] if errors else 'no candidates'}"
        return Forecast("seasonal_naive", start, naive(y, horizon, future_closed),
                        fallback_reason=reason, **record)

    # Rolling origin: the parameters fitted before the first origin, the state filtered up to
    # each origin, the same holdouts for the model and for seasonal naive.
    actuals, model_preds, naive_preds, scales = [], [], [], []
    try:
        for origin in origins:
            window = slice(max(0, origin - max_history), origin)
            history = y[window]
            ahead = ahead_zero(origin, horizon)
            model_pred = predict(best, history, x[window] if use_exog else None,
                                 x[origin:origin + horizon] if use_exog else None, horizon)
            actuals.append(y[origin:origin + horizon])
            model_preds.append(_zero_closed(model_pred, ahead).mean)
            naive_preds.append(naive(history, horizon, ahead).mean)
            scales.append(mase_scale(history))
    except FitFailed as exc:
        return Forecast("seasonal_naive", start, naive(y, horizon, future_closed), order=_order(best),
                        aic=best.aic, fallback_reason=f"backtest failed: {exc}", **record)
    model_score = _score(actuals, model_preds, scales, folds, horizon)
    naive_score = _score(actuals, naive_preds, scales, folds, horizon)
    backtest = {"model": model_score.as_dict(), "seasonal_naive": naive_score.as_dict()}
    if not model_score.mae < naive_score.mae:
        return Forecast("seasonal_naive", start, naive(y, horizon, future_closed), order=_order(best),
                        aic=best.aic, backtest=backtest,
                        fallback_reason="SARIMAX did not beat seasonal naive in its own backtest", **record)

    # Refit on the latest window, starting from the backtest's parameters (a few iterations).
    window = slice(max(0, n - max_history), n)
    try:
        final = fit(y[window], x[window] if use_exog else None, best.order, best.seasonal_order,
                    start_params=best.params)
        prediction = predict(final, y[window], x[window] if use_exog else None,
                             x[n:] if use_exog else None, horizon)
    except FitFailed as exc:
        return Forecast("seasonal_naive", start, naive(y, horizon, future_closed), order=_order(best),
                        aic=best.aic, backtest=backtest, fallback_reason=f"final fit failed: {exc}", **record)
    return Forecast("sarimax", start, _zero_closed(prediction, future_closed), order=_order(final),
                    aic=final.aic, backtest=backtest, **record)


def _exog_usable(flags: np.ndarray) -> bool:
    # A regressor that never (or always) varies in the training window cannot be estimated.
    return bool(flags.any() and not flags.all())


def _order(fitted: Fitted) -> list:
    return [list(fitted.order), list(fitted.seasonal_order)]


def _zero_closed(prediction: Prediction, closed_ahead: np.ndarray) -> Prediction:
    if not closed_ahead.any():
        return prediction
    keep = ~closed_ahead
    return Prediction(*(np.where(keep, arr, 0.0) for arr in (prediction.mean, prediction.lo80,
                                                              prediction.hi80, prediction.lo95,
                                                              prediction.hi95)))
