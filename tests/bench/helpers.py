"""Shared pieces of the benchmarks: concurrent tus uploads, queue draining, statistics."""

from __future__ import annotations

import os
import queue
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis
import requests

from tests.integration.gateway_client import OCTET, TUS, b64
from tests.integration.services import RUNNING

# Queues the default worker consumes; the benchmark waits for them to drain before timing.
PIPELINE_QUEUES = ("intake", "dicom", "pacs")


@dataclass
class UploadStats:
    files: int = 0
    bytes: int = 0
    wall_seconds: float = 0.0
    patch_latencies: list[float] = field(default_factory=list)
    create_latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)


def upload_concurrently(
    url: str,
    token: str,
    batch_id: int,
    files: Sequence[bytes],
    *,
    clients: int = 8,
    chunk: int | None = None,
    name_prefix: str = "f",
) -> UploadStats:
    """Upload ``files`` into one batch with ``clients`` threads, each with its own Session.

    ``chunk`` None sends each file in a single PATCH; otherwise PATCHes of ``chunk`` bytes.
    Latencies are wall-clock seconds of each request, response read included.
    """
    work: queue.SimpleQueue[tuple[int, bytes]] = queue.SimpleQueue()
    for index, data in enumerate(files):
        work.put((index, data))
    stats = UploadStats(files=len(files), bytes=sum(len(f) for f in files))
    lock = threading.Lock()
    start_barrier = threading.Barrier(clients + 1)

    def client() -> None:
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {token}"
        creates: list[float] = []
        patches: list[float] = []
        locations: list[str] = []
        errors: list[str] = []
        start_barrier.wait()
        while True:
            try:
                index, data = work.get_nowait()
            except queue.Empty:
                break
            name = f"{name_prefix}{index:05d}.dcm"
            t0 = time.perf_counter()
            created = http.post(
                f"{url}/api/v1/files",
                headers={
                    **TUS,
                    "Upload-Length": str(len(data)),
                    "Upload-Metadata": f"filename {b64(name)},batch_id {b64(str(batch_id))}",
                },
                timeout=30,
            )
            creates.append(time.perf_counter() - t0)
            if created.status_code != 201:
                errors.append(f"{name}: create {created.status_code} {created.text[:200]}")
                continue
            location = created.headers["Location"]
            step = chunk or len(data)
            offset = 0
            while offset < len(data):
                piece = data[offset : offset + step]
                t0 = time.perf_counter()
                answer = http.patch(
                    location,
                    data=piece,
                    headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OCTET},
                    timeout=60,
                )
                patches.append(time.perf_counter() - t0)
                if answer.status_code != 204:
                    errors.append(f"{name}: PATCH at {offset} -> {answer.status_code} {answer.text[:200]}")
                    break
                offset = int(answer.headers.get("Upload-Offset", offset + len(piece)))
            else:
                locations.append(location)
        http.close()
        with lock:
            stats.create_latencies.extend(creates)
            stats.patch_latencies.extend(patches)
            stats.locations.extend(locations)
            stats.errors.extend(errors)

    threads = [threading.Thread(target=client, name=f"tus-client-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    start_barrier.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    stats.wall_seconds = time.perf_counter() - t0
    return stats


def wait_queues_idle(redis_url: str, timeout: float = 120.0, settle: float = 0.5) -> float:
    """Wait until the pipeline queues are empty and no task is unacknowledged (Celery's Redis
    transport keeps running acks_late tasks in the ``unacked`` hash). Returns seconds waited."""
    client = redis.Redis.from_url(redis_url)
    start = time.monotonic()
    try:
        while True:
            busy = sum(client.llen(q) for q in PIPELINE_QUEUES) + client.hlen("unacked")
            if busy == 0:
                time.sleep(settle)
                if sum(client.llen(q) for q in PIPELINE_QUEUES) + client.hlen("unacked") == 0:
                    return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"queues still busy after {timeout:.0f} s ({busy} messages)")
            time.sleep(0.2)
    finally:
        client.close()


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank-interpolated percentile (same as statistics.quantiles' 'inclusive')."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * pct / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Sequence[float]) -> dict:
    """median, min, max of a list of measurements (one per run)."""
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "runs": [round(v, 2) for v in values],
    }


# --------------------------------------------------------------------------- CPU accounting

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: str) -> tuple[str, int, float] | None:
    """(comm, pgid, utime+stime seconds) of one process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text.rpartition(")")[2].split()
    # After "(comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    return comm, int(fields[2]), (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def cpu_snapshot() -> dict[str, float]:
    """CPU seconds used so far by each server of this session (by process group: Celery pool
    children and gunicorn workers included), by PostgreSQL and Redis (every session of the
    machine: other test runs show up there too) and by this benchmark process."""
    groups = {p.pid: p.name for p in RUNNING if p.pid is not None}
    own = os.getpid()
    totals: dict[str, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat(entry)
        if stat is None:
            continue
        comm, pgid, seconds = stat
        if int(entry) == own:
            name = "bench client"
        elif pgid in groups:
            name = groups[pgid]
        elif comm.startswith("postgres"):
            name = "postgres (all)"
        elif comm.startswith("redis-server"):
            name = "redis (all)"
        else:
            continue
        totals[name] = totals.get(name, 0.0) + seconds
    return totals


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per component between two snapshots, largest first (a process that
    exited in between is not counted)."""
    delta = {name: after[name] - before.get(name, 0.0) for name in after}
    return {k: round(v, 2) for k, v in sorted(delta.items(), key=lambda kv: -kv[1]) if v >= 0.005}


def machine_busy_seconds() -> float:
    """All CPUs' non-idle seconds since boot (/proc/stat), to see what else ran meanwhile."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _CLOCK_TICKS
