"""Storage lifecycle on real services: moto_server as the S3 bucket (and a second moto_server
as the disaster-recovery target), PostgreSQL, and real Celery workers on the ``storage`` queue
driven over Redis; the lifecycle's clock is moved forward through the task's ``now``.

Each test uses its own facility, and every run is scoped to it, so other modules' objects
in the shared bucket are never touched.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests
from celery import Celery
from sqlalchemy import func, select, text, update

from pipeline.accounts.users import get_or_create_facility
from pipeline.lifecycle import bundles
from pipeline.models import (
    Delivery,
    DeliveryState,
    DrState,
    Instance,
    ObjectState,
    RestoreRequest,
    StorageRun,
    StoredObject,
    StoredObjectKind,
)
from pipeline.storage import ObjectArchived, S3Store
from tests.integration.gateway_client import Gateway
from tests.integration.services import MotoS3, WorkerFleet, run_cli, wait_until
from tests.sample_data import sample_dicom_files
from tests.storage_seed import boto_client, db_fixture, facility_user, seed_study  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

KIB = 1024
# Below this an instance goes cold in its study's bundle; low here so that the pydicom
# samples give both kinds (CT_small 39 KB alone, MR_small 10 KB in a bundle).
BUNDLE_BELOW = 20_000
T0 = datetime(2025, 3, 1, 9, tzinfo=UTC)


def at(days: float) -> str:
    return (T0 + timedelta(days=days)).isoformat()


@pytest.fixture(scope="module")
def dr_s3(it_dir) -> Iterator[MotoS3]:
    """A second moto_server: the disaster-recovery endpoint, its own bucket and credentials."""
    server = MotoS3(it_dir / "s3-dr", bucket=f"relaypacs-dr-{secrets.token_hex(4)}").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def storage_env(gateway_env, dr_s3) -> dict[str, str]:
    return {
        **gateway_env,
        "RELAYPACS_DR_STORAGE_URL": dr_s3.storage_url,
        "RELAYPACS_DR_ENDPOINT_URL": dr_s3.endpoint_url,
        "RELAYPACS_DR_ACCESS_KEY_ID": "dr-key",
        "RELAYPACS_DR_SECRET_ACCESS_KEY": "dr-secret",
        "RELAYPACS_DR_REGION": "eu-west-1",
        "RELAYPACS_STORAGE_BUNDLE_BELOW_BYTES": str(BUNDLE_BELOW),
        "RELAYPACS_STORAGE_TIER_CONCURRENCY": "4",
        # The literal policy, as a setting (the shipped default is 30/365): the
        # workers and the CLI here must honour what is configured.
        "RELAYPACS_STORAGE_TIERS": "STANDARD:0,GLACIER_IR:90,DEEP_ARCHIVE:365",
    }


@pytest.fixture(scope="module")
def storage_fleet(storage_env, it_dir) -> Iterator[WorkerFleet]:
    fleet = WorkerFleet(storage_env, it_dir / "logs" / "storage")
    try:
        yield fleet
    finally:
        fleet.stop_all()


@pytest.fixture
def storage_worker(storage_fleet):
    """One ``relaypacs worker -Q storage``, started for the test, stopped after it."""
    worker = storage_fleet.start("storage", 2)
    yield worker
    worker.stop(grace=10)


@pytest.fixture(scope="module")
def celery_client(redis_url) -> Iterator[Celery]:
    app = Celery("storage-tests", broker=redis_url, set_as_current=False)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def primary(s3, gateway_env) -> S3Store:
    store = S3Store(s3.bucket, client=boto_client(s3))
    store.ensure_bucket()
    return store


@pytest.fixture
def dr(dr_s3) -> S3Store:
    store = S3Store(dr_s3.bucket, client=boto_client(dr_s3))
    store.ensure_bucket()
    return store


def last_run_id(db, job: str) -> int:
    with db() as session:
        return session.scalar(select(func.max(StorageRun.id)).where(StorageRun.job == job)) or 0


def run_job(celery_client, db, job: str, task: str, timeout: float = 120.0, **kwargs) -> StorageRun:
    """Send ``task`` to the storage queue and wait for the run it records."""
    after = last_run_id(db, job)
    celery_client.send_task(task, kwargs=kwargs, queue="storage")
    return wait_run(db, job, after, timeout)


def wait_run(db, job: str, after: int, timeout: float = 120.0) -> StorageRun:
    found: list[StorageRun] = []

    def finished() -> bool:
        with db() as session:
            run = session.scalar(select(StorageRun).where(StorageRun.job == job, StorageRun.id > after,
                                                          StorageRun.state.in_(["done", "failed"]))
                                 .order_by(StorageRun.id))
        if run is not None:
            found.append(run)
        return run is not None

    wait_until(finished, f"storage {job} run", timeout, 0.2)
    assert found[-1].state == "done", found[-1].error
    return found[-1]


def new_facility(db, name: str) -> tuple[int, int]:
    with db() as session:
        ids = facility_user(session, f"{name} {secrets.token_hex(3)}")
        session.commit()
    return ids


def users_of(db, make_user, prefix: str, *roles: str) -> tuple[str, int, int, list[str]]:
    """A new facility with API users of ``roles``: (name, id, a seeding user id, tokens)."""
    facility = f"{prefix} {secrets.token_hex(3)}"
    tokens = [make_user(facility, role) for role in roles]
    with db() as session:
        facility_id = get_or_create_facility(session, facility).id
        _, user_id = facility_user(session, facility)
        session.commit()
    return facility, facility_id, user_id, tokens


def rows_of(db, facility_id: int) -> dict[str, StoredObject]:
    with db() as session:
        return {r.object_key: r for r in session.scalars(
            select(StoredObject).where(StoredObject.facility_id == facility_id))}


def versions(client, bucket: str, key: str) -> list[dict]:
    answer = client.list_object_versions(Bucket=bucket, Prefix=key)
    return [v for v in answer.get("Versions", []) + answer.get("DeleteMarkers", []) if v["Key"] == key]


# ----------------------------------------------------------------------------- tiering


def test_objects_move_at_the_right_ages_with_bundles_and_no_noncurrent_left(
        db, primary, s3, storage_worker, celery_client):
    facility_id, user_id = new_facility(db, "Tiering Clinic")
    with db() as session:
        old = seed_study(session, primary, facility_id=facility_id, user_id=user_id, created_at=T0,
                         sizes=[60 * KIB, 45 * KIB, 3 * KIB, 5 * KIB, 7 * KIB, 11 * KIB])
        young = seed_study(session, primary, facility_id=facility_id, user_id=user_id,
                           created_at=T0 + timedelta(days=200), sizes=[50 * KIB])
        session.commit()
    client = s3.client()
    scope = {"facility_ids": [facility_id]}

    run = run_job(celery_client, db, "lifecycle", "storage.run_lifecycle", now=at(89), **scope)
    assert run.counts["catalogued"] == 7 and run.counts.get("moved", 0) == 0
    assert client.get_bucket_versioning(Bucket=s3.bucket)["Status"] == "Enabled"

    run = run_job(celery_client, db, "lifecycle", "storage.run_lifecycle", now=at(90), **scope)
    assert run.counts["moved"] == 2 and run.counts["bundles"] == 1 and run.counts["bundled_instances"] == 4
    rows = rows_of(db, facility_id)
    large = [k for k in old.keys if rows[k].size >= BUNDLE_BELOW]
    small = [k for k in old.keys if rows[k].size < BUNDLE_BELOW]
    for key in large:
        assert rows[key].storage_class == "GLACIER_IR"
        assert client.head_object(Bucket=s3.bucket, Key=key)["StorageClass"] == "GLACIER_IR"
        # The STANDARD version the copy left behind was expired at once.
        assert [v["StorageClass"] for v in versions(client, s3.bucket, key)] == ["GLACIER_IR"]
    bundle = next(r for r in rows.values() if r.kind == StoredObjectKind.BUNDLE)
    assert bundle.object_key.startswith(f"studies/{facility_id}/{old.study_id}/")
    assert client.head_object(Bucket=s3.bucket, Key=bundle.object_key)["StorageClass"] == "GLACIER_IR"
    for key in small:
        assert rows[key].state == ObjectState.RELEASED
        assert versions(client, s3.bucket, key) == []  # gone for good, not hidden
        got = bundles.read_member(primary, bundle.object_key, rows[key].bundle_offset, rows[key].size,
                                  rows[key].sha256)
        assert got == old.data[key]  # byte-identical from the bundle
    index = bundles.read_index(primary, bundle.object_key, bundle.size)
    assert sorted(m["sha256"] for m in index["members"]) == sorted(rows[k].sha256 for k in small)
    assert rows[young.keys[0]].storage_class == "STANDARD"

    run = run_job(celery_client, db, "lifecycle", "storage.run_lifecycle", now=at(365), **scope)
    assert run.counts["moved"] == 4  # two large, the bundle, the young one (now 165 d old)
    rows = rows_of(db, facility_id)
    assert {rows[k].storage_class for k in large} == {"DEEP_ARCHIVE"}
    assert rows[bundle.object_key].storage_class == "DEEP_ARCHIVE"
    assert rows[young.keys[0]].storage_class == "GLACIER_IR"
    for key in [*large, bundle.object_key, young.keys[0]]:
        assert len(versions(client, s3.bucket, key)) == 1
    with pytest.raises(ObjectArchived):
        primary.open(large[0])

    again = run_job(celery_client, db, "lifecycle", "storage.run_lifecycle", now=at(365), **scope)
    assert again.counts.get("moved", 0) == 0 and again.counts.get("bundles", 0) == 0


def test_multipart_copy_above_the_copy_limit(s3):
    """Objects above CopyObject's 5 GB limit are copied in ranges; the limit is lowered here."""
    store = S3Store(f"relaypacs-mpcopy-{secrets.token_hex(3)}", client=s3.client())
    store.ensure_bucket()
    store.enable_versioning()
    store.copy_threshold = store.copy_part_size = 5 * 1024 * 1024
    data = secrets.token_bytes(12 * 1024 * 1024 + 17)
    store.put_stream("big/original.dcm", io.BytesIO(data))
    result = store.copy_to_class("big/original.dcm", "DEEP_ARCHIVE", len(data))
    assert result.previous_version_id and result.version_id != result.previous_version_id
    store.delete_version("big/original.dcm", result.previous_version_id)
    head = store.head("big/original.dcm")
    assert head.storage_class == "DEEP_ARCHIVE" and head.size == len(data)
    assert store.restore("big/original.dcm", 1, "Standard") == "started"
    assert store.open("big/original.dcm").read() == data


def test_killed_run_resumes_without_double_moves(db, primary, s3, storage_fleet, celery_client):
    facility_id, user_id = new_facility(db, "Resume Clinic")
    # Two and a half chunks (TieringOptions.chunk is 200): the kill lands with the first
    # recorded, the second announced and in flight, and a third never announced, so the next
    # run both checks announced copies and makes fresh ones.
    count = 500
    with db() as session:
        for _ in range(count // 250):
            seed_study(session, primary, facility_id=facility_id, user_id=user_id, created_at=T0,
                       sizes=[BUNDLE_BELOW + 1000] * 250, keep_bytes=False, writers=16)
        session.commit()
    scope = {"facility_ids": [facility_id]}
    worker = storage_fleet.start("storage", 1)
    after = last_run_id(db, "lifecycle")
    celery_client.send_task("storage.run_lifecycle", kwargs={"now": at(120), **scope}, queue="storage")

    def moved_in_db() -> int:
        with db() as session:
            return session.scalar(select(func.count()).where(
                StoredObject.facility_id == facility_id, StoredObject.storage_class == "GLACIER_IR")) or 0

    def announced() -> int:
        with db() as session:
            return session.scalar(select(func.count()).where(
                StoredObject.facility_id == facility_id, StoredObject.moving_to.is_not(None))) or 0

    # Kill -9 once a chunk is recorded and the next one announced: copies are in flight.
    wait_until(lambda: moved_in_db() > 0 and announced() > 0, "chunk recorded, next announced", 120, 0.02)
    # Some of the announced copies land in S3, unrecorded. (Few: checking each one lists its
    # versions, which moto_server answers in about a second.)
    time.sleep(0.3)
    worker.kill()
    recorded = moved_in_db()
    assert recorded < count, "the run finished before it could be killed"
    listing = s3.client().get_paginator("list_objects_v2")
    keys = set(rows_of(db, facility_id))
    in_s3 = sum(1 for page in listing.paginate(Bucket=s3.bucket) for o in page.get("Contents", [])
                if o["Key"] in keys and o.get("StorageClass") == "GLACIER_IR")
    with db() as session:
        killed = session.scalar(select(StorageRun).where(StorageRun.job == "lifecycle",
                                                         StorageRun.id > after))
    assert killed.state == "running" and announced() > 0
    assert in_s3 > recorded, "no copy was in flight at the kill"

    # The next run (twice at once: the second finds the job locked or nothing left).
    worker = storage_fleet.start("storage", 2)
    try:
        celery_client.send_task("storage.run_lifecycle", kwargs={"now": at(120), **scope}, queue="storage")
        celery_client.send_task("storage.run_lifecycle", kwargs={"now": at(120), **scope}, queue="storage")
        resumed = wait_run(db, "lifecycle", killed.id, timeout=300)
        time.sleep(3)  # let a second run, if it got the lock after the first, finish too
        with db() as session:
            runs = session.scalars(select(StorageRun).where(StorageRun.job == "lifecycle",
                                                            StorageRun.id > killed.id)).all()
            killed_now = session.get(StorageRun, killed.id)
            not_moved = session.scalar(select(func.count()).where(
                StoredObject.facility_id == facility_id, StoredObject.storage_class != "GLACIER_IR"))
    finally:
        worker.stop(grace=10)
    assert killed_now.state == "interrupted"
    assert not_moved == 0
    copies = sum(r.counts.get("moved", 0) for r in runs)
    recovered = sum(r.counts.get("recovered", 0) for r in runs)
    # Objects the killed run had already copied were recognised, never copied again.
    assert copies == count - in_s3, (copies, count, in_s3, recorded, [r.counts for r in runs])
    assert recovered == in_s3 - recorded
    assert resumed.counts["catalogued"] == 0
    for key in list(keys)[:50]:
        assert len(versions(s3.client(), s3.bucket, key)) == 1


# ----------------------------------------------------------------------------- restore


@pytest.fixture
def restore_setup(add_stow_destination, make_user, api_server, worker, orthanc_clean):
    facility = f"Restore Clinic {secrets.token_hex(3)}"
    add_stow_destination(f"orthanc-restore-{secrets.token_hex(3)}", facility=facility)
    uploader, qa = make_user(facility, "uploader"), make_user(facility, "qa_manager")
    return facility, Gateway(api_server.url, uploader), qa


def test_cold_instances_are_restored_and_forwarded_again(
        restore_setup, db, s3, storage_worker, celery_client, orthanc_clean, storage_env, api_server):
    facility, gateway, qa_token = restore_setup
    files = sample_dicom_files()[:3]  # CT_small (39 KB, tiered alone), MR_small and rtplan (bundled)
    batch_id = gateway.open_batch(label="to archive")
    for path in files:
        gateway.upload(batch_id, path.read_bytes(), path.name)
    gateway.complete(batch_id)
    report = gateway.wait_state(batch_id, "done")
    uids = {f["filename"]: f["sop_instance_uid"] for f in report["files"]}
    assert orthanc_clean.instance_uids() == set(uids.values())
    with db() as session:
        facility_id = get_or_create_facility(session, facility).id
        session.commit()

    # Two years on, everything is in DEEP_ARCHIVE (alone or bundled).
    run = run_job(celery_client, db, "lifecycle", "storage.run_lifecycle",
                  now=(datetime.now(UTC) + timedelta(days=730)).isoformat(), facility_ids=[facility_id])
    assert run.counts["moved"] >= 1 and run.counts["bundles"] >= 1

    # The PACS lost the study; an operator replays its deliveries.
    orthanc_clean.clear()
    with db() as session:
        session.execute(update(Delivery).where(Delivery.batch_id == batch_id)
                        .values(state=DeliveryState.FAILED, status_code="lost", reason="PACS lost it"))
        session.commit()
    run_cli(["deliveries", "retry", "--batch", str(batch_id)], storage_env)

    def parked() -> list[Delivery]:
        with db() as session:
            return session.scalars(select(Delivery).where(Delivery.batch_id == batch_id)).all()

    def restores() -> list[RestoreRequest]:
        with db() as session:
            return session.scalars(select(RestoreRequest).where(RestoreRequest.facility_id == facility_id)
                                   .order_by(RestoreRequest.id)).all()

    # The forward finds every byte cold: each delivery is parked with a forward restore request,
    # and the forward task starts the restores itself (no beat runs in this test). moto restores
    # at once, so the storage worker's pass also rehydrates the bundled ones and re-queues the
    # parked deliveries; the default worker sends them.
    wait_until(lambda: len(restores()) == 3, "restore requests", 60)
    requests_ = restores()
    assert {r.purpose for r in requests_} == {"forward"}
    # DEEP_ARCHIVE, Standard tier: S3 says 12 hours, counted from when the restore started
    # (moments after the request: the forward task queued the storage worker itself).
    assert all(timedelta(hours=12) <= r.expected_ready_at - r.requested_at < timedelta(hours=12, minutes=1)
               for r in requests_)
    answer = requests.get(f"{api_server.url}/api/v1/storage/restores/{requests_[0].id}",
                          headers={"Authorization": f"Bearer {qa_token}"}, timeout=10)
    assert answer.status_code == 200
    assert answer.json()["purpose"] == "forward" and answer.json()["instance_id"] == requests_[0].instance_id
    wait_until(lambda: all(d.state == DeliveryState.DELIVERED for d in parked()), "re-forwarded", 90)
    for path in files:
        assert orthanc_clean.instance_bytes(uids[path.name]) == path.read_bytes()
    with db() as session:
        states = {r.state for r in session.scalars(
            select(RestoreRequest).where(RestoreRequest.facility_id == facility_id))}
        rehydrated = session.scalar(select(func.count()).where(StoredObject.facility_id == facility_id,
                                                               StoredObject.state == ObjectState.REHYDRATED))
    assert states == {"done"} and rehydrated == 2


def test_a_request_made_while_a_restore_pass_starts_is_expected_its_full_hours(
        db, primary, make_user, api_server, storage_worker, celery_client):
    """A pass reads its clock, then takes the job's lock and reads the open requests: one
    recorded in between is started by it, and S3's hours count from after the request. The
    pass is held at that point (its first write to storage_runs waits on our table lock)
    while the request is made, which a loaded machine otherwise does now and then."""
    _, facility_id, user_id, (qa,) = users_of(db, make_user, "Restore Race Clinic", "qa_manager")
    with db() as session:
        seeded = seed_study(session, primary, facility_id=facility_id, user_id=user_id, created_at=T0,
                            sizes=[40 * KIB])
        session.commit()
    run_job(celery_client, db, "lifecycle", "storage.run_lifecycle", now=at(400), facility_ids=[facility_id])

    def pass_waiting(session) -> bool:
        return bool(session.scalar(text(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'storage_runs'::regclass "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")))

    with db() as holder, db() as watcher:
        holder.execute(text("LOCK TABLE storage_runs IN SHARE MODE"))
        celery_client.send_task("storage.process_restores", queue="storage")
        wait_until(lambda: pass_waiting(watcher), "a restore pass held after reading its clock", 30, 0.05)
        answer = requests.post(f"{api_server.url}/api/v1/storage/restores",
                               json={"study_id": seeded.study_id, "purpose": "read"},
                               headers={"Authorization": f"Bearer {qa}"}, timeout=10)
        assert answer.status_code == 202, answer.text
        holder.rollback()  # the held pass goes on and finds the request

    def started() -> list[RestoreRequest]:
        with db() as session:
            rows = session.scalars(select(RestoreRequest)
                                   .where(RestoreRequest.facility_id == facility_id)).all()
        return rows if rows and all(r.state != "requested" for r in rows) else []

    wait_until(lambda: bool(started()), "the request started", 30, 0.2)
    for request in started():
        assert timedelta(hours=12) <= request.expected_ready_at - request.requested_at < timedelta(
            hours=12, minutes=1), (request.requested_at, request.expected_ready_at)


def test_restore_api_reports_restoring_with_an_expected_time(
        db, primary, make_user, api_server, storage_worker, celery_client):
    _, facility_id, user_id, (qa, uploader) = users_of(db, make_user, "Restore API Clinic",
                                                       "qa_manager", "uploader")
    with db() as session:
        seeded = seed_study(session, primary, facility_id=facility_id, user_id=user_id, created_at=T0,
                            sizes=[40 * KIB, 2 * KIB])
        session.commit()
    run_job(celery_client, db, "lifecycle", "storage.run_lifecycle", now=at(400), facility_ids=[facility_id])
    url = f"{api_server.url}/api/v1/storage/restores"
    assert requests.post(url, json={"study_id": seeded.study_id},
                         headers={"Authorization": f"Bearer {uploader}"}, timeout=10).status_code == 403
    answer = requests.post(url, json={"study_id": seeded.study_id, "purpose": "read"},
                           headers={"Authorization": f"Bearer {qa}"}, timeout=10)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["state"] == "restoring" and len(body["restores"]) == 2 and body["expected_ready_at"]
    assert requests.post(url, json={"study_id": seeded.study_id, "instance_id": 1},
                         headers={"Authorization": f"Bearer {qa}"}, timeout=10).status_code == 400

    # The API queued the worker: the restore completes and the bytes are readable again.
    def done() -> bool:
        with db() as session:
            return {r.state for r in session.scalars(
                select(RestoreRequest).where(RestoreRequest.facility_id == facility_id))} == {"done"}

    wait_until(done, "restores done", 60)
    for key in seeded.keys:
        assert primary.open(key).read() == seeded.data[key]


# ----------------------------------------------------------------------------- DR copy


def test_dr_copy_verified_audited_and_mirrors_bundling(
        db, primary, dr, dr_s3, storage_worker, celery_client):
    facility_id, user_id = new_facility(db, "DR Clinic")
    with db() as session:
        seeded = seed_study(session, primary, facility_id=facility_id, user_id=user_id, created_at=T0,
                            sizes=[30 * KIB, 25 * KIB, 1 * KIB, 2 * KIB])
        session.commit()
    scope = {"facility_ids": [facility_id]}
    run_job(celery_client, db, "lifecycle", "storage.run_lifecycle", now=at(1), **scope)
    run = run_job(celery_client, db, "replicate", "storage.replicate", now=at(1), **scope)
    assert run.counts["copied"] == 4
    for key in seeded.keys:
        head = dr.head(key, checksum=True)
        assert head.checksum_sha256 == hashlib.sha256(seeded.data[key]).hexdigest()
        assert head.storage_class == "GLACIER_IR"  # the DR class default
        assert dr.open(key).read() == seeded.data[key]
    assert {r.dr_state for r in rows_of(db, facility_id).values()} == {DrState.COPIED}

    # Someone overwrites a DR copy: the audit notices and the next run copies it again.
    dr_s3.client().put_object(Bucket=dr_s3.bucket, Key=seeded.keys[0], Body=b"not the image")
    with db() as session:  # make it the least recently checked
        session.execute(update(StoredObject).where(StoredObject.object_key == seeded.keys[0])
                        .values(dr_copied_at=T0 - timedelta(days=1)))
        session.commit()
    run = run_job(celery_client, db, "replicate", "storage.replicate", now=at(2), **scope)
    assert run.counts.get("audit_mismatch") == 1
    run = run_job(celery_client, db, "replicate", "storage.replicate", now=at(2), **scope)
    assert run.counts["copied"] == 1
    assert dr.open(seeded.keys[0]).read() == seeded.data[seeded.keys[0]]

    # Bundling in the primary: the bundle reaches DR, then the members' own DR copies go.
    run_job(celery_client, db, "lifecycle", "storage.run_lifecycle", now=at(95), **scope)
    run = run_job(celery_client, db, "replicate", "storage.replicate", now=at(95), **scope)
    assert run.counts["copied"] == 1 and run.counts["dr_removed"] == 2
    rows = rows_of(db, facility_id)
    bundle = next(r for r in rows.values() if r.kind == StoredObjectKind.BUNDLE)
    assert dr.head(bundle.object_key, checksum=True).checksum_sha256 == bundle.sha256
    for key, row in rows.items():
        if row.state == ObjectState.RELEASED:
            assert row.dr_state == DrState.REMOVED and not dr.exists(key)


# ----------------------------------------------------------------------------- setup, clean-up, report


def test_managed_by_s3_writes_rules_and_versioning(s3, storage_env):
    bucket = f"relaypacs-s3rules-{secrets.token_hex(3)}"
    env = {**storage_env, "RELAYPACS_STORAGE_URL": f"s3://{bucket}", "RELAYPACS_STORAGE_MANAGED_BY": "s3"}
    out = run_cli(["storage", "setup"], env)
    assert "versioning enabled" in out and "lifecycle rules written" in out
    client = s3.client()
    assert client.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rules = {r["ID"]: r for r in client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert rules["relaypacs-tiering"]["Transitions"] == [
        {"Days": 90, "StorageClass": "GLACIER_IR"}, {"Days": 365, "StorageClass": "DEEP_ARCHIVE"}]
    assert rules["relaypacs-tiering"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 2}
    assert rules["relaypacs-tiering"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}
    assert rules["relaypacs-bundles"]["Transitions"] == [{"Days": 275, "StorageClass": "DEEP_ARCHIVE"}]
    assert "unchanged" in run_cli(["storage", "setup"], env)
    bad = {**env, "RELAYPACS_STORAGE_TIERS": "STANDARD:0,GLACIER_IR:90,DEEP_ARCHIVE:100"}
    with pytest.raises(RuntimeError, match="minimum storage duration"):
        run_cli(["storage", "setup"], bad)


def test_staging_leftovers_and_abandoned_multipart_uploads_are_cleaned(
        db, primary, s3, storage_worker, celery_client):
    facility_id, _ = new_facility(db, "Staging Clinic")
    day = datetime.now(UTC) - timedelta(days=3)
    orphan = f"{day:%Y/%m/%d}/upload-{secrets.token_hex(16)}/chunks/{0:015d}"
    kept = f"{day:%Y/%m/%d}/upload-{secrets.token_hex(16)}/original.dcm"
    primary.put_stream(orphan, io.BytesIO(b"chunk"))
    primary.put_stream(kept, io.BytesIO(b"original"))
    upload = s3.client().create_multipart_upload(Bucket=s3.bucket, Key="abandoned/object")
    run = run_job(celery_client, db, "lifecycle", "storage.run_lifecycle", facility_ids=[facility_id])
    assert run.counts["staging_deleted"] >= 1 and run.counts["multipart_aborted"] >= 1
    assert not primary.exists(orphan) and primary.exists(kept)
    left = s3.client().list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])
    assert upload["UploadId"] not in {u["UploadId"] for u in left}


def test_cost_report_api_and_cli(db, primary, make_user, api_server, storage_worker, celery_client,
                                 storage_env):
    facility, facility_id, user_id, (admin, uploader) = users_of(db, make_user, "Report Clinic",
                                                                  "admin", "uploader")
    with db() as session:
        seed_study(session, primary, facility_id=facility_id, user_id=user_id, created_at=T0,
                   sizes=[100 * KIB] * 4 + [4 * KIB] * 4)
        seed_study(session, primary, facility_id=facility_id, user_id=user_id,
                   created_at=T0 + timedelta(days=300), sizes=[100 * KIB] * 2)
        session.commit()
    run_job(celery_client, db, "lifecycle", "storage.run_lifecycle", now=at(400), facility_ids=[facility_id])
    url = f"{api_server.url}/api/v1/storage/report"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": f"Bearer {uploader}"}, timeout=10).status_code == 403
    answer = requests.get(url, params={"facility": facility}, headers={"Authorization": f"Bearer {admin}"},
                          timeout=10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["by_class"]["DEEP_ARCHIVE"]["objects"] == 5  # 4 large + 1 bundle
    assert body["by_class"]["DEEP_ARCHIVE"]["instances"] == 8  # read one by one: the bundle's 4 count
    assert body["by_class"]["GLACIER_IR"]["objects"] == 2
    assert body["instances"] == 10 and body["bundled_instances"] == 4
    assert body["all_standard"]["bytes"] == (6 * 100 + 4 * 4) * KIB
    assert 0.5 < body["saving_fraction"] < 1
    assert set(body["by_facility"]) == {facility}
    # The API server runs on the shared environment: it reports the shipped default policy.
    assert body["policy"] == "STANDARD 0-30 d, GLACIER_IR 30-365 d, DEEP_ARCHIVE from 365 d"
    assert body["monthly_cost"] == pytest.approx(body["total"]["monthly_cost"] + body["fees"]["total"],
                                                 abs=1e-5)
    assert body["fees"]["cold_reads"] > 0 and body["cold_reads_per_month"] == 0.02
    out = run_cli(["storage", "report", "--facility", facility], storage_env)
    assert "DEEP_ARCHIVE" in out and f"saving {body['saving_fraction']:.1%}" in out
    dry = run_cli(["storage", "tier", "--dry-run", "--now", at(800), "--facility", facility], storage_env)
    assert '"moves": 2' in dry  # the two GLACIER_IR ones are due for DEEP_ARCHIVE by then
    with db() as session:
        assert session.scalar(select(func.count()).where(
            StoredObject.facility_id == facility_id, StoredObject.storage_class == "GLACIER_IR")) == 2
        assert session.scalar(select(func.count()).select_from(Instance).where(
            Instance.facility_id == facility_id)) == 10
