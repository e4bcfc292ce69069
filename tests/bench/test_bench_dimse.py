"""DIMSE forwarding throughput: the gateway's C-STORE sender against dcmtk ``storescu``, on the
same 500 synthetic CT instances (10 studies x 50) into the same (emptied) Orthanc, in one run;
the gateway's STOW-RS forwarding of the same files is measured beside it.

Gateway (DIMSE, then STOW-RS): the 500 files go through the real tus API into one open batch of
a new facility whose only route is one destination (``relaypacs destinations add ... --dimse
ORTHANC@127.0.0.1:PORT`` or ``--stow-url``, plus ``relaypacs routes add``); once every file is
parsed and the queues are idle, the timer runs from ``POST /complete`` until Orthanc holds all
500 (as tests/bench/test_bench_forwarding.py does for STOW-RS).
Baseline: ``storescu -aec ORTHANC 127.0.0.1 PORT <500 files>`` (one association, TCP_NODELAY=1),
timed as a whole process; Orthanc stores before it answers, so its exit means stored.

Runs alternate (gateway DIMSE, gateway STOW-RS, storescu) ``BENCH_ROUNDS`` times (default 3); the
figures are medians. Results go to tests/bench/results/dimse.json.

Two stacks, two tests: the session's (objects in moto_server, like every integration test), and
a private one whose objects are in a local folder (its own redis-server, API and workers on the
same PostgreSQL). The second says how much of the gap to storescu, which reads local files, is
the object store rather than the sender: moto_server answers GETs from one Python process.

Knobs (environment): BENCH_ROUNDS, BENCH_PACS_CONCURRENCY (4), BENCH_PACS_POOL (prefork),
BENCH_STUDIES (10) x BENCH_STUDY_SIZE (50), BENCH_DIMSE_WITH_STOW (1), BENCH_DIMSE_RESULTS
(dimse.json); RELAYPACS_STOW_BATCH_SIZE
(instances per STOW-RS request, and per C-STORE bookkeeping batch: one association carries a
study's whole forwarding run) reaches the workers through ``gateway_env`` (default 40).
"""

from __future__ import annotations

import io
import json
import os
import random
import resource
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest

from pipeline.dicom.samples import synthetic_study
from tests.bench.conftest import RESULTS_DIR, _git_commit
from tests.bench.helpers import summary, upload_concurrently, wait_queues_idle
from tests.integration.gateway_client import Gateway
from tests.integration.services import (
    LOOPBACK,
    ApiServer,
    ServiceProcess,
    Worker,
    free_port,
    port_open,
    process_group_members,
    run_cli,
)

pytestmark = [pytest.mark.bench, pytest.mark.integration]

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
STUDIES = int(os.environ.get("BENCH_STUDIES", "10"))
STUDY_SIZE = int(os.environ.get("BENCH_STUDY_SIZE", "50"))
PACS_CONCURRENCY = int(os.environ.get("BENCH_PACS_CONCURRENCY", "4"))
PACS_POOL = os.environ.get("BENCH_PACS_POOL", "prefork")
WITH_STOW = os.environ.get("BENCH_DIMSE_WITH_STOW", "1") != "0"
TARGET_RATIO = 0.8
BYTE_CHECK_SAMPLE = 20
# Knob experiments write elsewhere (BENCH_DIMSE_RESULTS=dimse-batch50.json) so as not to replace it.
RESULTS_FILE = RESULTS_DIR / os.environ.get("BENCH_DIMSE_RESULTS", "dimse.json")
# Data Set Trailing Padding (FFFC,FFFC) OB, explicit VR: the synthetic CT's template ends with it.
TRAILING_PADDING_TAG = b"\xfc\xff\xfc\xffOB"


def _cpu_seconds(process_groups: list[int]) -> float:
    """User + system CPU seconds used so far by every live process of these process groups."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pgid in process_groups:
        for pid in process_group_members(pgid):
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rpartition(")")[2].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


class CpuMeter:
    """CPU milliseconds per instance spent by named groups of processes during one timed run:
    on a 2-core machine, their sum bounds what any schedule of the work can reach."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.start = {name: _cpu_seconds(pgids) for name, pgids in groups.items()}

    def per_instance_ms(self, instances: int) -> dict[str, float]:
        return {name: round(1000 * (_cpu_seconds(pgids) - self.start[name]) / instances, 2)
                for name, pgids in self.groups.items()}


def _ts(value: str | None) -> float | None:
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _wait_count(orthanc, expected: int, timeout: float, interval: float = 0.05) -> float:
    """perf_counter() at the first poll that sees ``expected`` instances in Orthanc."""
    deadline = time.perf_counter() + timeout
    count = -1
    while time.perf_counter() < deadline:
        count = orthanc.count()
        if count >= expected:
            return time.perf_counter()
        time.sleep(interval)
    raise AssertionError(f"Orthanc holds {count} of {expected} instances after {timeout:.0f} s")


def _dataset(data: bytes) -> bytes:
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    return data[132 + 12 + meta.FileMetaInformationGroupLength :]


def _same_dataset(received: bytes, original: bytes) -> bool:
    """The data set Orthanc stored is the original's, trailing padding aside (DCMTK, which
    Orthanc is built on, drops (FFFC,FFFC) when it writes a file)."""
    got, sent = _dataset(received), _dataset(original)
    if got == sent:
        return True
    return TRAILING_PADDING_TAG in sent and got == sent[: sent.rindex(TRAILING_PADDING_TAG)]


def _route_to_new_destination(env: dict[str, str], facility: str, kind: str, target: str) -> str:
    """A destination serving only ``facility``, and the rule that makes it the facility's only
    route (global destinations added by other tests of the session are left alone)."""
    name = f"bench-{kind}-{secrets.token_hex(3)}"
    run_cli(["destinations", "add", name, f"--{kind}", target, "--facility", facility], env)
    run_cli(["routes", "add", "--destination", name, "--facility", facility], env)
    return name


@dataclass(frozen=True)
class GatewayStack:
    """Where a gateway round runs: its API, the environment of its CLI, its broker."""

    label: str
    api_url: str
    env: dict[str, str]
    redis_url: str
    workers: str
    # Process groups whose CPU time is measured during the forwarding (name -> pgids).
    cpu_groups: dict[str, list[int]]


class FolderStorageStack:
    """A private gateway whose objects live in a local folder: its own redis-server (so no
    worker of the session, bound to moto_server, takes its tasks), API and workers."""

    def __init__(self, base_env: dict[str, str], workdir: Path) -> None:
        self.workdir = workdir
        self.redis_port = free_port()
        broker = f"redis://{LOOPBACK}:{self.redis_port}/0"
        self.env = {
            **base_env,
            "RELAYPACS_BROKER_URL": broker,
            "RELAYPACS_REDIS_URL": broker,
            "RELAYPACS_STORAGE_URL": f"file://{workdir / 'objects'}",
            "RELAYPACS_VAR_DIR": str(workdir / "var"),
        }
        self.processes: list[ServiceProcess] = []

    def start(self) -> GatewayStack:
        (self.workdir / "var").mkdir(parents=True, exist_ok=True)
        redis_server = ServiceProcess(
            "redis-bench", ["redis-server", "--port", str(self.redis_port), "--bind", LOOPBACK,
                            "--save", "", "--appendonly", "no"],
            self.env, self.workdir / "redis.log").start()
        self.processes.append(redis_server)
        redis_server.wait_ready(lambda: port_open(self.redis_port), 30)
        api = ApiServer(self.env, self.workdir / "api.log").start()
        self.processes.append(api)
        workers = []
        for serial, (queues, concurrency) in enumerate(
                (("intake,dicom,pacs", 2), ("pacs", PACS_CONCURRENCY)), start=1):
            worker = Worker(queues, concurrency, self.env, self.workdir / f"worker-{serial}.log",
                            name=f"bench-worker-{serial}")
            self.processes.append(worker.start())
            worker.wait_ready(worker.is_ready, 60)
            workers.append(worker.pid)
        return GatewayStack("folder", api.url, self.env, self.env["RELAYPACS_BROKER_URL"],
                            f"intake,dicom,pacs x2 prefork + pacs x{PACS_CONCURRENCY} prefork",
                            {"gateway_workers": workers})

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(grace=10)


def _gateway_round(stack: GatewayStack, kind: str, target: str, files: list[bytes],
                   uids: list[str], orthanc, make_user, rng: random.Random) -> dict:
    orthanc.clear()
    # A new facility per run: its ledger has never seen these instances (and the two tests of a
    # session, seeded alike, must not meet in one facility).
    facility = f"Bench {kind} {secrets.token_hex(4)}"
    token = make_user(facility, "uploader")
    destination = _route_to_new_destination(stack.env, facility, kind, target)
    gateway = Gateway(stack.api_url, token)
    batch_id = gateway.open_batch(label=f"bench {kind}")
    t_up = time.perf_counter()
    uploaded = upload_concurrently(stack.api_url, token, batch_id, files, clients=8)
    assert not uploaded.errors, uploaded.errors[:5]
    deadline = time.monotonic() + 300
    while gateway.report(batch_id)["totals"]["files_by_state"].get("parsed", 0) != len(files):
        assert time.monotonic() < deadline, "upload and parse did not finish"
        time.sleep(0.5)
    parsed_seconds = time.perf_counter() - t_up
    wait_queues_idle(stack.redis_url)
    assert orthanc.count() == 0, "something was forwarded before /complete"

    load = os.getloadavg()[0]
    cpu = CpuMeter({**stack.cpu_groups, "orthanc": [orthanc.process.pid]})
    t0 = time.perf_counter()
    wall_complete = time.time()
    gateway.complete(batch_id)
    t_stored = _wait_count(orthanc, len(files), timeout=300)
    cpu_ms = cpu.per_instance_ms(len(files))
    report = gateway.wait_state(batch_id, "done", timeout=120)
    t_done = time.perf_counter()
    stored_s = t_stored - t0
    assert report["totals"]["deliveries_by_state"] == {"delivered": len(files)}
    assert {d["destination"] for d in report["deliveries"]} == {destination}
    assert all(d["attempts"] == 1 for d in report["deliveries"])
    assert orthanc.instance_uids() == set(uids)
    for index in rng.sample(range(len(files)), BYTE_CHECK_SAMPLE):
        received = orthanc.instance_bytes(uids[index])
        if kind == "stow-url":
            assert received == files[index], f"instance {index} differs"
        else:
            assert _same_dataset(received, files[index]), f"instance {index}: data set differs"
    delivered = sorted(_ts(d["delivered_at"]) for d in report["deliveries"])
    return {
        "seconds_to_all_stored": round(stored_s, 3),
        "seconds_to_batch_done": round(t_done - t0, 3),
        "instances_per_s": round(len(files) / stored_s, 1),
        "complete_to_forwarding_started_s": round(_ts(report["forwarding_started_at"]) - wall_complete, 3),
        "complete_to_first_delivered_s": round(delivered[0] - wall_complete, 3),
        "complete_to_last_delivered_s": round(delivered[-1] - wall_complete, 3),
        "upload_and_parse_seconds": round(parsed_seconds, 2),
        "load_average_1min_before": round(load, 2),
        "cpu_ms_per_instance": cpu_ms,
    }


def _storescu_round(paths: list[Path], uids: list[str], orthanc) -> dict:
    orthanc.clear()
    argv = ["storescu", "-aet", "BENCH_STORESCU", "-aec", orthanc.aet, LOOPBACK,
            str(orthanc.dicom_port), *map(str, paths)]
    load = os.getloadavg()[0]
    cpu = CpuMeter({"orthanc": [orthanc.process.pid]})
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    result = subprocess.run(argv, env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True,
                            text=True, timeout=600)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_ms = cpu.per_instance_ms(len(paths))
    cpu_ms["storescu"] = round(1000 * (after.ru_utime + after.ru_stime - children.ru_utime
                                       - children.ru_stime) / len(paths), 2)
    assert result.returncode == 0, result.stderr[-2000:]
    assert orthanc.count() == len(paths)
    assert orthanc.instance_uids() == set(uids)
    return {"seconds": round(seconds, 3), "instances_per_s": round(len(paths) / seconds, 1),
            "load_average_1min_before": round(load, 2), "cpu_ms_per_instance": cpu_ms}


def _bench_files(tmp_path: Path) -> tuple[list[bytes], list[str], list[Path]]:
    files = [data for _ in range(STUDIES) for data in synthetic_study(STUDY_SIZE)]
    uids = [pydicom.dcmread(io.BytesIO(d), stop_before_pixels=True).SOPInstanceUID for d in files]
    assert len(set(uids)) == len(files)
    paths = []
    for index, data in enumerate(files):
        paths.append(tmp_path / f"i{index:04d}.dcm")
        paths[-1].write_bytes(data)
    return files, uids, paths


def _compare(stack: GatewayStack, orthanc, make_user, tmp_path: Path) -> dict:
    """The rounds on one stack; returns the figures for dimse.json."""
    files, uids, paths = _bench_files(tmp_path)
    total = len(files)
    megabytes = sum(len(f) for f in files) / 1e6
    batch_size = stack.env.get("RELAYPACS_STOW_BATCH_SIZE") or "40 (default)"
    dimse_target = f"{orthanc.aet}@{LOOPBACK}:{orthanc.dicom_port}"
    rng = random.Random(4321)
    runs: dict[str, list[dict]] = {"gateway_dimse": [], "gateway_stow": [], "storescu": []}
    print(f"\nDIMSE forwarding, objects in {stack.label}: {total} instances ({STUDIES} x "
          f"{STUDY_SIZE}, {megabytes:.1f} MB); workers: {stack.workers}; instances per "
          f"batch/request {batch_size}; {ROUNDS} rounds")
    for round_no in range(1, ROUNDS + 1):
        run = _gateway_round(stack, "dimse", dimse_target, files, uids, orthanc, make_user, rng)
        runs["gateway_dimse"].append({"round": round_no, **run})
        print(f"  round {round_no} gateway DIMSE : {run['instances_per_s']:6.1f} inst/s "
              f"(stored {run['seconds_to_all_stored']:.2f} s; first delivery "
              f"+{run['complete_to_first_delivered_s']:.2f} s; load {run['load_average_1min_before']}; "
              f"CPU ms/instance {run['cpu_ms_per_instance']})")
        if WITH_STOW:
            run = _gateway_round(stack, "stow-url", orthanc.dicomweb_url, files, uids, orthanc,
                                 make_user, rng)
            runs["gateway_stow"].append({"round": round_no, **run})
            print(f"  round {round_no} gateway STOW  : {run['instances_per_s']:6.1f} inst/s "
                  f"(stored {run['seconds_to_all_stored']:.2f} s; CPU ms/instance "
                  f"{run['cpu_ms_per_instance']})")
        run = _storescu_round(paths, uids, orthanc)
        runs["storescu"].append({"round": round_no, **run})
        print(f"  round {round_no} storescu      : {run['instances_per_s']:6.1f} inst/s "
              f"({run['seconds']:.2f} s, one association; CPU ms/instance {run['cpu_ms_per_instance']})")

    rates = {name: summary([r["instances_per_s"] for r in rows]) for name, rows in runs.items() if rows}
    ratio = rates["gateway_dimse"]["median"] / rates["storescu"]["median"]
    per_round = [g["instances_per_s"] / b["instances_per_s"]
                 for g, b in zip(runs["gateway_dimse"], runs["storescu"], strict=True)]
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(f"  gateway DIMSE median {rates['gateway_dimse']['median']} inst/s, storescu median "
          f"{rates['storescu']['median']} inst/s: {ratio:.2f}x -> {verdict} vs target {TARGET_RATIO}x")
    if "gateway_stow" in rates:
        print(f"  gateway STOW-RS median {rates['gateway_stow']['median']} inst/s")
    return {
        "object_store": stack.label,
        "instances": total,
        "layout": f"{STUDIES} studies x {STUDY_SIZE} instances (synthetic CT, pipeline.dicom.samples)",
        "megabytes": round(megabytes, 2),
        "workers": stack.workers,
        "instances_per_association_or_request": batch_size,
        "instances_per_s": rates,
        "ratio_gateway_dimse_to_storescu": round(ratio, 2),
        "ratio_per_round": [round(r, 2) for r in per_round],
        "target_ratio": TARGET_RATIO,
        "verdict": verdict,
        "runs": runs,
    }


def _write_results(key: str, figures: dict) -> None:
    """Merge one test's figures into dimse.json (the other test's stay)."""
    document = json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.exists() else {}
    if "instances_per_s" in document:  # the single-stack layout this file had first
        document = {}
    previous_stow = None
    latest = RESULTS_DIR / "latest.json"
    if latest.exists():
        previous_stow = json.loads(latest.read_text()).get("forwarding", {}).get(
            "gateway_instances_per_s")
    document.update({
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, "-m", "pytest", *sys.argv[1:]]),
        "git_commit": _git_commit(),
        "host": {"cpus": os.cpu_count(), "nice": os.nice(0)},
        "measure": "gateway: POST /complete -> Orthanc count == all (files parsed and queues idle "
                   "before); storescu: one process, one association, TCP_NODELAY=1; "
                   "load_average_1min_before: other processes on the machine",
        "stow_rs_from_latest_json": previous_stow,
        key: figures,
    })
    RESULTS_DIR.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(document, indent=2) + "\n")
    print(f"  results written to {RESULTS_FILE} ({key})")


@pytest.fixture
def folder_stack(gateway_env, tmp_path_factory) -> Iterator[GatewayStack]:
    stack = FolderStorageStack(gateway_env, tmp_path_factory.mktemp("bench-folder-stack"))
    try:
        yield stack.start()
    finally:
        stack.stop()


def test_dimse_forwarding_gateway_vs_storescu(
    api_server, worker, spawn_worker, make_user, orthanc_clean, redis_url, gateway_env, s3, tmp_path,
):
    pacs_args = ("--pool", PACS_POOL) if PACS_POOL != "prefork" else ()
    pacs = spawn_worker(queues="pacs", concurrency=PACS_CONCURRENCY, extra_args=pacs_args)
    stack = GatewayStack(
        "moto_server (S3)", api_server.url, gateway_env, redis_url,
        f"intake,dicom,pacs x{worker.concurrency} prefork + pacs x{PACS_CONCURRENCY} {PACS_POOL}",
        {"gateway_workers": [worker.pid, pacs.pid], "moto_server": [s3.process.pid]})
    _write_results("s3_storage", _compare(stack, orthanc_clean, make_user, tmp_path))


def test_dimse_forwarding_with_folder_storage(folder_stack, make_user, orthanc_clean, tmp_path):
    _write_results("folder_storage", _compare(folder_stack, orthanc_clean, make_user, tmp_path))
