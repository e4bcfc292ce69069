"""Fixtures that start real servers on loopback for integration tests (no mocks).

Session-scoped, started lazily on first use:
  postgres_url, redis_url, orthanc, s3, gateway_env, worker_fleet, api_server, beat,
  make_user, add_stow_destination.
Function-scoped: orthanc_clean (Orthanc up and empty), worker (the default worker, restarted
if a previous test killed it), spawn_worker (extra workers, stopped after the test).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.integration.services import (
    RUNNING,
    ApiServer,
    Beat,
    MotoS3,
    Orthanc,
    RedisDatabase,
    Worker,
    WorkerFleet,
    create_database,
    database_url,
    drop_database,
    ensure_postgres,
    ensure_redis,
    run_cli,
    stop_together,
)

LOG_TAIL_LINES = 40


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the tail of every running server's log to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for process in list(RUNNING):
            if process.name == "moto_server":
                continue
            report.sections.append(
                (f"{process.name} log tail ({process.log_path})", process.log_tail(LOG_TAIL_LINES))
            )


@pytest.fixture(scope="session", autouse=True)
def _stop_leftover_processes() -> Iterator[None]:
    yield
    stop_together(list(RUNNING), grace=10)


@pytest.fixture(scope="session")
def it_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's scratch folder: server storage, logs, RELAYPACS_VAR_DIR."""
    return tmp_path_factory.mktemp("relaypacs-it")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for the session; dropped at the end."""
    ensure_postgres()
    name = create_database()
    try:
        yield database_url(name)
    finally:
        drop_database(name)


@pytest.fixture(scope="session")
def redis_database() -> Iterator[RedisDatabase]:
    ensure_redis()
    database = RedisDatabase()
    try:
        yield database
    finally:
        database.release()


@pytest.fixture(scope="session")
def redis_url(redis_database: RedisDatabase) -> str:
    """``redis://127.0.0.1:6379/N``: a database number claimed for this session, flushed."""
    return redis_database.url


@pytest.fixture(scope="session")
def orthanc(it_dir: Path) -> Iterator[Orthanc]:
    """The test PACS. ``.http_url``, ``.dicomweb_url``, ``.dicom_port``, ``.aet``,
    ``instance_uids()``, ``instance_bytes(uid)``, ``count()``, ``clear()``, ``stop()``, ``start()``.
    """
    server = Orthanc(it_dir / "orthanc").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def orthanc_clean(orthanc: Orthanc) -> Orthanc:
    """Orthanc running (restarted if an outage test left it down) and empty."""
    orthanc.start()
    orthanc.clear()
    return orthanc


@pytest.fixture(scope="session")
def s3(it_dir: Path) -> Iterator[MotoS3]:
    """moto_server; its AWS_* variables are set in os.environ for the session.

    ``.endpoint_url``, ``.bucket`` (not created: the gateway creates it), ``.storage_url``,
    ``.env``, ``.client()`` (boto3).
    """
    server = MotoS3(it_dir / "s3").start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in server.env.items():
                patch.setenv(key, value)
            yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gateway_env(postgres_url: str, redis_url: str, s3: MotoS3, it_dir: Path) -> dict[str, str]:
    """Environment for every ``relaypacs`` process, with the schema already migrated."""
    var_dir = it_dir / "var"
    var_dir.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "RELAYPACS_DATABASE_URL": postgres_url,
        "RELAYPACS_BROKER_URL": redis_url,
        "RELAYPACS_REDIS_URL": redis_url,
        "RELAYPACS_STORAGE_URL": s3.storage_url,
        **s3.env,
        "RELAYPACS_VAR_DIR": str(var_dir),
        "RELAYPACS_BATCH_QUIET_SECONDS": "5",
        # PostgreSQL: destination passwords need a configured key (no key file fallback).
        "RELAYPACS_SECRET_KEY": Fernet.generate_key().decode(),
    }
    run_cli(["db", "upgrade"], env)
    return env


@pytest.fixture(scope="session")
def worker_fleet(gateway_env: dict[str, str], it_dir: Path) -> Iterator[WorkerFleet]:
    """All Celery workers of the session: ``.start(queues, concurrency)``, ``.kill(w)``,
    ``.stop(w)``, ``.default()``. Logs under ``it_dir/logs``.
    """
    fleet = WorkerFleet(gateway_env, it_dir / "logs")
    try:
        yield fleet
    finally:
        fleet.stop_all()


@pytest.fixture
def worker(worker_fleet: WorkerFleet) -> Worker:
    """``relaypacs worker -Q intake,dicom,pacs --concurrency 2``, ready; started once per
    session, and again only if a test killed it."""
    return worker_fleet.default()


@pytest.fixture
def spawn_worker(worker_fleet: WorkerFleet) -> Iterator[Callable[..., Worker]]:
    """Start extra workers for one test: ``spawn_worker(queues="pacs", concurrency=1)``.
    Kill one with ``w.kill()`` (SIGKILL to its process group); all are stopped after the test.
    """
    started: list[Worker] = []

    def spawn(
        queues: str = WorkerFleet.DEFAULT_QUEUES, concurrency: int = 2, extra_args: tuple[str, ...] = ()
    ) -> Worker:
        started.append(worker_fleet.start(queues, concurrency, extra_args))
        return started[-1]

    yield spawn
    for extra in started:
        extra.stop(grace=10)


@pytest.fixture(scope="session")
def api_server(gateway_env: dict[str, str], it_dir: Path) -> Iterator[ApiServer]:
    """``relaypacs api`` on a free loopback port, ready (``/healthz`` 200); ``.url``."""
    server = ApiServer(gateway_env, it_dir / "logs" / "api.log").start()
    try:
        yield server
    finally:
        server.stop(grace=10)


@pytest.fixture(scope="session")
def beat(gateway_env: dict[str, str], it_dir: Path) -> Iterator[Beat]:
    """``relaypacs beat``, started once for the session (one scheduler per broker)."""
    scheduler = Beat(gateway_env, it_dir / "logs" / "beat.log").start()
    try:
        yield scheduler
    finally:
        scheduler.stop(grace=10)


@pytest.fixture(scope="session")
def make_user(gateway_env: dict[str, str]) -> Callable[..., str]:
    """``make_user(facility, role, email=None) -> token`` via ``relaypacs users create``."""

    def make(facility: str, role: str, email: str | None = None) -> str:
        email = email or f"user-{secrets.token_hex(4)}@{facility.lower().replace(' ', '-')}.test"
        out = run_cli(
            ["users", "create", "--email", email, "--facility", facility, "--role", role],
            gateway_env,
        )
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        if not lines:
            raise RuntimeError("relaypacs users create printed no token")
        return lines[-1]

    return make


@pytest.fixture(scope="session")
def add_stow_destination(gateway_env: dict[str, str], orthanc: Orthanc) -> Callable[..., str]:
    """``add_stow_destination(name, stow_url=None, *, facility) -> name``: a STOW-RS
    destination pointing at the test Orthanc (``relaypacs destinations add NAME --stow-url URL``),
    serving only ``facility``."""

    def add(name: str, stow_url: str | None = None, *, facility: str) -> str:
        # Tests share one database: a destination bound to the test's own facility keeps
        # other modules' destinations out of its deliveries (so the facility is required).
        run_cli(
            ["destinations", "add", name, "--stow-url", stow_url or orthanc.dicomweb_url,
             "--facility", facility],
            gateway_env,
        )
        return name

    return add
