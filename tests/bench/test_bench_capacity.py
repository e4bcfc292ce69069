"""API capacity, open loop (tests/bench/loadgen.py), against gunicorn as in production with
real PostgreSQL, Redis and a folder store, everything on this machine's cores (the load
generator included), over loopback (the link is not shaped).

Workloads, each against a freshly started server and a fresh database:
  get-empty   authenticated GET /api/v1/batches/ID of a batch with no files (the per-request
              overhead), BENCH_CAPACITY_GET_RATE requests/s offered (default 1000)
  get-200     the same of a batch of 200 uploaded files, beside it (BENCH_CAPACITY_GET200_RATE)
  tus-200     200 tus clients, each uploading one 40,000-byte file per second, 200 files/s
              offered for BENCH_CAPACITY_SECONDS (default 20), in two shapes, each on a batch
              of its own: creation + one PATCH a file (two requests, tuspy's default), and
              creation-with-upload (one POST a file, as the web page and the CLI send a
              small file). BENCH_CAPACITY_TUS_SHAPES=patch,with-upload (the default), one,
              or empty (the GET workloads only).

No Celery worker runs: the API's cost alone (the enqueued tasks wait in Redis).
Rate limits stay on (every request is counted in Redis), raised so one bench user is not
refused: RELAYPACS_RATE_LIMITS=upload=1000000,read=1000000.

BENCH_CAPACITY_TREES: comma list of source trees to measure back to back in the same run, e.g.
a checkout of the starting commit (``git archive 92957ce | tar -x -C /tmp/relaypacs-base``)
then this one; default: this tree only. BENCH_CAPACITY_SERVERS: comma list of gunicorn
models as KIND:WORKERSxTHREADS (default api.http.server.RequestThreadWorker:2x8, as `relaypacs api`;
KIND is a gunicorn worker class, e.g. gthread).

    flock /tmp/relaypacs-bench.lock env BENCH_CAPACITY_TREES=/tmp/relaypacs-base,. \\
        .venv/bin/python -m pytest -q -s -m bench tests/bench/test_bench_capacity.py
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.bench import loadgen
from tests.bench.helpers import _proc_stat
from tests.integration.services import (
    LOOPBACK,
    VENV_BIN,
    ServiceProcess,
    create_database,
    database_url,
    drop_database,
    ensure_postgres,
    free_port,
    run_cli,
)

pytestmark = [pytest.mark.bench, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
SECONDS = float(os.environ.get("BENCH_CAPACITY_SECONDS", "20"))
GET_RATE = float(os.environ.get("BENCH_CAPACITY_GET_RATE", "1000"))
GET200_RATE = float(os.environ.get("BENCH_CAPACITY_GET200_RATE", "200"))
TUS_CLIENTS = int(os.environ.get("BENCH_CAPACITY_TUS_CLIENTS", "200"))
FILE_BYTES = 40_000
TREES = [Path(t).resolve() if t != "." else REPO
         for t in os.environ.get("BENCH_CAPACITY_TREES", ".").split(",") if t]
SERVERS = os.environ.get("BENCH_CAPACITY_SERVERS", "api.http.server.RequestThreadWorker:2x8").split(",")
# Or an explicit list of TREE@SERVER runs (e.g. the starting commit once, this tree in several
# worker models): BENCH_CAPACITY_RUNS=/tmp/relaypacs-base@gthread:2x8,.@gthread:2x8,.@sync:4
RUNS = [(Path(t).resolve() if t != "." else REPO, server)
        for t, _, server in (run.partition("@") for run in
                             os.environ.get("BENCH_CAPACITY_RUNS", "").split(",") if run)] or [
    (tree, server) for server in SERVERS for tree in TREES]
# Empty: the GET workloads only.
TUS_SHAPES = [s for s in os.environ.get("BENCH_CAPACITY_TUS_SHAPES", "patch,with-upload").split(",") if s]
RESULTS = Path(__file__).parent / "results" / "capacity.json"


def _commit(tree: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True,
                         text=True)
    return out.stdout.strip() or tree.name


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


class Deployment:
    """One source tree served by gunicorn on a fresh database (and a flushed Redis database)."""

    def __init__(self, tree: Path, server: str, redis_url: str, redis_flush, workdir: Path):  # noqa: ANN001
        self.tree, self.server = tree, server
        self.dbname = create_database("relaypacs_capacity_")
        var = workdir / f"var-{self.dbname}"
        var.mkdir(parents=True)
        redis_flush()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(tree),
            "RELAYPACS_DATABASE_URL": database_url(self.dbname),
            "RELAYPACS_BROKER_URL": redis_url,
            "RELAYPACS_REDIS_URL": redis_url,
            "RELAYPACS_STORAGE_URL": f"file://{var / 'objects'}",
            "RELAYPACS_VAR_DIR": str(var),
            "RELAYPACS_RATE_LIMITS": "upload=1000000,read=1000000",
        }
        run_cli(["db", "upgrade"], self.env)
        kind, _, shape = server.partition(":")
        workers, _, threads = shape.partition("x")
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        argv = [str(VENV_BIN / "gunicorn"), "--bind", f"{LOOPBACK}:{self.port}",
                "--workers", workers, "--worker-class", kind, "--threads", threads or "1",
                "--timeout", "300", "--keep-alive", "5", "--backlog", "2048",
                "--forwarded-allow-ips", "", "api:create_app()"]
        self.process = ServiceProcess(f"api-{self.dbname}", argv, self.env,
                                      workdir / f"{self.dbname}.log", cwd=tree).start()
        self.process.wait_ready(
            lambda: requests.get(f"{self.url}/healthz", timeout=2).status_code == 200, 60)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far, by part: gunicorn (arbiter and workers), the PostgreSQL
        backends connected to its database, the Redis server (other engineers' commands
        included: it is shared) and this process, the load generator."""
        pids = {str(p) for p in _backend_pids(self.dbname)}
        redis = _redis_pids()
        pgid = self.process.pid
        out = {"gunicorn": 0.0, "postgres": 0.0, "redis": 0.0}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _proc_stat(entry)
                if stat is None:
                    continue
                if stat[1] == pgid:
                    out["gunicorn"] += stat[2]
                elif entry in pids:
                    out["postgres"] += stat[2]
                elif entry in redis:
                    out["redis"] += stat[2]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out["generator"] = usage.ru_utime + usage.ru_stime
        return out

    def worker_rss_mib(self) -> list[float]:
        """Resident memory of each gunicorn worker (the arbiter, which serves nothing, left out)."""
        sizes = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.process.pid:
                continue
            stat = _proc_stat(entry)
            if stat is None or stat[1] != self.process.pid:
                continue
            try:
                with open(f"/proc/{entry}/status") as fh:
                    rss = next(line for line in fh if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                continue
            sizes.append(round(int(rss.split()[1]) / 1024, 1))
        return sorted(sizes)

    def user(self, email: str) -> str:
        out = run_cli(["users", "create", "--email", email, "--facility", "Capacity",
                       "--role", "uploader"], self.env)
        return [line.strip() for line in out.splitlines() if line.strip()][-1]

    def stop(self) -> None:
        self.process.stop(grace=10)
        drop_database(self.dbname)


def _backend_pids(dbname: str) -> list[int]:
    import psycopg2

    with psycopg2.connect(host=LOOPBACK, user="postgres", dbname="postgres") as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (dbname,))
        pids = [row[0] for row in cur.fetchall()]
    conn.close()
    return pids


def _redis_pids() -> set[str]:
    out = subprocess.run(["pgrep", "-x", "redis-server"], capture_output=True, text=True)
    return set(out.stdout.split())


async def _costed(deployment: Deployment, run) -> dict:  # noqa: ANN001
    """``run``'s result with CPU milliseconds per answered request beside it, by part: the
    server (gunicorn plus the PostgreSQL backends of its database: a figure other engineers'
    load changes much less than requests/s), and apart gunicorn, PostgreSQL, Redis and the
    load generator, which share the machine's cores."""
    before = deployment.cpu_seconds()
    result = await run
    after = deployment.cpu_seconds()
    spent = {part: after[part] - before[part] for part in after}
    answered = max(result["requests_ok"], 1)
    server = spent["gunicorn"] + spent["postgres"]
    result["server_cpu_seconds"] = round(server, 2)
    result["server_cpu_ms_per_request"] = round(server * 1000 / answered, 2)
    result["cpu_ms_per_request"] = {part: round(seconds * 1000 / answered, 3)
                                    for part, seconds in spent.items()}
    return result


# Result keys: "tus" stays the two-request shape, as in the earlier rounds' results.
_TUS_KEYS = {"patch": "tus", "with-upload": "tus_with_upload"}


def _measure(deployment: Deployment) -> dict:
    token = deployment.user("capacity@bench.test")
    url = deployment.url

    async def scenario() -> dict:
        empty = await loadgen.open_batch(url, token, "empty")
        full = await loadgen.open_batch(url, token, "200 files")
        filled = await loadgen.run_tus(url, [token], [full], clients=20, period=0.1,
                                       duration=1.0, payload=os.urandom(FILE_BYTES))
        assert filled["files_accepted"] == 200, filled
        out = {"uptime_before": _uptime()}
        out["get_empty"] = await _costed(deployment, loadgen.run_get(
            url, [token], f"/api/v1/batches/{empty}", GET_RATE, SECONDS))
        out["get_200_files"] = await _costed(deployment, loadgen.run_get(
            url, [token], f"/api/v1/batches/{full}", GET200_RATE, SECONDS))
        for shape in TUS_SHAPES:
            tus_batch = await loadgen.open_batch(url, token, f"tus clients, {shape}")
            out[_TUS_KEYS[shape]] = await _costed(deployment, loadgen.run_tus(
                url, [token], [tus_batch], clients=TUS_CLIENTS, period=1.0, duration=SECONDS,
                payload=os.urandom(FILE_BYTES), with_upload=shape == "with-upload"))
        out["uptime_after"] = _uptime()
        out["worker_rss_mib"] = deployment.worker_rss_mib()
        return out

    return asyncio.run(scenario())


def test_api_capacity(redis_database, tmp_path):  # noqa: ANN001
    ensure_postgres()
    runs = []
    for tree, server in RUNS:
        deployment = Deployment(tree, server, redis_database.url, redis_database.flush, tmp_path)
        try:
            result = {"tree": str(tree), "commit": _commit(tree), "server": server,
                      **_measure(deployment)}
        finally:
            deployment.stop()
        runs.append(result)
        RESULTS.parent.mkdir(exist_ok=True)  # after every run: a later one may not finish
        RESULTS.write_text(json.dumps({"written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                       "runs": runs}, indent=2) + "\n")
        g, g200 = result["get_empty"], result["get_200_files"]
        print(f"\n[{result['commit']} {server}] {result['uptime_before']}\n"
              f"  GET empty batch: {g['requests_per_s']} req/s of {g['offered_per_s']:g} offered,"
              f" P50/P95/P99 {g['p50_ms']}/{g['p95_ms']}/{g['p99_ms']} ms, errors {g['errors']},"
              f" CPU ms/request {g['cpu_ms_per_request']}\n"
              f"  GET 200-file batch: {g200['requests_per_s']} req/s of "
              f"{g200['offered_per_s']:g} offered, P50/P95/P99 "
              f"{g200['p50_ms']}/{g200['p95_ms']}/{g200['p99_ms']} ms, errors {g200['errors']},"
              f" CPU ms/request {g200['cpu_ms_per_request']}")
        for shape in TUS_SHAPES:
            tus = result[_TUS_KEYS[shape]]
            print(f"  tus {TUS_CLIENTS} clients ({tus['shape']}): {tus['files_accepted']}/"
                  f"{tus['files_offered']} files, {tus['files_per_s']} files/s, requests P50/P95/P99 "
                  f"{tus['p50_ms']}/{tus['p95_ms']}/{tus['p99_ms']} ms, errors {tus['errors']},"
                  f" CPU ms/request {tus['cpu_ms_per_request']}")
        print(f"  worker RSS MiB {result['worker_rss_mib']}")
    for run in runs:
        for shape in TUS_SHAPES:
            tus = run[_TUS_KEYS[shape]]
            assert tus["errors"] == 0 or run["tree"] != str(REPO), tus["errors_by_kind"]
