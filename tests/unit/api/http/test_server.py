"""The API's gunicorn worker class (api/http/server.py) serves requests as gthread does:
kept-alive connections carry several requests, bodies are read, several connections are
served at once, a request that fails answers 500 and the connection goes on being served,
and a stop is clean. A real gunicorn on a loopback port with a tiny WSGI app."""

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
def app(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("boom")
    body = environ["wsgi.input"].read()
    out = (environ["REQUEST_METHOD"] + " " + environ["PATH_INFO"] + " " + str(len(body))).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
    return [out]
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path):
    (tmp_path / "tinyapp.py").write_text(APP)
    port = _free_port()
    root = Path(__file__).resolve().parents[4]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{root}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--worker-class", "api.http.server.RequestThreadWorker", "--threads", "2",
         "--keep-alive", "5", "--graceful-timeout", "5", "tinyapp:app"],
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
    yield port, process
    if process.poll() is None:
        process.kill()
        process.wait()


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
