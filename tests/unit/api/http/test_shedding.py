"""Over capacity the API refuses at once (503, Retry-After, JSON) instead of queueing:
requests a proxy stamped too long ago, and requests beyond the in-flight bound of a process;
probes are never refused, and a refused request never reaches the app."""

from __future__ import annotations

import threading
import time

from werkzeug.test import Client
from werkzeug.wrappers import Response

from api.http.shedding import LoadShedder, queued_ms


def _app(calls: list, gate: threading.Event | None = None):  # noqa: ANN202
    def app(environ, start_response):  # noqa: ANN001, ANN202
        calls.append(environ["PATH_INFO"])
        if gate is not None and environ["PATH_INFO"].startswith("/api/v1/files"):
            gate.wait(5)  # a slow request holding its place
        return Response("ok")(environ, start_response)

    return app


def test_x_request_start_in_nginx_and_other_units():
    now = 1_700_000_000.0
    assert queued_ms("t=1699999999.500", now) == 500.0
    assert round(queued_ms("t=1699999998000000", now)) == 2000  # microseconds
    assert round(queued_ms("1699999999750", now)) == 250        # milliseconds
    assert queued_ms(None, now) is None and queued_ms("t=soon", now) is None


def test_a_request_that_waited_too_long_for_a_worker_is_refused_before_the_app():
    calls: list = []
    client = Client(LoadShedder(_app(calls), max_in_flight=0, max_queue_ms=1000))
    stale = client.get("/api/v1/batches/1", headers={"X-Request-Start": f"t={time.time() - 2:.3f}"})
    assert stale.status_code == 503 and stale.headers["Retry-After"] == "1"
    assert stale.json["error"]["status"] == 503 and "waited" in stale.json["error"]["message"]
    fresh = client.get("/api/v1/batches/1", headers={"X-Request-Start": f"t={time.time():.3f}"})
    probe = client.get("/healthz", headers={"X-Request-Start": f"t={time.time() - 9:.3f}"})
    assert fresh.status_code == 200 and probe.status_code == 200
    assert calls == ["/api/v1/batches/1", "/healthz"]


def test_beyond_the_in_flight_bound_the_next_request_is_refused_at_once():
    calls: list = []
    gate = threading.Event()
    shedder = LoadShedder(_app(calls, gate), max_in_flight=2, max_queue_ms=0)
    client = Client(shedder)
    # A WSGI server closes every response it sent: the bound counts a request until then.
    busy = [threading.Thread(target=lambda: client.get("/api/v1/files/x").close())
            for _ in range(2)]
    for thread in busy:
        thread.start()
    deadline = time.monotonic() + 5
    while shedder.in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    refused = client.get("/api/v1/batches/1")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert time.monotonic() - started < 0.5  # refused, not queued
    assert client.get("/metrics").status_code == 200  # probes and metrics still answer
    gate.set()
    for thread in busy:
        thread.join(5)
    assert shedder.in_flight == 0 and shedder.shed == 1
    assert client.get("/api/v1/batches/1").status_code == 200
    assert calls.count("/api/v1/batches/1") == 1
