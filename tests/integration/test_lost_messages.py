"""Work whose task message was lost is driven again within a minute, on default settings:
a Redis broker restarted empty (every queued task gone), and tasks that met a database
restart (their message would be acknowledged as failed).

Each test queues a batch's tasks while the intake/dicom worker is stopped, so the fault
always meets them queued or running, then counts what arrived in Orthanc.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.fault_stack import FaultStack, PrivatePostgres
from tests.integration.gateway_client import Gateway
from tests.integration.services import poll_for, run_cli
from tests.sample_data import synthetic_study

pytestmark = pytest.mark.integration

WITHIN = 60.0


def _storage(gateway_env) -> dict[str, str]:
    env = {k: v for k, v in gateway_env.items() if k.startswith("AWS_")}
    env["RELAYPACS_STORAGE_URL"] = gateway_env["RELAYPACS_STORAGE_URL"]
    return env


def _gateway(stack: FaultStack, make_user, facility: str, url: str) -> Gateway:
    run_cli(["destinations", "add", f"{facility.lower().replace(' ', '-')}-pacs", "--stow-url", url,
             "--facility", facility], stack.env)
    if make_user is None:
        out = run_cli(["users", "create", "--email", f"{facility.replace(' ', '')}@t.test",
                       "--facility", facility, "--role", "uploader"], stack.env)
        return Gateway(stack.api.url, out.strip().splitlines()[-1].strip())
    return Gateway(stack.api.url, make_user(facility, "uploader"))


def _queued_batch(stack: FaultStack, gateway: Gateway, files: list[bytes]) -> int:
    """Every file uploaded and the batch completed, with no worker consuming their tasks."""
    stack.intake.stop(grace=10)
    batch_id = gateway.open_batch()
    for i, data in enumerate(files):
        gateway.upload(batch_id, data, f"f{i:04d}.dcm")
    gateway.complete(batch_id)
    return batch_id


def _arrived_within(orthanc, count: int, since: float, timeout: float) -> float | None:
    deadline = since + timeout
    while time.monotonic() < deadline:
        if orthanc.count() >= count:
            return time.monotonic() - since
        time.sleep(0.3)
    return None


@pytest.fixture
def redis_stack(gateway_env, it_dir) -> Iterator[FaultStack]:
    stack = FaultStack(it_dir / "lost-redis", database_url=gateway_env["RELAYPACS_DATABASE_URL"],
                       storage_env=_storage(gateway_env)).start()
    try:
        yield stack
    finally:
        stack.stop()


def test_a_redis_broker_restarted_empty_has_its_lost_work_driven_again_at_once(
    redis_stack, make_user, orthanc_clean
):
    stack = redis_stack
    gateway = _gateway(stack, make_user, "Lost Redis", orthanc_clean.dicomweb_url)
    files = synthetic_study(10)
    batch_id = _queued_batch(stack, gateway, files)
    stack.redis.stop(grace=5)
    stack.start_redis()  # empty: every queued assemble/parse task is gone
    back = time.monotonic()
    stack.intake = stack.worker("intake,dicom")
    took = _arrived_within(orthanc_clean, len(files), back, WITHIN + 30)
    assert took is not None and took <= WITHIN, (took, gateway.report(batch_id)["totals"])
    report = gateway.wait_state(batch_id, "done", timeout=60)
    assert report["totals"]["deliveries_by_state"] == {"delivered": len(files)}


# Out of the CI run (2 cores, 30 minutes): the same fault on default settings is a scenario of
# tests/bench/test_bench_faults.py; run it with `pytest -m bench tests/integration/test_lost_messages.py`.
@pytest.mark.bench
def test_tasks_that_meet_a_database_restart_run_again(gateway_env, it_dir, orthanc_clean):
    postgres = PrivatePostgres().init()
    stack = FaultStack(it_dir / "lost-pg", database_url=postgres.create_database(),
                       storage_env=_storage(gateway_env))
    try:
        stack.start(migrate=True)
        gateway = _gateway(stack, None, "Lost Postgres", orthanc_clean.dicomweb_url)
        files = synthetic_study(10)
        batch_id = _queued_batch(stack, gateway, files)
        postgres.stop("fast")
        # The worker takes the queued tasks while the database is away: each one fails on
        # its first statement.
        stack.intake = stack.worker("intake,dicom")
        poll_for(lambda: "OperationalError" in stack.intake.log_tail(400), "a task to meet the outage",
                 60, interval=0.2)
        time.sleep(3)
        postgres.start()
        back = time.monotonic()
        took = _arrived_within(orthanc_clean, len(files), back, WITHIN + 30)
        assert took is not None and took <= WITHIN, (took, gateway.report(batch_id)["totals"])
        report = gateway.wait_state(batch_id, "done", timeout=60)
        assert report["totals"]["deliveries_by_state"] == {"delivered": len(files)}
    finally:
        stack.stop()
        postgres.destroy()
