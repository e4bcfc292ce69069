"""The API's gunicorn worker class (api/http/server.py) serves requests as gthread does:
kept-alive connections carry several requests, bodies are read, several connections are
served at once, a request that fails answers 500 and the connection goes on being served,
and a stop is clean. A kept-alive connection's prompt next request stays on its thread, an
idle one does not hold a thread, and max-requests still restarts the worker. A real
gunicorn on a loopback port with a tiny WSGI app."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

APP = '''
import os
import threading
import time

from api.http.server import RequestThreadWorker


class Lingering(RequestThreadWorker):
    LINGER_SECONDS = float(os.environ.get("TEST_LINGER_SECONDS", "0.5"))


def app(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("boom")
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(0.5)
    if environ["PATH_INFO"] == "/who":
        out = f"{os.getpid()} {threading.current_thread().name}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
        return [out]
    body = environ["wsgi.input"].read()
    out = (environ["REQUEST_METHOD"] + " " + environ["PATH_INFO"] + " " + str(len(body))).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
    return [out]
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gunicorn(tmp_path: Path, *options: str, worker: str = "api.http.server.RequestThreadWorker"):  # noqa: ANN202
    (tmp_path / "tinyapp.py").write_text(APP)
    port = _free_port()
    root = Path(__file__).resolve().parents[4]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{root}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--worker-class", worker, "--threads", "2",
         "--keep-alive", "5", "--graceful-timeout", "5", *options, "tinyapp:app"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail(f"gunicorn did not start: {process.stderr.read().decode()[-2000:]}")
    return port, process


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture
def server(tmp_path: Path):
    port, process = _gunicorn(tmp_path)
    yield port, process
    _stop(process)


@pytest.fixture
def lingering_server(tmp_path: Path):
    """The worker class with a linger long enough for a test client on a busy machine."""
    port, process = _gunicorn(tmp_path, worker="tinyapp.Lingering")
    yield port, process
    _stop(process)


@pytest.fixture
def restarting_server(tmp_path: Path):
    port, process = _gunicorn(tmp_path, "--max-requests", "5")
    yield port, process
    _stop(process)


def test_kept_alive_connections_bodies_and_concurrency(server):
    port, _ = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for n in range(20):  # one connection, twenty requests: kept alive through the poller
        connection.request("POST", f"/n{n}", body=b"x" * (n * 1000))
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, f"POST /n{n} {n * 1000}".encode())
    first_socket = connection.sock
    connection.request("GET", "/again")
    assert connection.getresponse().read() == b"GET /again 0"
    assert connection.sock is first_socket  # never closed in between
    connection.close()

    answers: list[bytes] = []

    def client(k: int) -> None:  # more connections than request threads
        own = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for n in range(5):
            own.request("GET", f"/c{k}/{n}")
            answers.append(own.getresponse().read())
        own.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(answers) == sorted(f"GET /c{k}/{n} 0".encode() for k in range(6) for n in range(5))


def test_a_failing_request_answers_500_and_the_worker_goes_on(server):
    port, process = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/boom")
    assert connection.getresponse().status == 500
    connection.close()
    again = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    again.request("GET", "/fine")
    assert again.getresponse().read() == b"GET /fine 0"
    again.close()
    process.terminate()  # graceful stop: the worker and its request threads exit
    assert process.wait(timeout=15) == 0


def test_a_prompt_next_request_stays_on_its_request_thread(lingering_server):
    """Without the poller round trip between them: the thread that answered waits briefly
    on the connection and serves what follows (gthread handed every request back to the
    poller, and the next went to whichever thread took it from the queue)."""
    port, _ = lingering_server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    served_by = set()
    for _ in range(30):
        connection.request("GET", "/who")
        served_by.add(connection.getresponse().read())
    connection.close()
    assert len(served_by) == 1, served_by


def test_an_idle_kept_alive_connection_does_not_hold_a_thread(server):
    """Two request threads; one connection answered and then quiet (kept alive): two slow
    requests on two other connections are still served side by side, not one after the
    other behind a thread waiting on the quiet connection."""
    port, _ = server
    quiet = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    quiet.request("GET", "/who")
    assert quiet.getresponse().read()
    took: list[float] = []

    def slow() -> None:
        own = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        start = time.monotonic()
        own.request("GET", "/sleep")
        assert own.getresponse().status == 200
        took.append(time.monotonic() - start)
        own.close()

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(took) == 2 and max(took) < 0.9, took  # 0.5 s each, side by side
    quiet.request("GET", "/who")  # the quiet connection is still served
    assert quiet.getresponse().read()
    quiet.close()


def test_max_requests_still_restarts_the_worker_on_a_busy_connection(restarting_server):
    """A connection that keeps its thread still ends with the worker's last request: its
    answer says Connection: close, and a new worker serves the next connection."""
    port, _ = restarting_server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    pids = []
    for n in range(5):
        connection.request("GET", "/who")
        response = connection.getresponse()
        pids.append(response.read().split()[0])
        closing = response.getheader("Connection", "").lower() == "close"
        assert closing == (n == 4), (n, response.getheaders())
    connection.close()
    assert len(set(pids)) == 1
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            again = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            again.request("GET", "/who")
            pid = again.getresponse().read().split()[0]
            again.close()
        except OSError:
            time.sleep(0.1)
            continue
        if pid != pids[0]:
            break
        time.sleep(0.1)
    assert pid != pids[0]
