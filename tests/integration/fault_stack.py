"""A private gateway for fault runs on default settings, and what the faults need around it.

``FaultStack`` starts its own redis-server (broker and event bus, restartable) or a fresh
RabbitMQ virtual host, an API, beat, an intake/dicom worker and a pacs worker, as README
says, with the gateway's defaults: only where the database, the broker and the objects are
is set. ``StowRecorder`` stands between the gateway and Orthanc and counts how many stored
STOW-RS requests carried each SOPInstanceUID (Orthanc answers a duplicate as a success, so
only the wire shows one). ``PrivatePostgres`` is a cluster of its own (initdb + pg_ctl on a
free port) that a fault run may restart without touching the machine's.

Plain classes with no pytest in them: the integration tests and the fault benchmark share them.
"""

from __future__ import annotations

import contextlib
import io
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pydicom
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tests.integration.services import (
    LOOPBACK,
    ApiServer,
    Beat,
    ServiceProcess,
    Worker,
    free_port,
    port_open,
    run_cli,
    start_private_redis,
    stop_together,
    wait_until,
)

RABBITMQ_URL = f"amqp://guest:guest@{LOOPBACK}:5672"
# The machine's worker count per process when none is given (Celery's default is the CPU count).
DEFAULT_CONCURRENCY = os.cpu_count() or 2


# --------------------------------------------------------------------------- the wire


def stow_parts(body: bytes, content_type: str) -> list[bytes]:
    """The Part-10 files of a multipart/related STOW-RS body."""
    boundary = None
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        return []
    parts = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, payload = chunk.partition(b"\r\n\r\n")
        parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts


def sop_uid(part: bytes) -> str | None:
    try:
        return str(pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True,
                                   specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
    except Exception:  # noqa: BLE001 - a part that is not DICOM carries no instance
        return None


class StowRecorder:
    """A reverse proxy to a DICOMweb server that counts, per SOPInstanceUID, the STOW-RS
    requests that reached the PACS and were answered as stored (200/202).

    ``delay`` holds every STOW request this many seconds after its body arrived and before
    it goes on, like a slow PACS: a kill then lands while a request is on the wire. A body
    cut off by a dying client never reaches the PACS and is not counted.
    """

    def __init__(self, upstream_http_url: str, delay: float = 0.0) -> None:
        self.upstream = upstream_http_url.rstrip("/")
        self.delay = delay
        self.port = free_port()
        self.http_url = f"http://{LOOPBACK}:{self.port}"
        self.dicomweb_url = f"{self.http_url}/dicom-web"
        self.stored: Counter[str] = Counter()
        self.stow_requests = 0
        self.in_flight = 0  # STOW requests received and not answered yet
        self.lock = threading.Lock()
        self.upstream_http = requests.Session()
        self._server = None
        self._thread: threading.Thread | None = None

    def _app(self, environ, start_response):  # noqa: ANN001, ANN202 - WSGI
        request = Request(environ)
        body = request.get_data()
        is_stow = request.method == "POST" and "/studies" in request.path
        uids: list[str] = []
        if is_stow:
            uids = [u for u in map(sop_uid, stow_parts(body, request.content_type or "")) if u]
            with self.lock:
                self.in_flight += 1
        try:
            return self._forward(request, body, is_stow, uids)(environ, start_response)
        finally:
            if is_stow:
                with self.lock:
                    self.in_flight -= 1

    def _forward(self, request: Request, body: bytes, is_stow: bool, uids: list[str]) -> Response:
        if is_stow and self.delay:
            time.sleep(self.delay)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "transfer-encoding", "connection")}
        try:
            answer = self.upstream_http.request(
                request.method, f"{self.upstream}{request.full_path.rstrip('?')}",
                data=body, headers=headers, timeout=120)
        except requests.RequestException:
            return Response("upstream down", status=502)
        if is_stow and answer.status_code in (200, 202):
            with self.lock:
                self.stow_requests += 1
                self.stored.update(uids)
        passed = {k: v for k, v in answer.headers.items()
                  if k.lower() in ("content-type", "retry-after", "www-authenticate")}
        return Response(answer.content, status=answer.status_code, headers=passed)

    def start(self) -> StowRecorder:
        self._server = make_server(LOOPBACK, self.port, self._app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="stow-recorder")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def duplicated(self) -> dict[str, int]:
        """SOPInstanceUIDs stored by more than one request, with their request count."""
        with self.lock:
            return {uid: n for uid, n in self.stored.items() if n > 1}

    def reset(self) -> None:
        with self.lock:
            self.stored.clear()
            self.stow_requests = 0


# --------------------------------------------------------------------------- PostgreSQL


class PrivatePostgres:
    """A PostgreSQL cluster of its own on a free loopback port (trust auth), owned by the
    ``postgres`` user when run as root (initdb refuses root)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="relaypacs-faults-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.user = "postgres" if os.geteuid() == 0 else None
        self.bin = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                       check=True).stdout.strip())

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        command = list(argv)
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check,
                              stdin=subprocess.DEVNULL)

    def init(self) -> PrivatePostgres:
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")
        return self.start()

    def start(self) -> PrivatePostgres:
        options = (f"-p {self.port} -c listen_addresses={LOOPBACK} -k {self.dir} -c fsync=off"
                   " -c max_connections=200")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "start")
        wait_until(lambda: port_open(self.port), "private PostgreSQL", 30)
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def create_database(self, name: str = "relaypacs") -> str:
        self._run(str(self.bin / "createdb"), "-h", LOOPBACK, "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql+psycopg2://postgres@{LOOPBACK}:{self.port}/{name}"

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- RabbitMQ


class RabbitVhost:
    """A fresh virtual host on the machine's RabbitMQ, so queues of one run are its own."""

    def __init__(self) -> None:
        self.name = f"relaypacs-faults-{uuid.uuid4().hex[:8]}"
        self.url = f"{RABBITMQ_URL}/{self.name}"

    def create(self) -> RabbitVhost:
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", self.name], check=True, capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", self.name, "guest", ".*", ".*", ".*"],
                       check=True, capture_output=True)
        return self

    def delete(self) -> None:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.name], check=False, capture_output=True)


def rabbitmq_available() -> bool:
    return port_open(5672) and shutil.which("rabbitmqctl") is not None


# --------------------------------------------------------------------------- the gateway


class FaultStack:
    """API, beat, an intake/dicom worker and a pacs worker on a private broker, with the
    gateway's default settings: ``env`` holds only where things are (and ``overrides``)."""

    def __init__(self, workdir: Path, *, database_url: str, storage_env: Mapping[str, str],
                 broker: str = "redis", overrides: Mapping[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.broker_kind = broker
        self.redis_port = free_port()
        self.redis_url = f"redis://{LOOPBACK}:{self.redis_port}/0"
        self.vhost = RabbitVhost() if broker == "amqp" else None
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RELAYPACS_")}
        self.env = {
            **inherited,
            **storage_env,
            "RELAYPACS_DATABASE_URL": database_url,
            "RELAYPACS_BROKER_URL": self.vhost.url if self.vhost else self.redis_url,
            "RELAYPACS_REDIS_URL": self.redis_url,
            "RELAYPACS_VAR_DIR": str(self.workdir / "var"),
            **(overrides or {}),
        }
        self.redis: ServiceProcess | None = None
        self.api: ApiServer | None = None
        self.beat: Beat | None = None
        self.intake: Worker | None = None
        self.pacs: Worker | None = None
        self.workers: list[Worker] = []
        self.serial = 0

    def start_redis(self) -> None:
        self.redis = start_private_redis(self.redis_port, self.env, self.workdir / "redis.log")

    def worker(self, queues: str, *, wait: bool = True, **env: str) -> Worker:
        self.serial += 1
        worker = Worker(queues, DEFAULT_CONCURRENCY, {**self.env, **env},
                        self.workdir / f"worker-{self.serial}.log", name=f"fault-{queues}-{self.serial}")
        worker.start()
        self.workers.append(worker)
        if wait:
            worker.wait_ready(worker.is_ready, 90)
        return worker

    def start(self, migrate: bool = False) -> FaultStack:
        (self.workdir / "var").mkdir(parents=True, exist_ok=True)
        self.start_redis()
        if self.vhost:
            self.vhost.create()
        if migrate:
            run_cli(["db", "upgrade"], self.env)
        # Launched side by side, then waited for: their start-ups (imports, broker connection,
        # mingle) overlap instead of adding up.
        self.api = ApiServer(self.env, self.workdir / "api.log").start(wait=False)
        self.beat = Beat(self.env, self.workdir / "beat.log").start(wait=False)
        self.intake = self.worker("intake,dicom", wait=False)
        self.pacs = self.worker("pacs", wait=False)
        self.api.until_ready()
        self.beat.until_ready()
        for worker in (self.intake, self.pacs):
            worker.wait_ready(worker.is_ready, 90)
        return self

    def restart_pacs(self, wait: bool = True) -> Worker:
        """``kill -9`` the pacs worker (its whole process group) and start a new one."""
        assert self.pacs is not None
        self.pacs.kill()
        self.pacs = self.worker("pacs", wait=wait)
        return self.pacs

    def stop(self) -> None:
        # The broker last: workers shutting down warm still talk to it.
        stop_together([*self.workers, self.beat, self.api], grace=10)
        stop_together([self.redis], grace=10)
        if self.vhost:
            self.vhost.delete()


# --------------------------------------------------------------------------- a link to cut


class TcpLink:
    """A TCP relay on a loopback port to a server, that can be cut (connections refused and
    open ones dropped) and restored on the same port: the server keeps its state, as a real
    S3 does while the network to it is down."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener = None
        self._conns: list = []
        self._lock = threading.Lock()

    def up(self) -> TcpLink:
        import socket

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="tcp-link").start()
        return self

    def _accept(self, listener) -> None:  # noqa: ANN001
        import socket

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection((LOOPBACK, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink) -> None:  # noqa: ANN001
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()

    def cut(self) -> None:
        import socket

        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
