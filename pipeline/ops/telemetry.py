"""Counters and latency histograms shared by every API and worker process.

Each process adds to one Redis hash, so ``/metrics`` on any API process shows the whole
fleet (a scaled worker pool included) without scraping each process. A process counts in
memory and a background thread adds its counts to the hash every FLUSH_SECONDS: a request
or task pays for a dict update, not a Redis round trip of a dozen commands (that was 2 ms of
every API request). ``/metrics`` flushes its own process first. With no Redis (embedded
mode) the numbers are this process's own.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from functools import lru_cache

FLUSH_SECONDS = 1.0
# Counts kept while Redis is unreachable, at most this many fields (then dropped: metrics must
# never grow a process without bound).
MAX_PENDING_FIELDS = 20_000
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
KEY = "relaypacs:metrics"
SEP = "\x1f"  # field names join labels with a separator no label contains


def _field(name: str, **labels: str) -> str:
    return SEP.join([name, *(f"{k}={v}" for k, v in sorted(labels.items()))])


@lru_cache(maxsize=4096)
def _request_fields(route: str, method: str, status: int) -> tuple:
    """The hash fields one request adds to, named once per route, method and status (the
    names were joined and sorted anew on every request: a tenth of a small read's cost)."""
    labels = {"route": route, "method": method}
    name = "relaypacs_http_request_duration_seconds"
    return (_field(f"{name}_count", **labels), _field(f"{name}_sum", **labels),
            tuple((bound, _field(f"{name}_bucket", le=str(bound), **labels)) for bound in BUCKETS),
            _field(f"{name}_bucket", le="+Inf", **labels),
            _field("relaypacs_http_requests_total", status=str(status), **labels),
            _field("relaypacs_http_received_bytes_total", route=route))


class Telemetry:
    def __init__(self, redis_url: str | None = None, flush_seconds: float = FLUSH_SECONDS) -> None:
        self.redis = None
        self.flush_seconds = flush_seconds
        # Embedded mode: the counts themselves; with Redis: what is not flushed yet.
        self._local: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._flusher_pid: int | None = None
        if redis_url:
            import redis

            self.redis = redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
            # A forked child (gunicorn and Celery workers) starts with nothing pending and
            # its own lock and flusher; the parent flushes what it counted. (One Telemetry
            # lives as long as its process, so these references keep nothing alive too long.)
            os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self._local = defaultdict(float)
        self._flusher_pid = None

    def _add(self, increments: dict[str, float]) -> None:
        with self._lock:
            for field, amount in increments.items():
                self._local[field] += amount
        if self.redis is not None and self._flusher_pid != os.getpid():
            self._start_flusher()

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher_pid == os.getpid():
                return
            self._flusher_pid = os.getpid()
        threading.Thread(target=self._flush_forever, name="telemetry-flush", daemon=True).start()
        atexit.register(self.flush)

    def _flush_forever(self) -> None:
        # Threads do not survive a fork: a child starts its own flusher on its first count.
        while True:
            time.sleep(self.flush_seconds)
            self.flush()

    def flush(self) -> None:
        """Add what this process counted to the shared hash (kept for later if Redis is down)."""
        if self.redis is None:
            return
        with self._lock:
            pending, self._local = self._local, defaultdict(float)
        if not pending:
            return
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for field, amount in pending.items():
                    pipe.hincrbyfloat(KEY, field, amount)
                pipe.execute()
        except Exception:  # noqa: BLE001 - metrics must never break the work they measure
            with self._lock:
                if len(self._local) + len(pending) <= MAX_PENDING_FIELDS:
                    for field, amount in pending.items():
                        self._local[field] += amount

    def _histogram(self, name: str, seconds: float, **labels: str) -> dict[str, float]:
        out = {_field(f"{name}_count", **labels): 1.0, _field(f"{name}_sum", **labels): seconds}
        for bound in BUCKETS:
            if seconds <= bound:
                out[_field(f"{name}_bucket", le=str(bound), **labels)] = 1.0
        out[_field(f"{name}_bucket", le="+Inf", **labels)] = 1.0
        return out

    def observe_request(self, route: str, method: str, status: int, seconds: float,
                        bytes_in: int) -> None:
        count, total, buckets, infinite, requests, received = _request_fields(route, method, status)
        increments = {count: 1.0, total: seconds, infinite: 1.0, requests: 1.0}
        for bound, field in buckets:
            if seconds <= bound:
                increments[field] = 1.0
        if bytes_in:
            increments[received] = float(bytes_in)
        self._add(increments)

    def observe_task(self, task: str, seconds: float, outcome: str) -> None:
        increments = self._histogram("relaypacs_task_duration_seconds", seconds, task=task)
        increments[_field("relaypacs_tasks_total", task=task, outcome=outcome)] = 1.0
        self._add(increments)

    def snapshot(self) -> dict[str, float]:
        if self.redis is not None:
            self.flush()
            try:
                raw = self.redis.hgetall(KEY)
                return {k.decode(): float(v) for k, v in raw.items()}
            except Exception:  # noqa: BLE001
                return {}
        with self._lock:
            return dict(self._local)


def render(snapshot: dict[str, float]) -> list[str]:
    """Prometheus text lines for a snapshot, grouped by metric name."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for field in sorted(snapshot):
        name, *labels = field.split(SEP)
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, _, v in (p.partition("=") for p in labels))
        by_name[name].append(f"{name}{{{label_text}}} {snapshot[field]:g}" if labels
                             else f"{name} {snapshot[field]:g}")
    lines: list[str] = []
    families: dict[str, str] = {}
    for name in by_name:
        family = name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
        kind = "histogram" if family != name else "counter"
        if family not in families:
            families[family] = kind
            lines.append(f"# TYPE {family} {kind}")
        lines.extend(by_name[name])
    return lines


def gauge(name: str, help_text: str | None,
          samples: Iterable[tuple[dict[str, object], object]]) -> list[str]:
    """Prometheus text lines for a gauge: ``samples`` are (labels, value); every label value
    is escaped here, so no caller can break the format with a destination's name."""
    lines = [f"# HELP {name} {help_text}"] if help_text else []
    lines.append(f"# TYPE {name} gauge")
    for labels, value in samples:
        text = ",".join(f'{key}="{_escape(str(label))}"' for key, label in labels.items())
        lines.append(f"{name}{{{text}}} {value}")
    return lines


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
