"""Servers and clients for the analytics, live-events and scale-out tests (issue 5):
``relaypacs events``, a PostgreSQL primary with a streaming replica in temp folders, a
small SSE reader, and headless Chromium through Debian's chromedriver."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import requests

from tests.integration.services import (
    LOOPBACK,
    ServiceProcess,
    free_port,
    port_open,
    relaypacs_argv,
    wait_until,
)


class EventsServer(ServiceProcess):
    """``relaypacs events`` on a loopback port."""

    def __init__(self, env: Mapping[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        super().__init__("events", relaypacs_argv("events", "--host", LOOPBACK, "--port", str(self.port)),
                         env, log_path)

    def start(self, timeout: float = 60.0) -> EventsServer:  # type: ignore[override]
        super().start()
        self.wait_ready(lambda: requests.get(f"{self.url}/healthz", timeout=2).json()["redis"], timeout)
        return self

    def stop(self, grace: float = 10.0) -> int | None:
        """On SIGTERM aiohttp waits up to its shutdown timeout (60 s) for open stream handlers,
        and a stream whose client has gone is noticed only at its next write: a teardown sat
        out the whole grace every time. No test is about that wait, so it is cut short."""
        return super().stop(grace=min(grace, 3.0))

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


class SseReader:
    """Reads one SSE stream on a thread; ``events`` fills as messages arrive.

    A plain socket, not requests: closing it must end a blocked read at once (a streamed
    requests response waits for its read timeout), and lines must be seen as they arrive."""

    def __init__(self, url: str, token: str | None, last_event_id: str | None = None,
                 cookie: str | None = None, path: str = "/api/v1/events"):
        host, _, port = url.removeprefix("http://").partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        extra = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
        extra += f"Authorization: Bearer {token}\r\n" if token else ""
        extra += f"Cookie: {cookie}\r\n" if cookie else ""
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                           f"Accept: text/event-stream\r\nConnection: close\r\n{extra}\r\n").encode())
        self.sock.settimeout(None)
        self.stream = self.sock.makefile("rb")
        self.status = int(self.stream.readline().split()[1])
        while self.stream.readline() not in (b"\r\n", b""):
            pass  # the rest of the response head
        self.events: list[dict] = []
        self.ended = threading.Event()  # the server closed the stream
        self._thread = threading.Thread(target=self._read, daemon=True)
        if self.status == 200:
            self._thread.start()

    def _read(self) -> None:
        # aiohttp sends each event as one chunk: chunk-size lines are not SSE fields, skipped.
        current: dict = {}
        with contextlib.suppress(OSError, ValueError):
            for line in self.stream:
                text = line.decode().rstrip("\r\n")
                if text == "0":  # the last chunk of a chunked body: the server ended the stream
                    break
                if text == "":
                    if "data" in current:
                        self.events.append({"id": current.get("id"), "event": current.get("event"),
                                            **json.loads(current["data"])})
                    current = {}
                elif not text.startswith(":") and ": " in text:
                    key, _, value = text.partition(": ")
                    current[key] = value
        self.ended.set()

    def wait_for(self, predicate, what: str, timeout: float = 60.0) -> list[dict]:  # noqa: ANN001
        wait_until(lambda: any(predicate(e) for e in self.events), what, timeout, 0.1)
        return [e for e in self.events if predicate(e)]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self._thread.is_alive():
            self._thread.join(5)


# --------------------------------------------------------------------------- PostgreSQL replica


def pg_bin() -> Path:
    versions = sorted(os.listdir("/usr/lib/postgresql"), key=lambda v: [int(p) for p in v.split(".")])
    return Path("/usr/lib/postgresql") / versions[-1] / "bin"


class PostgresPair:
    """A private primary and a streaming replica (initdb + pg_basebackup -R), loopback only,
    in temp folders, run as the ``postgres`` user (PostgreSQL refuses to run as root)."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.primary_port = free_port()
        self.replica_port = free_port()
        self.primary_dir = self.workdir / "primary"
        self.replica_dir = self.workdir / "replica"
        self.user = "postgres"

    def _run(self, *argv: str) -> None:
        pw = pwd.getpwnam(self.user)
        subprocess.run(list(argv), check=True, capture_output=True, user=pw.pw_uid, group=pw.pw_gid,
                       cwd=self.workdir, env={"PATH": os.environ["PATH"], "LC_ALL": "C.UTF-8"})

    def _ctl(self, data_dir: Path, action: str, port: int | None = None) -> None:
        log = data_dir.parent / f"{data_dir.name}.log"
        args = [str(pg_bin() / "pg_ctl"), "-D", str(data_dir), "-l", str(log), "-w", "-t", "60"]
        if port is not None:
            args += ["-o", f"-p {port} -c listen_addresses={LOOPBACK}"
                                 f" -c unix_socket_directories={self.workdir}"]
        self._run(*args, action)

    def start(self) -> PostgresPair:
        self.workdir.mkdir(parents=True, exist_ok=True)
        pw = pwd.getpwnam(self.user)
        os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
        self._run(str(pg_bin() / "initdb"), "-D", str(self.primary_dir), "-A", "trust", "-U", "postgres",
                  "--no-sync")
        with open(self.primary_dir / "postgresql.conf", "a") as conf:
            conf.write("wal_level = replica\nmax_wal_senders = 5\nhot_standby = on\nfsync = off\n"
                       "full_page_writes = off\n")
        with open(self.primary_dir / "pg_hba.conf", "a") as hba:
            hba.write(f"host replication postgres {LOOPBACK}/32 trust\n")
        self._ctl(self.primary_dir, "start", self.primary_port)
        self._run(str(pg_bin() / "pg_basebackup"), "-h", LOOPBACK, "-p", str(self.primary_port),
                  "-U", "postgres", "-D", str(self.replica_dir), "-R", "-X", "stream", "--no-sync")
        self.start_replica()
        return self

    def start_replica(self) -> None:
        self._ctl(self.replica_dir, "start", self.replica_port)
        wait_until(lambda: port_open(self.replica_port), "replica", 30)

    def stop_replica(self) -> None:
        self._ctl(self.replica_dir, "stop")

    def url(self, port: int, db: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@{LOOPBACK}:{port}/{db}"

    @property
    def primary_url(self) -> str:
        return self.url(self.primary_port)

    @property
    def replica_url(self) -> str:
        return self.url(self.replica_port)

    def stop(self) -> None:
        for data_dir in (self.replica_dir, self.primary_dir):
            if (data_dir / "postmaster.pid").exists():
                with contextlib.suppress(subprocess.CalledProcessError):
                    self._ctl(data_dir, "stop")
        shutil.rmtree(self.workdir, ignore_errors=True)


def wait_replayed(primary_url: str, replica_url: str, timeout: float = 30.0) -> None:
    """Until the replica has replayed everything the primary has written so far."""
    import sqlalchemy as sa

    primary = sa.create_engine(primary_url)
    replica = sa.create_engine(replica_url)
    try:
        with primary.connect() as conn:
            lsn = conn.execute(sa.text("SELECT pg_current_wal_insert_lsn()")).scalar()

        def caught_up() -> bool:
            with replica.connect() as conn:
                return bool(conn.execute(sa.text(
                    "SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)"), {"lsn": lsn}).scalar())

        wait_until(caught_up, "replica replay", timeout)
    finally:
        primary.dispose()
        replica.dispose()


# --------------------------------------------------------------------------- Chromium

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,900")


def ensure_chromium() -> None:
    """Debian's chromium and chromedriver (normally installed by .ci/setup.sh)."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, stdin=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"],
                   check=True, env=env, stdin=subprocess.DEVNULL)


def chromium_driver(profile_dir: Path):  # noqa: ANN201
    """Headless Chromium via selenium and Debian's chromedriver: no Selenium Manager, no
    download of any browser or driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    service = Service(executable_path=str(CHROMEDRIVER))
    started = time.monotonic()
    driver = webdriver.Chrome(service=service, options=options)
    driver.started_in = time.monotonic() - started
    return driver
