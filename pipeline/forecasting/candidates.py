"""The univariate candidates of the daily forecast, beside the regression with ARIMA errors
(``daily``): each is fitted once on the data before the first backtest origin and then only
re-run (parameters fixed, the state filtered anew) at each origin and on the latest window,
so a candidate costs one optimisation per series, not one per fold.

- ``auto_arima``: seasonal ARIMA (p,1,q)(0,1,1)_7 with (p, q) chosen by AIC on a small grid
  (every member has the same differences, so the AICs compare); the two differences follow a
  new level within days;
- ``ets``: exponential smoothing with an additive damped trend and additive weekly seasonality
  (statsmodels ``ExponentialSmoothing``); a local level that moves with the data;
- ``theta``: the Theta method on the seasonally adjusted series (statsmodels ``ThetaModel``),
  the M3 competition's robust baseline; re-fitted at each origin (it is closed form);
- ``weekday_mean_4w``: each weekday's mean over the last four weeks: a short window that
  adapts to a step change within four weeks and ignores everything older;
- ``seasonal_naive``: the same weekday last week; the floor.

Every candidate here sees the *cleaned* history (``clean_history``): facility closures and
public holidays replaced by the same weekday a week earlier, so a closed Christmas does not
come back as a closed New Year. Closures and holidays ahead are applied afterwards by the
caller (``daily.forecast_series``), the same way for every candidate.

Pure functions over numpy arrays: no database, no flask, no celery.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

SEASON = 7
# (p, q) of (p,1,q)(0,1,1)_7: the airline model and one with an AR term. A third order
# (2,1,1) cost a third more of the series' dearest step for a rare AIC win: the worker's
# budget (200 series in 90 s on 2 cores) comes first.
ARIMA_GRID: tuple[tuple[int, int], ...] = ((0, 1), (1, 1))
# The order search sees the last year before the first origin: the differenced model's terms
# are short-memory, and a second year doubled the search's time (the dearest part of a series).
ARIMA_FIT_DAYS = 364


class CandidateFailed(RuntimeError):
    """A candidate could not be fitted or gave a non-finite forecast: it drops out."""


def clean_history(y: np.ndarray, special: np.ndarray) -> np.ndarray:
    """``y`` with the ``special`` days (closures, public holidays) replaced by the same weekday
    one week earlier (itself cleaned), or later for the first weeks; a day with no ordinary
    neighbour keeps its value."""
    out = np.asarray(y, dtype=float).copy()
    n = len(out)
    for i in range(n):
        if special[i] and i >= SEASON:
            out[i] = out[i - SEASON]
    for i in range(n - 1, -1, -1):  # the first weeks: from the week after
        if special[i] and i < SEASON:
            j = i + SEASON
            while j < n and special[j]:
                j += SEASON
            if j < n:
                out[i] = out[j]
    return out


def seasonal_naive_point(y: np.ndarray, horizon: int) -> np.ndarray:
    last = y[-SEASON:]
    return np.array([last[i % SEASON] for i in range(horizon)], dtype=float)


def weekday_mean_point(y: np.ndarray, horizon: int, weeks: int = 4) -> np.ndarray:
    usable = y[len(y) % SEASON:][-weeks * SEASON:]
    profile = usable.reshape(-1, SEASON).mean(axis=0)
    # ``profile[k]`` is the weekday of y[-SEASON + k]: day n + i is that of y[n + i - SEASON].
    return np.array([profile[i % SEASON] for i in range(horizon)], dtype=float)


@dataclass
class Candidate:
    """One fitted candidate: ``point(history, horizon)`` forecasts after ``history`` with the
    parameters found once; ``spec`` says what was fitted (for the record)."""

    name: str
    point: Callable[[np.ndarray, int], np.ndarray]
    spec: dict = field(default_factory=dict)


def _checked(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(values)):
        raise CandidateFailed("non-finite forecast")
    return np.maximum(values, 0.0)


def _differenced(y: np.ndarray) -> np.ndarray:
    w = y[1:] - y[:-1]
    return w[SEASON:] - w[:-SEASON]


def _integrate(y: np.ndarray, ahead: np.ndarray) -> np.ndarray:
    """Undo (1-B)(1-B^7): y[t] = w[t] + y[t-1] + y[t-7] - y[t-8], from the history's end."""
    out = list(np.asarray(y[-(SEASON + 1):], dtype=float))
    for w in ahead:
        out.append(w + out[-1] + out[-SEASON] - out[-SEASON - 1])
    return np.array(out[SEASON + 1:])


def _sarimax(y: np.ndarray, p: int, q: int):  # noqa: ANN202
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    # The ARMA part on the differenced data (both differences taken first): the same
    # likelihood as the integrated model's with a state of 8 instead of 16, ~3x faster.
    return SARIMAX(_differenced(y), order=(p, 0, q), seasonal_order=(0, 0, 1, SEASON), concentrate_scale=True)


def fit_auto_arima(y: np.ndarray, grid: tuple[tuple[int, int], ...] = ARIMA_GRID) -> Candidate:
    """(p,1,q)(0,1,1)_7 by AIC over ``grid``, fitted on ``y``; the forecast filters any later
    history with the same parameters."""
    y = y[-ARIMA_FIT_DAYS:]
    best: tuple[float, int, int, np.ndarray] | None = None
    tried = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p, q in grid:
            try:
                result = _sarimax(y, p, q).fit(disp=False, maxiter=50, cov_type="none")
            except (np.linalg.LinAlgError, ValueError) as exc:
                tried.append({"order": [p, 1, q], "error": f"{type(exc).__name__}"})
                continue
            aic = float(result.aic)
            tried.append({"order": [p, 1, q], "aic": round(aic, 2) if math.isfinite(aic) else None})
            if math.isfinite(aic) and (best is None or aic < best[0]):
                best = (aic, p, q, np.asarray(result.params))
    if best is None:
        raise CandidateFailed("every ARIMA order failed")
    _, p, q, params = best

    def point(history: np.ndarray, horizon: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ahead = _sarimax(history, p, q).filter(params).forecast(horizon)
                return _checked(_integrate(history, np.asarray(ahead, dtype=float)))
            except (np.linalg.LinAlgError, ValueError) as exc:
                raise CandidateFailed(f"{type(exc).__name__}: {exc}") from exc

    return Candidate("auto_arima", point, {"order": [[p, 1, q], [0, 1, 1, SEASON]], "grid": tried})


def _ets(y: np.ndarray):  # noqa: ANN202
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    return ExponentialSmoothing(y, trend="add", damped_trend=True, seasonal="add", seasonal_periods=SEASON,
                                initialization_method="heuristic")


ETS_PARAMS = ("smoothing_level", "smoothing_trend", "smoothing_seasonal", "damping_trend")


def fit_ets(y: np.ndarray) -> Candidate:
    """Damped additive trend, additive weekly seasonality; the smoothing parameters fitted on
    ``y``, the initial state taken anew (heuristic) from each later history."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # No brute-force grid for the optimiser's starting values (statsmodels' default):
            # a fit took 0.19-0.21 s with it and 0.02 s without (30 births series, three
            # repetitions), and on 86 series of the three panels the optimum was the same (sums
            # of squares within 0.04%, same median MASE). On the 1392 validation windows the
            # median MASE moved by at most 0.001 and 5 windows chose another model (README).
            result = _ets(y).fit(use_brute=False)
        except (np.linalg.LinAlgError, ValueError) as exc:
            raise CandidateFailed(f"{type(exc).__name__}: {exc}") from exc
    params = {name: float(result.params[name]) for name in ETS_PARAMS}
    if not all(math.isfinite(v) for v in params.values()):
        raise CandidateFailed("non-finite ETS parameters")

    def point(history: np.ndarray, horizon: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return _checked(_ets(history).fit(optimized=False, **params).forecast(horizon))
            except (np.linalg.LinAlgError, ValueError) as exc:
                raise CandidateFailed(f"{type(exc).__name__}: {exc}") from exc

    return Candidate("ets", point, {"trend": "additive damped", "seasonal": "additive, 7 days",
                                    **{k: round(v, 4) for k, v in params.items()}})


def theta_point(history: np.ndarray, horizon: int) -> np.ndarray:
    from statsmodels.tsa.forecasting.theta import ThetaModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # Additive deseasonalising: multiplicative cannot take a closed (zero) weekday.
            model = ThetaModel(history, period=SEASON, deseasonalize=True, use_test=False, method="additive")
            return _checked(model.fit().forecast(horizon))
        except (np.linalg.LinAlgError, ValueError, ZeroDivisionError) as exc:
            raise CandidateFailed(f"{type(exc).__name__}: {exc}") from exc


def fit_univariate(y: np.ndarray) -> tuple[list[Candidate], list[str]]:
    """Every univariate candidate fitted on ``y`` (the cleaned history before the first
    origin); those that fail are left out, with the reason."""
    found = [Candidate("seasonal_naive", seasonal_naive_point),
             Candidate("weekday_mean_4w", weekday_mean_point, {"weeks": 4}),
             Candidate("theta", theta_point, {"period": SEASON, "deseasonalize": "additive"})]
    errors = []
    for fitter in (fit_auto_arima, fit_ets):
        try:
            found.append(fitter(y))
        except CandidateFailed as exc:
            errors.append(f"{fitter.__name__.removeprefix('fit_')}: {exc}")
    return found, errors


# --------------------------------------------------------------------------- intervals


def conformal_quantile(abs_errors: np.ndarray, level: float) -> float:
    """The ``level`` quantile of the backtest's absolute errors (linear interpolation). The
    split-conformal rank (the ceil((m + 1) * level)-th smallest, a guarantee for exchangeable
    errors) was used before; on the validation windows (the 28 days before each benchmark
    holdout and earlier ones; README) it covered 85-87% of births and synthetic days for a
    nominal 80% with three folds' 21 errors a week, above the 75-85% band. With holiday periods
    widened apart (``holiday_period_factor``) the plain quantile covered 81-83% on births,
    synthetic and flights alike."""
    errors = np.asarray(abs_errors, dtype=float)
    if len(errors) == 0:
        return float("nan")
    return float(np.quantile(errors, level))


def conformal_widths(errors: np.ndarray, usable: np.ndarray, horizon: int,
                     levels: tuple[float, ...] = (0.8, 0.95)) -> dict[float, np.ndarray]:
    """Half-widths per horizon day from backtest errors (folds x horizon), pooled by week
    ahead (each fold gives seven errors a week, so a week's quantile rests on 7 x folds of
    them), never narrower than the week before. ``usable`` masks days left out (closed)."""
    weeks = math.ceil(horizon / SEASON)
    out: dict[float, np.ndarray] = {}
    for level in levels:
        widths = []
        for week in range(weeks):
            cols = slice(week * SEASON, min(horizon, (week + 1) * SEASON))
            pool = np.abs(errors[:, cols][usable[:, cols]])
            if len(pool) == 0:
                pool = np.abs(errors[usable]) if usable.any() else np.zeros(1)
            widths.append(conformal_quantile(pool, level))
        widths = np.maximum.accumulate(np.array(widths))
        out[level] = np.array([widths[i // SEASON] for i in range(horizon)])
    return out


# Days either side of a public holiday that count as its "holiday period" (Thanksgiving's
# week, Christmas to New Year): schedules move there, and last week is a poorer guide.
HOLIDAY_REACH_DAYS = 3
# The widening is learnt only from enough days of each kind, and kept within reason.
HOLIDAY_MIN_DAYS = 10
HOLIDAY_MAX_FACTOR = 3.0
# The holiday periods' mean must exceed the ordinary days' by this many standard errors (of
# the holiday periods' mean) to widen anything: a ratio of two noisy means is above 1 half the
# time by chance alone. 2 before; on the flights' validation windows (README) the days in
# holiday periods were covered 72.9% of the time by the 80% intervals (ordinary days 79-83%),
# the factor applying in 60 of 182 windows; with 1: 75.7%, in 126 (with 0: 76.8%, but the
# holiday periods after a holiday's own week over-covered, 90%).
HOLIDAY_MIN_SE = 1.0


def near_holiday(days: list, holidays: set, reach: int = HOLIDAY_REACH_DAYS) -> np.ndarray:
    """Per day, whether a public holiday is within ``reach`` days of it (either side)."""
    ordinals = {h.toordinal() + k for h in holidays for k in range(-reach, reach + 1)}
    return np.array([day.toordinal() in ordinals for day in days], dtype=bool)


def after_holiday_period(near_history: np.ndarray, horizon: int) -> np.ndarray:
    """Per day ahead, whether the history's last week on that weekday (the week a weekly
    forecast rests on: seasonal naive copies it, the others start from it) was in a holiday
    period: that day's change from it is a holiday period's change, as
    ``holiday_period_factor`` counts them."""
    last = np.asarray(near_history[-SEASON:], dtype=bool)
    if len(last) < SEASON:
        return np.zeros(horizon, dtype=bool)
    return np.resize(last, horizon)  # day i ahead rests on last[i % SEASON]


def holiday_period_factor(y: np.ndarray, near: np.ndarray, skip: np.ndarray) -> tuple[float, int]:
    """(factor, days seen): how much less predictable the facility's own history was around
    public holidays than on ordinary days: the mean week-on-week change (each weekday's
    divided by its ordinary-day mean) of the days where the day or the week before was in a
    holiday period, over that of the other days; 1 (the ordinary intervals) unless the holiday
    periods' mean is ``HOLIDAY_MIN_SE`` standard errors above the ordinary one; at most
    ``HOLIDAY_MAX_FACTOR``; 1 when the history has fewer
    than ``HOLIDAY_MIN_DAYS`` of either kind. ``skip``: days left out of the measure (closed
    days, whose zero is known, and the holidays themselves, whose own effect is learnt
    separately: what is measured is how the days around them move)."""
    y = np.asarray(y, dtype=float)
    n = len(y)
    if n <= SEASON:
        return 1.0, 0
    change = np.abs(y[SEASON:] - y[:-SEASON])
    usable = ~(skip[SEASON:n] | skip[:n - SEASON])
    period = near[SEASON:n] | near[:n - SEASON]
    weekday = np.arange(SEASON, n) % SEASON
    normalised = np.full(len(change), np.nan)
    for k in range(SEASON):
        ordinary = (weekday == k) & usable & ~period
        typical = float(np.mean(change[ordinary])) if ordinary.any() else 0.0
        if typical > 0:
            normalised[weekday == k] = change[weekday == k] / typical
    finite = usable & np.isfinite(normalised)
    holiday, ordinary = normalised[finite & period], normalised[finite & ~period]
    if len(holiday) < HOLIDAY_MIN_DAYS or len(ordinary) < HOLIDAY_MIN_DAYS or np.mean(ordinary) <= 0:
        return 1.0, int(len(holiday))
    standard_error = float(np.std(holiday, ddof=1)) / math.sqrt(len(holiday))
    if np.mean(holiday) - np.mean(ordinary) < HOLIDAY_MIN_SE * standard_error:
        return 1.0, int(len(holiday))
    factor = float(np.mean(holiday) / np.mean(ordinary))
    return float(min(factor, HOLIDAY_MAX_FACTOR)), int(len(holiday))
