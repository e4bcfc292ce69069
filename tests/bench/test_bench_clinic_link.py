"""``relaypacs upload`` over an emulated clinic link, not loopback: 20 Mbit/s upstream
(``tc tbf`` on a veth pair into a network namespace) and 80 ms round-trip time (a delaying
TCP proxy), set up by tests/bench/clinic_link.py.

The gateway side: the API under gunicorn (``relaypacs api``, as in the other benches) on
the session's PostgreSQL and Redis, storing into a folder store (a 50 MB file is five
hundred megabytes a run in moto's memory otherwise). No Celery worker: the clock is the
CLI's upload phase (batch creation to last byte, ``--wait 0``), which the workers do not
take part in; they would only compete for the shared host's two cores.

Measured, each run on a fresh folder (new UIDs):
- BENCH_LINK_SMALL_FILES (2,000) synthetic CT instances of ~39 KB, at the default --jobs and
  at ``--jobs 1``: files/s; target: the default at least 3x ``--jobs 1``;
- BENCH_LINK_BIG_FILES (10) multi-frame instances of BENCH_LINK_BIG_MB (50) MB at the default
  (and at the --jobs values of BENCH_LINK_BIG_JOBS; with BENCH_LINK_ONLY=big, only these, into
  clinic_link_big_jobs.json): link utilisation, the payload's bits
  per second over 20 Mbit/s; target: at least 90 %. The bytes the shaped interface sent
  (TCP/IP and HTTP headers included) are recorded beside it.

Results: tests/bench/results/clinic_link.json. Needs root (ip netns, tc).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from pipeline.dicom.samples import synthetic_study
from tests.bench.clinic_link import ClinicLink
from tests.clinic_samples import large_instance
from tests.integration.services import LOOPBACK, ApiServer, relaypacs_argv

pytestmark = [pytest.mark.bench, pytest.mark.integration]

UPSTREAM_MBIT = 20.0
RTT_MS = 80.0
SMALL_FILES = int(os.environ.get("BENCH_LINK_SMALL_FILES", "2000"))
BIG_FILES = int(os.environ.get("BENCH_LINK_BIG_FILES", "10"))
BIG_MB = int(os.environ.get("BENCH_LINK_BIG_MB", "50"))
# Other --jobs values tried on the big files (comma list, e.g. "1,4").
BIG_EXTRA_JOBS = [int(j) for j in os.environ.get("BENCH_LINK_BIG_JOBS", "").split(",") if j.strip()]
# "big": only the big files (the small-file figures of clinic_link.json are left alone).
ONLY = os.environ.get("BENCH_LINK_ONLY", "")
# Other --jobs values tried on the small files in the same run (4: the default before this
# benchmark), comma list.
EXTRA_JOBS = [int(j) for j in os.environ.get("BENCH_LINK_EXTRA_JOBS", "4").split(",") if j.strip()]
TARGET_RATIO = 3.0
TARGET_UTILISATION = 0.90
RESULTS_FILE = Path(__file__).parent / "results" / "clinic_link.json"
BIG_RESULTS_FILE = Path(__file__).parent / "results" / "clinic_link_big_jobs.json"
PER_STUDY = 50
FRAME_BYTES = 32 * 1024  # large_instance's frame


def default_jobs() -> int:
    from api.cli.upload import upload

    return next(p.default for p in upload.params if p.name == "jobs")


def small_folder(root: Path) -> tuple[int, int]:
    sizes = []
    for study in range(0, SMALL_FILES, PER_STUDY):
        folder = root / f"study{study // PER_STUDY:03d}"
        folder.mkdir(parents=True)
        for i, data in enumerate(synthetic_study(min(PER_STUDY, SMALL_FILES - study))):
            (folder / f"IM{i:04d}").write_bytes(data)
            sizes.append(len(data))
    return len(sizes), sum(sizes)


def big_folder(root: Path) -> tuple[int, int]:
    root.mkdir(parents=True)
    sizes = []
    for k in range(BIG_FILES):
        data = large_instance(BIG_MB * 1_000_000 // FRAME_BYTES, study_uid=generate_uid())
        (root / f"MF{k:02d}").write_bytes(data)
        sizes.append(len(data))
    return len(sizes), sum(sizes)


def upload_over(link: ClinicLink, folder: Path, server: str, token: str, state: Path,
                jobs: int | None) -> dict:
    argv = relaypacs_argv("upload", str(folder), "--server", server, "--token", token,
                          "--state", str(state), "--wait", "0")
    if jobs is not None:
        argv += ["--jobs", str(jobs)]
    wire_before, proxy_before = link.upstream_bytes(), link.proxies[0].upstream.bytes
    load = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    result = subprocess.run(link.inside(argv), capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    match = re.search(r"batch (\d+): uploaded (\d+)/(\d+) bytes \(100%\), ([0-9.]+) MB/s", result.stdout)
    assert match, result.stdout[-2000:]
    size, rate = int(match[3]), float(match[4])
    assert int(match[2]) == size
    seconds = size / 1e6 / rate
    link_bytes_per_s = UPSTREAM_MBIT * 1e6 / 8
    return {
        "batch_id": int(match[1]), "bytes": size, "upload_seconds": round(seconds, 2),
        "command_seconds": round(wall, 2),
        "payload_mbit_per_s": round(size * 8 / seconds / 1e6, 2),
        "link_utilisation": round(size / seconds / link_bytes_per_s, 3),
        # What crossed the shaped interface (IP packets: TCP, HTTP and tus headers included),
        # over the whole command (scan and batch creation too).
        "wire_bytes": link.upstream_bytes() - wire_before,
        "wire_utilisation_whole_command": round(
            (link.upstream_bytes() - wire_before) / wall / link_bytes_per_s, 3),
        "http_bytes_through_proxy": link.proxies[0].upstream.bytes - proxy_before,
        "tbf_drops": link.upstream_drops(),
        "load_average_start": load,
    }


def test_cli_over_a_clinic_link(tmp_path, gateway_env, make_user, bench_results):
    env = {**gateway_env, "RELAYPACS_STORAGE_URL": f"file://{tmp_path / 'objects'}"}
    api = ApiServer(env, tmp_path / "api.log").start()
    token = make_user("Bench Link", "uploader")
    default = default_jobs()
    runs: list[dict] = []
    try:
        with ClinicLink(upstream_mbit=UPSTREAM_MBIT, rtt_ms=RTT_MS) as link:
            server = link.expose(LOOPBACK, api.port)
            plan = [] if ONLY == "big" else [
                ("small", default), ("small", 1),
                *[("small", j) for j in EXTRA_JOBS if j not in (1, default)]]
            plan += [("big", default), *[("big", j) for j in BIG_EXTRA_JOBS if j != default]]
            for kind, jobs in plan:
                folder = tmp_path / f"{kind}-j{jobs}"
                files, size = (small_folder if kind == "small" else big_folder)(folder)
                run = upload_over(link, folder, server, token, tmp_path / f"state-{kind}-{jobs}.json",
                                  None if jobs == default else jobs)
                run.update({"folder": kind, "jobs": jobs, "files": files,
                            "megabytes": round(size / 1e6, 1),
                            "files_per_s": round(files / run["upload_seconds"], 2)})
                runs.append(run)
                print(f"\n  {kind:5} --jobs {jobs:>2}: {run['files_per_s']:7.2f} files/s, "
                      f"{run['payload_mbit_per_s']:5.2f} Mbit/s payload = "
                      f"{100 * run['link_utilisation']:.0f}% of the link "
                      f"({run['upload_seconds']} s; load {run['load_average_start'][0]})")
                # The next run starts from an empty folder store.
                subprocess.run(["rm", "-rf", str(folder), str(tmp_path / "objects")], check=False)
    finally:
        api.stop(grace=10)

    def pick(kind: str, jobs: int) -> dict:
        return next(r for r in runs if r["folder"] == kind and r["jobs"] == jobs)

    if ONLY == "big":
        big = {str(r["jobs"]): r["link_utilisation"] for r in runs}
        BIG_RESULTS_FILE.write_text(json.dumps({
            "command": f"BENCH_LINK_ONLY=big BENCH_LINK_BIG_JOBS={','.join(map(str, BIG_EXTRA_JOBS))} "
                       "flock /tmp/relaypacs-bench.lock .venv/bin/python -m pytest -m bench "
                       "tests/bench/test_bench_clinic_link.py -s",
            "default_jobs": default, "link_utilisation_by_jobs": big, "runs": runs}, indent=2) + "\n")
        assert big[str(default)] >= TARGET_UTILISATION, big
        return
    ratio = pick("small", default)["files_per_s"] / pick("small", 1)["files_per_s"]
    utilisation = pick("big", default)["link_utilisation"]
    result = {
        "command": "flock /tmp/relaypacs-bench.lock .venv/bin/python -m pytest -m bench "
                   "tests/bench/test_bench_clinic_link.py -s",
        "link": {"upstream_mbit": UPSTREAM_MBIT, "rtt_ms": RTT_MS,
                 "how": "network namespace + veth, tc tbf on the clinic end's egress; asyncio "
                        "delay proxy (rtt/2 each way) in front of the API"},
        "api": "relaypacs api (gunicorn), PostgreSQL, Redis, folder store; no worker",
        "client": "relaypacs upload --wait 0 in the namespace (keep-alive tus "
                  "creation-with-upload, sha1 per chunk)",
        "default_jobs": default,
        "small_files": {"files": SMALL_FILES, "approx_kb": 39,
                        "files_per_s": {str(r["jobs"]): r["files_per_s"] for r in runs
                                        if r["folder"] == "small"},
                        "ratio_default_vs_jobs_1": round(ratio, 2), "target_ratio": TARGET_RATIO,
                        "verdict": "PASS" if ratio >= TARGET_RATIO else "FAIL"},
        "big_files": {"files": BIG_FILES, "megabytes_each": BIG_MB,
                      "link_utilisation_default": utilisation,
                      "target_utilisation": TARGET_UTILISATION,
                      "verdict": "PASS" if utilisation >= TARGET_UTILISATION else "FAIL"},
        "runs": runs,
    }
    for jobs in BIG_EXTRA_JOBS:
        result["big_files"][f"link_utilisation_jobs_{jobs}"] = pick("big", jobs)["link_utilisation"]
    print(f"\n  small: default {ratio:.2f}x --jobs 1 (target {TARGET_RATIO}x); big: "
          f"{100 * utilisation:.0f}% of the link (target {100 * TARGET_UTILISATION:.0f}%)")
    bench_results["clinic_link"] = result
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(result, indent=2) + "\n")
    assert ratio >= TARGET_RATIO, result["small_files"]
    assert utilisation >= TARGET_UTILISATION, result["big_files"]
