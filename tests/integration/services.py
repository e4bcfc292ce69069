"""Real servers for integration tests, all on loopback: PostgreSQL, Redis, Orthanc (the test
PACS, with DICOMweb), moto_server (S3) and the gateway's own processes (API, Celery workers).

Plain classes and functions with no pytest in them, so a benchmark or a shell session can start
the same servers the fixtures in ``conftest.py`` start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import requests

LOOPBACK = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent

POSTGRES_PORT = 5432
REDIS_PORT = 6379
# The integration session claims the first free Redis database from this range, so two test
# sessions on one machine never share a broker database.
REDIS_DBS = range(7, 16)
REDIS_CLAIM_KEY = "relaypacs:it:claimed-by"

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_PACKAGES = ("orthanc", "orthanc-dicomweb", "dcmtk")


# --------------------------------------------------------------------------- generic helpers


def free_port() -> int:
    """A TCP port free on loopback right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    check: Callable[[], bool],
    what: str,
    timeout: float = 30.0,
    interval: float = 0.1,
    alive: Callable[[], str | None] | None = None,
) -> float:
    """Poll ``check`` until it is true; return the seconds waited.

    ``alive`` returns an error text when the thing waited for has already died, which ends
    the wait at once instead of at the timeout.
    """
    start = time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - start
        if alive is not None and (error := alive()):
            raise RuntimeError(f"{what}: {error}")
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(interval)


def poll_for(predicate: Callable[[], object], what: str, timeout: float = 60.0,
             interval: float = 0.3) -> object:
    """Poll ``predicate`` until it returns something truthy, and return that. Unlike
    :func:`wait_until`, an exception in ``predicate`` fails at once (a test's own check),
    and a timeout is an ``AssertionError``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def tail(path: Path, lines: int = 60) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def process_group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in a process group, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            continue
        # After "(comm)": state, ppid, pgrp, ...
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


class ServiceProcess:
    """A server subprocess in its own process group, with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ):
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._terminated = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: a kill reaches Celery's pool children too.
                start_new_session=True,
            )
        self._terminated = False
        RUNNING.append(self)
        return self

    def exit_error(self) -> str | None:
        """Why the process is gone, or None while it runs (for ``wait_until(alive=...)``)."""
        if self.proc is None:
            return "never started"
        code = self.proc.poll()
        if code is None:
            return None
        return f"{self.name} exited with code {code}; log tail:\n{self.log_tail()}"

    def wait_ready(self, check: Callable[[], bool], timeout: float = 60.0) -> float:
        try:
            return wait_until(check, f"{self.name} ready", timeout, 0.2, self.exit_error)
        except Exception:
            self.stop(grace=2)
            raise

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def terminate(self) -> None:
        """SIGTERM once, without waiting: ``stop`` then waits. Several processes told first
        shut down side by side (``stop_together``)."""
        if self.proc is not None and self.proc.poll() is None and not self._terminated:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM (warm shutdown for Celery), then SIGKILL to the group after ``grace`` s."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(10)
        # Whatever the leader left behind (pool children) goes with the group.
        self._signal_group(signal.SIGKILL)
        if self in RUNNING:
            RUNNING.remove(self)
        return self.proc.returncode

    def kill(self) -> None:
        """``kill -9`` the whole process group, as when a host or container dies."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self.proc.wait(10)
        # Pool children die a moment after the leader; return once none is left.
        wait_until(lambda: not process_group_members(self.proc.pid), f"{self.name} killed", 10)
        if self in RUNNING:
            RUNNING.remove(self)

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def __repr__(self) -> str:
        return f"<{self.name} pid={self.pid} alive={self.alive}>"


# Everything started and not yet stopped, for log tails on failure and cleanup.
RUNNING: list[ServiceProcess] = []


def stop_together(processes: Iterable[ServiceProcess | None], grace: float = 10.0) -> None:
    """Stop several processes at once: each is told (SIGTERM) before any is waited for, so
    their warm shutdowns overlap instead of adding up; each still gets ``grace`` s."""
    alive = [p for p in processes if p is not None]
    for process in alive:
        with contextlib.suppress(Exception):
            process.terminate()
    for process in alive:
        with contextlib.suppress(Exception):
            process.stop(grace=grace)


# --------------------------------------------------------------------------- PostgreSQL


def ensure_postgres(timeout: float = 60.0) -> None:
    """PostgreSQL up on 127.0.0.1:5432; start the local cluster if it is down."""
    if port_open(POSTGRES_PORT):
        return
    versions = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")])
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
        check=True,
    )
    wait_until(lambda: port_open(POSTGRES_PORT), "PostgreSQL", timeout)


def _admin_connection():
    import psycopg2

    conn = psycopg2.connect(host=LOOPBACK, port=POSTGRES_PORT, user="postgres", dbname="postgres")
    conn.autocommit = True
    return conn


def create_database(prefix: str = "relaypacs_it_") -> str:
    name = f"{prefix}{secrets.token_hex(4)}"
    with contextlib.closing(_admin_connection()) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with contextlib.closing(_admin_connection()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_url(dbname: str) -> str:
    return f"postgresql+psycopg2://postgres@{LOOPBACK}:{POSTGRES_PORT}/{dbname}"


# --------------------------------------------------------------------------- Redis


@contextlib.contextmanager
def app_on_new_database(prefix: str, redis_url: str, var: Path, **env: str):  # noqa: ANN201
    """The Flask app in-process on a fresh, migrated PostgreSQL database, a folder store in
    ``var`` and the in-memory broker (``env``: more RELAYPACS_* settings); dropped after."""
    from api import create_app
    from config import load_settings
    from pipeline.db.migrate import upgrade_database

    ensure_postgres()
    name = create_database(prefix)
    url = database_url(name)
    upgrade_database(url)
    settings = load_settings({
        "RELAYPACS_DATABASE_URL": url, "RELAYPACS_REDIS_URL": redis_url,
        "RELAYPACS_BROKER_URL": "memory://", "RELAYPACS_VAR_DIR": str(var),
        "RELAYPACS_STORAGE_URL": f"file://{var / 'objects'}", **env,
    })
    app = create_app(settings)
    try:
        yield app
    finally:
        app.extensions["relaypacs"].session_factory.kw["bind"].dispose()
        app.extensions["relaypacs.autocommit"].dispose()
        drop_database(name)


def ensure_redis(timeout: float = 30.0) -> None:
    """Redis up on 127.0.0.1:6379; start a throwaway one (no persistence) if it is down."""
    if port_open(REDIS_PORT):
        return
    subprocess.run(
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            LOOPBACK,
            "--port",
            str(REDIS_PORT),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=True,
    )
    wait_until(lambda: port_open(REDIS_PORT), "Redis", timeout)


class RedisDatabase:
    """One Redis database number claimed for this test session and flushed at the start."""

    def __init__(self, dbs: Iterable[int] = REDIS_DBS):
        import redis

        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        for db in dbs:
            client = redis.Redis(host=LOOPBACK, port=REDIS_PORT, db=db)
            # Claims expire, so a crashed session frees its database within the hour.
            if client.set(REDIS_CLAIM_KEY, self.token, nx=True, ex=3600):
                self.db, self.client = db, client
                self.flush()
                return
            client.close()
        raise RuntimeError(f"no free Redis database in {list(dbs)}: other test sessions hold them")

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{REDIS_PORT}/{self.db}"

    def flush(self) -> None:
        # FLUSHDB also deletes the claim: both in one MULTI/EXEC, or another session scanning
        # for a free database could claim this one between the two.
        with self.client.pipeline(transaction=True) as pipe:
            pipe.flushdb().set(REDIS_CLAIM_KEY, self.token, ex=3600).execute()

    def release(self) -> None:
        with contextlib.suppress(Exception):
            if self.client.get(REDIS_CLAIM_KEY) == self.token.encode():
                self.client.flushdb()
        self.client.close()


# --------------------------------------------------------------------------- Orthanc

# Orthanc 1.10 has no bind-address option and listens on every interface. This shim, loaded
# with LD_PRELOAD into Orthanc only, turns a bind() to the wildcard address into a bind() to
# loopback, so the test PACS (which accepts any C-STORE) is never reachable from outside.
_LOOPBACK_BIND_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real_bind)(int, const struct sockaddr *, socklen_t);
    if (!real_bind) real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in in4;
        memcpy(&in4, addr, sizeof in4);
        if (in4.sin_addr.s_addr == htonl(INADDR_ANY)) {
            in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return real_bind(fd, (const struct sockaddr *)&in4, sizeof in4);
        }
    }
    if (addr && addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 in6;
        memcpy(&in6, addr, sizeof in6);
        if (memcmp(&in6.sin6_addr, &in6addr_any, sizeof in6addr_any) == 0) {
            in6.sin6_addr = in6addr_loopback;
            return real_bind(fd, (const struct sockaddr *)&in6, sizeof in6);
        }
    }
    return real_bind(fd, addr, len);
}
"""


def loopback_bind_shim() -> Path | None:
    """Build (once, cached by source hash) the LD_PRELOAD shim; None without a C compiler."""
    digest = hashlib.sha256(_LOOPBACK_BIND_C.encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "relaypacs-tests"
    lib = cache / f"loopback_bind-{digest}.so"
    if lib.exists():
        return lib
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        warnings.warn("no C compiler: Orthanc will listen on all interfaces", stacklevel=2)
        return None
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "loopback_bind.c"
        src.write_text(_LOOPBACK_BIND_C)
        out = Path(tmp) / lib.name
        result = subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-o", str(out), str(src), "-ldl"],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            warnings.warn(f"loopback shim did not compile: {result.stderr}", stacklevel=2)
            return None
        shutil.move(out, lib)
    return lib


def ensure_orthanc_installed() -> None:
    """Install Orthanc + DICOMweb with apt if missing (normally done by .ci/setup.sh)."""
    if ORTHANC_BIN.exists() and ORTHANC_DICOMWEB_PLUGIN.exists():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, stdin=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *ORTHANC_PACKAGES],
        check=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def multipart_related(parts: Iterable[bytes], content_type: str = "application/dicom"):
    """A STOW-RS body: returns (body bytes, Content-Type header value)."""
    boundary = uuid.uuid4().hex
    chunks = []
    for part in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode())
        chunks.append(part)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    header = f'multipart/related; type="{content_type}"; boundary={boundary}'
    return b"".join(chunks), header


class Orthanc:
    """A private Orthanc with DICOMweb: its own storage folder and ports, loopback only."""

    def __init__(self, workdir: Path, aet: str = "ORTHANC", extra_config: dict | None = None):
        self.workdir = Path(workdir)
        self.aet = aet
        self.extra_config = extra_config or {}
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.http_url = f"http://{LOOPBACK}:{self.http_port}"
        self.dicomweb_url = f"{self.http_url}/dicom-web"
        self.config_path = self.workdir / "orthanc.json"
        self.process: ServiceProcess | None = None
        self.session = requests.Session()
        self.startup_seconds: float | None = None

    def _write_config(self) -> None:
        (self.workdir / "storage").mkdir(parents=True, exist_ok=True)
        (self.workdir / "index").mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "relaypacs-it",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "AuthenticationEnabled": False,
            "RemoteAccessAllowed": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckCalledAet": False,
            **self.extra_config,
        }
        self.config_path.write_text(json.dumps(config, indent=2))

    def start(self, timeout: float = 30.0) -> Orthanc:
        """Start (or restart after ``stop()``) on the same ports and storage."""
        if self.process is not None and self.process.alive:
            return self
        ensure_orthanc_installed()
        self._write_config()
        users = self.extra_config.get("RegisteredUsers") if self.extra_config.get(
            "AuthenticationEnabled") else None
        self.session.auth = next(iter(users.items())) if users else None
        # DCMTK reads TCP_NODELAY: without it C-STORE stalls on Nagle (~10 instances/s).
        env = {**os.environ, "TCP_NODELAY": "1"}
        shim = loopback_bind_shim()
        if shim is not None:
            env["LD_PRELOAD"] = f"{shim} {env['LD_PRELOAD']}" if env.get("LD_PRELOAD") else str(shim)
        self.process = ServiceProcess(
            "orthanc",
            [str(ORTHANC_BIN), str(self.config_path)],
            env,
            self.workdir / "orthanc.log",
        ).start()
        self.startup_seconds = self.process.wait_ready(
            lambda: self.session.get(f"{self.http_url}/system", timeout=2).ok, timeout
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=10)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.alive

    def log_tail(self, lines: int = 60) -> str:
        return self.process.log_tail(lines) if self.process else ""

    # -- what arrived

    def count(self) -> int:
        response = self.session.get(f"{self.http_url}/statistics", timeout=30)
        response.raise_for_status()
        return int(response.json()["CountInstances"])

    def instance_uids(self) -> set[str]:
        """SOPInstanceUIDs of every stored instance."""
        response = self.session.get(f"{self.http_url}/instances", params={"expand": ""}, timeout=60)
        response.raise_for_status()
        return {item["MainDicomTags"]["SOPInstanceUID"] for item in response.json()}

    def instance_id(self, sop_uid: str) -> str | None:
        response = self.session.post(f"{self.http_url}/tools/lookup", data=sop_uid, timeout=30)
        response.raise_for_status()
        ids = [hit["ID"] for hit in response.json() if hit["Type"] == "Instance"]
        return ids[0] if ids else None

    def instance_bytes(self, sop_uid: str) -> bytes:
        """The stored Part-10 file; KeyError when no such instance arrived."""
        orthanc_id = self.instance_id(sop_uid)
        if orthanc_id is None:
            raise KeyError(f"instance {sop_uid} not in Orthanc")
        response = self.session.get(f"{self.http_url}/instances/{orthanc_id}/file", timeout=60)
        response.raise_for_status()
        return response.content

    def clear(self) -> None:
        """Delete every study (and so every instance)."""
        response = self.session.get(f"{self.http_url}/studies", timeout=30)
        response.raise_for_status()
        for study in response.json():
            self.session.delete(f"{self.http_url}/studies/{study}", timeout=60).raise_for_status()

    def stow(self, files: Iterable[bytes]) -> requests.Response:
        """STOW-RS the given Part-10 files in one request (a test client, not the gateway's)."""
        body, content_type = multipart_related(files)
        return self.session.post(
            f"{self.dicomweb_url}/studies",
            data=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            timeout=120,
        )


# --------------------------------------------------------------------------- S3 (moto_server)


class MotoS3:
    """``moto_server`` on a loopback port: a real HTTP S3 endpoint."""

    def __init__(self, workdir: Path, bucket: str | None = None):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.endpoint_url = f"http://{LOOPBACK}:{self.port}"
        self.bucket = bucket or f"relaypacs-it-{secrets.token_hex(4)}"
        self.process: ServiceProcess | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    @property
    def storage_url(self) -> str:
        return f"s3://{self.bucket}"

    def start(self, timeout: float = 60.0) -> MotoS3:
        # Our own AWS_* vars only: never let a developer's real credentials reach it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | self.env
        self.process = ServiceProcess(
            "moto_server",
            [str(VENV_BIN / "moto_server"), "-H", LOOPBACK, "-p", str(self.port)],
            env,
            self.workdir / "moto_server.log",
        ).start()
        self.process.wait_ready(lambda: requests.get(f"{self.endpoint_url}/moto-api/", timeout=2).ok, timeout)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=5)

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )


# --------------------------------------------------------------------------- the gateway


def relaypacs_argv(*args: str) -> list[str]:
    return [str(VENV_BIN / "relaypacs"), *args]


def run_cli(args: Iterable[str], env: Mapping[str, str], timeout: float = 120.0,
            input: str | None = None) -> str:  # noqa: A002
    """Run ``relaypacs ARGS`` (``input`` on its stdin); return stdout, or raise with both
    streams on failure."""
    argv = relaypacs_argv(*args)
    result = subprocess.run(
        argv,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result.stdout


def celery_replies(broker_url: str, command: str = "stats", timeout: float = 1.0) -> list[dict]:
    """Broadcast a Celery remote-control command; one reply dict per live worker.

    A bare Celery app is enough to talk to workers over the broker, so the test process never
    imports the gateway's worker code.
    """
    from celery import Celery

    app = Celery("relaypacs-tests", broker=broker_url, set_as_current=False)
    try:
        return app.control.broadcast(command, reply=True, timeout=timeout) or []
    finally:
        app.close()


class Worker(ServiceProcess):
    """One ``relaypacs worker`` process (a Celery worker with its pool)."""

    def __init__(
        self,
        queues: str,
        concurrency: int,
        env: Mapping[str, str],
        log_path: Path,
        extra_args: Iterable[str] = (),
        name: str = "worker",
    ):
        self.queues = queues
        self.concurrency = concurrency
        argv = relaypacs_argv("worker", "-Q", queues, "--concurrency", str(concurrency), *extra_args)
        super().__init__(name, argv, env, log_path)

    def is_ready(self) -> bool:
        """The log says ready, or a worker in our process group answers a stats broadcast."""
        if " ready." in tail(self.log_path, 400):
            return True
        for reply in celery_replies(self.env["RELAYPACS_BROKER_URL"]):
            for stats in reply.values():
                pid = stats.get("pid") if isinstance(stats, dict) else None
                with contextlib.suppress(ProcessLookupError, TypeError):
                    if pid == self.pid or os.getpgid(pid) == self.pid:
                        return True
        return False


class WorkerFleet:
    """The session's Celery workers: one default worker, plus extras fault tests start/kill."""

    DEFAULT_QUEUES = "intake,dicom,pacs,reports"

    def __init__(self, env: Mapping[str, str], log_dir: Path):
        self.env = dict(env)
        self.log_dir = Path(log_dir)
        self.workers: list[Worker] = []
        self._default: Worker | None = None
        self._serial = 0

    def start(
        self,
        queues: str = DEFAULT_QUEUES,
        concurrency: int = 2,
        extra_args: Iterable[str] = (),
        timeout: float = 60.0,
    ) -> Worker:
        self._serial += 1
        name = f"worker-{self._serial}"
        worker = Worker(queues, concurrency, self.env, self.log_dir / f"{name}.log", extra_args, name=name)
        worker.start()
        self.workers.append(worker)
        worker.wait_ready(worker.is_ready, timeout)
        return worker

    def default(self) -> Worker:
        """The default worker, restarted if an earlier test killed it."""
        if self._default is None or not self._default.alive:
            self._default = self.start()
        return self._default

    def kill(self, worker: Worker) -> None:
        """``kill -9`` one worker and its pool children, no warm shutdown."""
        worker.kill()

    def stop(self, worker: Worker, grace: float = 10.0) -> None:
        worker.stop(grace)

    def stop_all(self) -> None:
        stop_together(self.workers, grace=10)


class ApiServer(ServiceProcess):
    """``relaypacs api`` on a loopback port."""

    def __init__(self, env: Mapping[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        super().__init__(
            "api",
            relaypacs_argv("api", "--host", LOOPBACK, "--port", str(self.port)),
            env,
            log_path,
        )

    def start(self, timeout: float = 60.0, wait: bool = True) -> ApiServer:  # type: ignore[override]
        """Launch; ``wait=False`` returns at once (call ``until_ready``), so a stack can start
        its processes side by side instead of one after another."""
        super().start()
        if wait:
            self.until_ready(timeout)
        return self

    def until_ready(self, timeout: float = 60.0) -> ApiServer:
        self.wait_ready(lambda: requests.get(f"{self.url}/healthz", timeout=2).status_code == 200, timeout)
        return self


class Beat(ServiceProcess):
    """``relaypacs beat``: the periodic scheduler (exactly one per broker)."""

    def __init__(self, env: Mapping[str, str], log_path: Path):
        super().__init__("beat", relaypacs_argv("beat"), env, log_path, cwd=log_path.parent)

    def start(self, timeout: float = 60.0, wait: bool = True) -> Beat:  # type: ignore[override]
        super().start()
        if wait:
            self.until_ready(timeout)
        return self

    def until_ready(self, timeout: float = 60.0) -> Beat:
        self.wait_ready(lambda: "beat: Starting..." in tail(self.log_path, 200), timeout)
        return self


def start_private_redis(port: int, env: Mapping[str, str], log_path: Path) -> ServiceProcess:
    """A redis-server of a test's own on ``port``, ready. Like the machine's Redis: no
    persistence, so a restart loses every queued message."""
    redis = ServiceProcess(
        "redis-faults",
        ["redis-server", "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"],
        env, log_path,
    ).start()
    redis.wait_ready(lambda: port_open(port), 30)
    return redis
