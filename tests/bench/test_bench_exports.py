"""Benchmark: a year of hourly stats to xlsx (write-only, streaming) and PDF.

Each case runs in a fresh child process (spawn) so its peak RSS is its own, not pytest's:
seed a SQLite database with 8,760 hours x N facilities of ``hourly_stats``, then build the
report (Volume and Delivery sections) and time the xlsx and the PDF separately.

Run: .venv/bin/python -m pytest -m bench tests/bench/test_bench_exports.py -s
Results: tests/bench/results/exports.json. Target (issue 8): xlsx under 10 s, 300 MB peak.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import resource
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench
RESULTS = Path(__file__).parent / "results" / "exports.json"
YEAR_START = datetime(2025, 1, 1, tzinfo=UTC)


def _seed(folder: str, facilities: int) -> None:
    from sqlalchemy import insert

    from api.cli import upgrade_database
    from pipeline.database import make_engine, make_session_factory
    from pipeline.models import Facility, HourlyStats, User

    url = f"sqlite:///{folder}/bench.sqlite"
    upgrade_database(url)
    session = make_session_factory(make_engine(url))()
    ids = []
    for n in range(facilities):
        facility = Facility(name=f"Bench facility {n:02d}")
        session.add(facility)
        session.flush()
        session.add(User(email=f"bench{n}@bench.test", role="uploader", facility_id=facility.id,
                         token_hash=f"{n:064d}"))
        ids.append(facility.id)
    session.flush()
    rows = [{"hour": YEAR_START + timedelta(hours=h), "facility_id": f, "modality": "CT", "status": "parsed",
             "user_id": f, "uploads": 3 + h % 5, "bytes": 5_000_000 + h, "studies": 1, "delivered": 3,
             "failed_deliveries": h % 7 == 0, "lat_b2": 2, "lat_b4": 1, "latency_sum_ms": 3_000,
             "latency_max_ms": 4_000}
            for f in ids for h in range(8760)]
    for i in range(0, len(rows), 20_000):
        session.execute(insert(HourlyStats), rows[i:i + 20_000])
    session.commit()


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _reset_peak() -> float:
    """Reset the process's RSS high-water mark (Linux clear_refs 5); returns RSS now."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def _case(folder: str, facilities: int, grouping: list[str], out: multiprocessing.Queue) -> None:
    from pipeline.database import make_engine, make_session_factory
    from pipeline.excel_export import write_xlsx
    from pipeline.pdf_export import write_pdf
    from pipeline.report_data import build
    from pipeline.report_definitions import ReportSpec

    session = make_session_factory(make_engine(f"sqlite:///{folder}/bench.sqlite"))()
    ids = list(range(1, facilities + 1))
    spec = ReportSpec(name="Year of hours", metrics=["uploads", "bytes", "studies", "delivery_success_rate",
                                                     "delivery_latency_p95", "dead_letters"],
                      grouping=grouping, formats=["xlsx", "pdf"], timezone="Europe/Berlin",
                      filters={"period": "last_365_days"})
    end = YEAR_START + timedelta(days=365)
    base_rss = _reset_peak()
    started = time.perf_counter()
    counts = write_xlsx(build(session, spec, ids, YEAR_START, end), Path(folder) / "year.xlsx")
    xlsx_seconds = time.perf_counter() - started
    xlsx_peak = _status_mib("VmHWM")
    _reset_peak()
    started = time.perf_counter()
    write_pdf(build(session, spec, ids, YEAR_START, end), Path(folder) / "year.pdf")
    pdf_seconds = time.perf_counter() - started
    pdf_peak = _status_mib("VmHWM")
    out.put({
        "facilities": facilities, "hourly_stats_rows": facilities * 8760, "grouping": grouping,
        "sheet_rows": counts,
        "xlsx_seconds": round(xlsx_seconds, 2), "xlsx_bytes": os.path.getsize(Path(folder) / "year.xlsx"),
        "pdf_seconds": round(pdf_seconds, 2), "pdf_bytes": os.path.getsize(Path(folder) / "year.pdf"),
        # Whole-process RSS: "before" holds the interpreter, imports and an open session; the
        # peaks are the high-water marks during each build (VmHWM, reset before each).
        "rss_mib_before_build": base_rss,
        "peak_rss_mib_xlsx": xlsx_peak,
        "peak_rss_mib_pdf": pdf_peak,
        "ru_maxrss_mib_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    })


def _run(tmp_path: Path, facilities: int, grouping: list[str]) -> dict:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    folder = tmp_path / f"f{facilities}-{'-'.join(grouping)}"
    folder.mkdir()
    seeder = context.Process(target=_seed, args=(str(folder), facilities))
    seeder.start()
    seeder.join(600)
    # The build runs in its own process: its peak RSS is the export's, not the seeding's.
    child = context.Process(target=_case, args=(str(folder), facilities, grouping, out))
    child.start()
    result = out.get(timeout=600)
    child.join(60)
    return result


def test_bench_year_of_hourly_stats_to_xlsx_and_pdf(tmp_path):
    cases = [_run(tmp_path, 5, ["hour", "facility"]), _run(tmp_path, 50, ["day", "facility"])]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": ".venv/bin/python -m pytest -m bench tests/bench/test_bench_exports.py -s",
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "database": "SQLite file (child process), openpyxl write-only, fpdf2",
        "cases": cases,
    }, indent=2) + "\n")
    for case in cases:
        print(json.dumps(case))
        assert case["sheet_rows"]["Volume"] > 0
