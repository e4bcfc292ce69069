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
from concurrent.futures import ProcessPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import test_bench_forecast as bench  # noqa: E402

HORIZON = 28
SETS = ("flights", "after_holiday", "births", "synthetic")
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
    return out


def births_december(python: Path, tags: list[str]) -> list[dict]:
    import holidays

    with tempfile.TemporaryDirectory() as tmp:
        bench._reference(python, "births", f"{tmp}/births.npz")
        with np.load(f"{tmp}/births.npz") as births:
            days, states, values = list(births["days"]), list(births["states"]), births["values"]
    first = date.fromisoformat(days[0])
    us = holidays.country_holidays("US", years=range(1969, 1990))
    out = []
    for tag, year in ((tag, year) for tag in tags for year in (1985, 1986, 1987)):
        origin = (date(year, 12, 4) - first).days
        # Two years before December 4, or (``_1y``) the year's own January 1 on: the
        # flights holdout's shape, a December with no year-end in the history.
        lo = origin - bench.TRAIN if tag == "births_december" else (date(year, 1, 1) - first).days
        start = first + timedelta(days=lo)
        hol = [d for d in us if start <= d < date(year, 12, 4) + timedelta(days=HORIZON)]
        for column, state in enumerate(states):
            y = np.nan_to_num(values[lo:origin + HORIZON, column])
            out.append({"id": f"{state}-{year}", "set": tag, "start": start, "y": y,
                        "origin": origin - lo, "closed": [], "holidays": hol})
    return out


def run_one(window: dict) -> dict:
    from pipeline.forecasting import daily

    y, origin = window["y"], window["origin"]
    began = time.process_time()
    result = daily.forecast_series(y[:origin], window["start"], horizon=HORIZON, closed=window["closed"],
                                   holidays=window["holidays"])
    p = result.prediction
    return {"id": window["id"], "set": window["set"], "train": y[:origin],
            "actual": y[origin:origin + HORIZON],
            "model": result.model, "mean": p.mean, "lo80": p.lo80, "hi80": p.hi80, "lo95": p.lo95,
            "hi95": p.hi95, "alternatives": result.alternatives, "detail": result.detail,
            "intervals": result.intervals, "day_rules": result.day_rules, "reason": result.reason,
            "cpu": time.process_time() - began}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    python = bench.reference_python()
    todo = windows(python, args.sets.split(","))
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"
    began = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=spawn) as pool:
        results = list(pool.map(run_one, todo, chunksize=1))
    wall = time.perf_counter() - began
    with open(args.out, "wb") as handle:
        pickle.dump(results, handle)
    for tag in dict.fromkeys(r["set"] for r in results):
        rows = [r for r in results if r["set"] == tag]
        ours = [bench.mase(r["actual"], r["mean"], r["train"]) for r in rows]
        cover = np.mean([bench.coverage(r["actual"], r["lo80"], r["hi80"]) for r in rows])
        print(f"{tag}: {len(rows)} windows, median MASE {np.nanmedian(ours):.3f}, 80% coverage {cover:.1%}, "
              f"CPU {np.mean([r['cpu'] for r in rows]):.2f} s a window", file=sys.stderr)
    print(f"{len(results)} windows in {wall:.0f} s, load {os.getloadavg()}", file=sys.stderr)


if __name__ == "__main__":
    main()
