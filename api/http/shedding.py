"""Load shedding: over capacity, answer 503 with Retry-After at once instead of letting
requests queue into seconds (a client retries a 503 later; one that waited 10 s for a 200
has often given up and sent the request again, doubling the load).

Two checks, before anything else of the request runs (no session, no token lookup, no log
line), so a refused request costs a fraction of a served one:
- time queued: a proxy in front stamps each request with ``X-Request-Start`` (nginx:
  ``proxy_set_header X-Request-Start "t=${msec}";``, in deploy/nginx.conf); a request that
  already waited longer than RELAYPACS_SHED_QUEUE_MS for a worker is refused.
- requests in flight in this process (RELAYPACS_MAX_IN_FLIGHT, off by default): more than
  that many at once means the CPU is the queue (threads only wait for the GIL and the
  database); the next is refused. Run more threads than this bound, so that the queue forms
  here, visibly, and not in gunicorn's accept queue where nobody can refuse it. Off by
  default because a tus PATCH over a slow clinic link is in flight for seconds while using
  no CPU: behind nginx, the queue-time check is the one that measures the real wait.
Liveness and readiness probes and /metrics are never refused: shedding is not being down.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable

from werkzeug.wsgi import ClosingIterator

from pipeline.intake.tus import TUS_VERSION

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
RETRY_AFTER_SECONDS = 1


def queued_ms(header: str | None, now: float) -> float | None:
    """Milliseconds since the proxy's ``X-Request-Start`` stamp (``t=`` seconds with a
    fraction as nginx's ``$msec``, or whole micro- or milliseconds), or None if absent or
    unreadable."""
    if not header:
        return None
    raw = header.strip().removeprefix("t=")
    try:
        stamp = float(raw)
    except ValueError:
        return None
    if stamp > 1e14:      # microseconds
        stamp /= 1e6
    elif stamp > 1e11:    # milliseconds
        stamp /= 1e3
    return max(0.0, (now - stamp) * 1000)


class LoadShedder:
    """WSGI middleware; ``max_in_flight`` 0 and ``max_queue_ms`` 0 turn a check off."""

    def __init__(self, app: Callable, max_in_flight: int, max_queue_ms: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.max_queue_ms = max_queue_ms
        self.clock = clock
        self.in_flight = 0
        self.shed = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") in EXEMPT_PATHS:
            return self.app(environ, start_response)
        if self.max_queue_ms:
            waited = queued_ms(environ.get("HTTP_X_REQUEST_START"), self.clock())
            if waited is not None and waited > self.max_queue_ms:
                return self._refuse(start_response, f"waited {waited:.0f} ms for a worker")
        if not self.max_in_flight:
            return self.app(environ, start_response)
        with self._lock:
            if self.in_flight >= self.max_in_flight:
                busy = True
            else:
                busy = False
                self.in_flight += 1
        if busy:
            return self._refuse(start_response, f"{self.max_in_flight} requests in progress")
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self._done()
            raise
        # The response may still be produced while it is sent: count it until closed.
        return ClosingIterator(body, [self._done])

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _refuse(self, start_response: Callable, why: str) -> list[bytes]:
        with self._lock:
            self.shed += 1
        body = json.dumps({"error": {
            "status": 503, "message": f"over capacity ({why}); retry shortly",
            "retry_after": RETRY_AFTER_SECONDS}}).encode()
        start_response("503 Service Unavailable", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            ("Retry-After", str(RETRY_AFTER_SECONDS)), ("Tus-Resumable", TUS_VERSION)])
        return [body]
