"""(b) Intake: 8 concurrent tus clients (threads, one requests.Session each) upload 200
synthetic CT files (~39 KB) against the real API (gunicorn), twice: each file in one PATCH,
and in 16 KiB PATCHes (3 per file). Reports total MB/s (payload bytes / wall time, the
creation POSTs included) and PATCH latency P50/P95.

The workers run as in production meanwhile (assembly and parsing compete for the same two
cores); the batches stay open, so nothing is forwarded. Afterwards every upload must be
complete on the server and, once the workers caught up, parsed.

Knobs (environment): BENCH_INTAKE_FILES (200), BENCH_INTAKE_CLIENTS (8),
BENCH_INTAKE_CHUNKS (comma list of bytes, 0 = whole file; default "0,16384").
"""

from __future__ import annotations

import os
import statistics
import time

import pytest

from pipeline.dicom.samples import synthetic_study
from tests.bench.helpers import (
    cpu_delta,
    cpu_snapshot,
    machine_busy_seconds,
    percentile,
    upload_concurrently,
)
from tests.integration.gateway_client import Gateway

pytestmark = [pytest.mark.bench, pytest.mark.integration]

FILES = int(os.environ.get("BENCH_INTAKE_FILES", "200"))
CLIENTS = int(os.environ.get("BENCH_INTAKE_CLIENTS", "8"))
CHUNKS = [int(c) for c in os.environ.get("BENCH_INTAKE_CHUNKS", "0,16384").split(",")]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def test_intake_concurrent_tus_clients(api_server, worker, make_user, bench_results):
    token = make_user("Bench Intake", "uploader")
    gateway = Gateway(api_server.url, token)
    per_study = 50
    studies = (FILES + per_study - 1) // per_study
    files = [f for _ in range(studies) for f in synthetic_study(per_study)][:FILES]
    megabytes = sum(len(f) for f in files) / 1e6
    print(f"\n(b) intake: {FILES} files ({megabytes:.2f} MB, mean {megabytes * 1e3 / FILES:.1f} KB), "
          f"{CLIENTS} concurrent clients")

    runs = []
    for chunk in CHUNKS:
        # Fresh instances for each run, so no run benefits from another's parsed rows.
        batch_id = gateway.open_batch(label=f"bench intake chunk {chunk or 'whole'}")
        cpu_before, busy_before = cpu_snapshot(), machine_busy_seconds()
        stats = upload_concurrently(
            api_server.url, token, batch_id, files, clients=CLIENTS, chunk=chunk or None,
            name_prefix=f"c{chunk}-",
        )
        cpu = cpu_delta(cpu_before, cpu_snapshot())
        busy = machine_busy_seconds() - busy_before
        assert not stats.errors, stats.errors[:5]
        report = gateway.report(batch_id)
        assert report["totals"]["files"] == FILES
        assert report["totals"]["bytes_received"] == report["totals"]["bytes"] == sum(len(f) for f in files)
        patches = stats.patch_latencies
        row = {
            "chunk_bytes": chunk or "whole file",
            "patches_per_file": round(len(patches) / FILES, 2),
            "patch_requests": len(patches),
            "wall_seconds": round(stats.wall_seconds, 3),
            "mb_per_s": round(megabytes / stats.wall_seconds, 2),
            "files_per_s": round(FILES / stats.wall_seconds, 1),
            "patch_p50_ms": _ms(percentile(patches, 50)),
            "patch_p95_ms": _ms(percentile(patches, 95)),
            "patch_max_ms": _ms(max(patches)),
            "create_p50_ms": _ms(percentile(stats.create_latencies, 50)),
            "create_p95_ms": _ms(percentile(stats.create_latencies, 95)),
            "batch_id": batch_id,
            "cpu_seconds": cpu,
            "machine_busy_cpu_seconds": round(busy, 2),
            "machine_cpu_seconds_available": round(stats.wall_seconds * (os.cpu_count() or 1), 2),
        }
        runs.append(row)
        print(
            f"  chunk {str(row['chunk_bytes']):>10}: {row['mb_per_s']:5.2f} MB/s  "
            f"{row['files_per_s']:5.1f} files/s  PATCH P50 {row['patch_p50_ms']} ms  "
            f"P95 {row['patch_p95_ms']} ms  (max {row['patch_max_ms']} ms, "
            f"{row['patches_per_file']} PATCH/file); POST create P50 {row['create_p50_ms']} ms "
            f"P95 {row['create_p95_ms']} ms\n"
            f"      CPU s busy {busy:.2f} of {row['machine_cpu_seconds_available']:.2f}: "
            + ", ".join(f"{name} {seconds:.2f}" for name, seconds in cpu.items())
        )

    # Correctness after the clock stopped: the workers assemble and parse every upload.
    t0 = time.monotonic()
    for row in runs:
        deadline = time.monotonic() + 300
        while True:
            states = gateway.report(row["batch_id"])["totals"]["files_by_state"]
            if states.get("parsed", 0) == FILES:
                break
            assert set(states) <= {"receiving", "received", "assembled", "parsed"}, states
            assert time.monotonic() < deadline, states
            time.sleep(0.5)
    print(f"  all {FILES * len(runs)} uploads parsed {time.monotonic() - t0:.1f} s after the last upload")

    bench_results["intake"] = {
        "files": FILES,
        "megabytes": round(megabytes, 3),
        "clients": CLIENTS,
        "client": "threads, one requests.Session each; POST create + PATCH(es); no checksum",
        "api": "relaypacs api (gunicorn gthread, 2 workers x 8 threads)",
        "runs": runs,
        "patch_p50_ms_median": statistics.median(r["patch_p50_ms"] for r in runs),
    }
