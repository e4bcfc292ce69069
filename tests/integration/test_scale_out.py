"""Scale-out: the API is stateless (two processes share one tus upload, chunk by chunk), and
analytics read from a real PostgreSQL streaming replica while it is current, from the
primary while it lags or is down, with writes always on the primary."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.analytics import stats
from pipeline.db.engine import make_engine, make_session_factory
from tests.analytics_seed import Seeder
from tests.integration.analytics_services import PostgresPair, wait_replayed
from tests.integration.gateway_client import Gateway
from tests.integration.services import ApiServer, run_cli
from tests.sample_data import synthetic_study

pytestmark = pytest.mark.integration

FACILITY = "Scale Clinic"


@pytest.fixture(scope="module")
def second_api(gateway_env, it_dir) -> Iterator[ApiServer]:
    server = ApiServer(gateway_env, it_dir / "logs" / "api-2.log").start()
    try:
        yield server
    finally:
        server.stop(grace=10)


def test_two_api_processes_share_one_upload(api_server, second_api, worker, add_stow_destination,
                                            orthanc_clean, make_user):
    add_stow_destination("orthanc-scale", facility=FACILITY)
    token = make_user(FACILITY, "uploader")
    first, second = Gateway(api_server.url, token), Gateway(second_api.url, token)
    files = synthetic_study(2)
    batch_id = first.open_batch(label="two processes")
    chunk = 8 * 1024
    for index, data in enumerate(files):
        location = first.create(batch_id, len(data), f"s{index}.dcm").headers["Location"]
        path = location.split("/api/v1/", 1)[1]
        for n, offset in enumerate(range(0, len(data), chunk)):
            server = (first, second)[n % 2]  # alternate chunks between the processes
            answer = server.patch(f"{server.url}/api/v1/{path}", offset, data[offset:offset + chunk])
            assert answer.status_code == 204, answer.text
            # Either process reports the offset the other one just recorded.
            other = (first, second)[(n + 1) % 2]
            assert int(other.head(f"{other.url}/api/v1/{path}").headers["Upload-Offset"]) == min(
                offset + chunk, len(data))
    second.complete(batch_id)
    report = first.wait_state(batch_id, "done")
    assert report["totals"]["deliveries_by_state"] == {"delivered": 2}
    for entry, data in zip(report["files"], files, strict=True):
        assert orthanc_clean.instance_bytes(entry["sop_instance_uid"]) == data


@pytest.fixture(scope="module")
def replicated() -> Iterator[PostgresPair]:
    # /tmp itself, not pytest's root-only folder: the postgres user must reach the data dirs.
    pair = PostgresPair(Path(tempfile.mkdtemp(prefix="relaypacs-pg-"))).start()
    try:
        yield pair
    finally:
        pair.stop()


def seed_uploads(primary_url: str, count: int) -> None:
    session = make_session_factory(make_engine(primary_url))()
    try:
        seed = Seeder(session)
        facility_id, user_id = seed_user(session)
        from datetime import UTC, datetime

        now = datetime.now(UTC)
        batch = seed.batch(facility_id, user_id, now)
        for _ in range(count):
            seed.upload(batch, now, latencies_ms=(500,))
        session.commit()
        stats.refresh(session)
        session.commit()
    finally:
        session.close()


def seed_user(session) -> tuple[int, int]:  # noqa: ANN001
    from pipeline.models import User

    user = session.scalar(sa.select(User).where(User.email.like("seed-%")))
    if user is None:
        from pipeline.accounts.users import create_user

        user, _ = create_user(session, "seed-uploader@replica.test", "Replica Clinic", "uploader")
    return user.facility_id, user.id


def test_analytics_read_from_replica_until_it_lags_or_goes_down(replicated, gateway_env, it_dir):
    env = {**gateway_env, "RELAYPACS_DATABASE_URL": replicated.primary_url,
           "RELAYPACS_DATABASE_REPLICA_URLS": replicated.replica_url,
           "RELAYPACS_REPLICA_MAX_LAG_SECONDS": "5"}
    run_cli(["db", "upgrade"], env)
    admin = run_cli(["users", "create", "--email", "admin@replica.test", "--facility", "Replica HQ",
                     "--role", "admin"], env).strip().splitlines()[-1]
    seed_uploads(replicated.primary_url, 3)
    wait_replayed(replicated.primary_url, replicated.replica_url)
    api = ApiServer(env, it_dir / "logs" / "api-replica.log").start()
    gateway = Gateway(api.url, admin)
    replica = sa.create_engine(replicated.replica_url, isolation_level="AUTOCOMMIT")

    def uploads_seen() -> int:
        body = gateway.http.get(f"{api.url}/api/v1/analytics/facilities", timeout=10).json()
        return next(f["uploads"] for f in body["facilities"] if f["name"] == "Replica Clinic")

    try:
        assert uploads_seen() == 3
        # Replay paused: the replica keeps the old answer while within the lag bound...
        with replica.connect() as conn:
            conn.execute(sa.text("SELECT pg_wal_replay_pause()"))
        seed_uploads(replicated.primary_url, 2)
        assert uploads_seen() == 3  # read from the replica, which has not replayed the new rows
        # ...and is skipped once it is further behind than the bound: the primary answers.
        deadline = time.monotonic() + 30
        while uploads_seen() != 5 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert uploads_seen() == 5
        with replica.connect() as conn:
            conn.execute(sa.text("SELECT pg_wal_replay_resume()"))
        wait_replayed(replicated.primary_url, replicated.replica_url)
        replica.dispose()

        # A replica that is down costs nothing: reads fall back, writes never went there.
        replicated.stop_replica()
        seed_uploads(replicated.primary_url, 1)
        time.sleep(2.5)  # the cached health check expires
        assert uploads_seen() == 6
        assert gateway.open_batch(label="written to the primary") > 0
    finally:
        api.stop(grace=10)
        replica.dispose()
