"""The integration fixtures themselves: each real server starts, answers and holds data."""

from __future__ import annotations

import io

import boto3
import pydicom
import pytest
import redis
import requests
import sqlalchemy as sa

from tests.integration.services import REDIS_CLAIM_KEY, celery_replies, process_group_members
from tests.sample_data import (
    TEST_FILES,
    bad_dicom_files,
    pacs_refused_files,
    sample_dicom_files,
    synthetic_study,
)

pytestmark = pytest.mark.integration


def _listen_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (IPv4 only, from /proc)."""
    found = set()
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            local, state = line.split()[1], line.split()[3]
            host_hex, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                found.add(".".join(str(int(host_hex[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_orthanc_stores_stow_and_returns_identical_bytes(orthanc_clean):
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    sop_uid = pydicom.dcmread(TEST_FILES / "CT_small.dcm").SOPInstanceUID

    response = orthanc_clean.stow([data])

    assert response.status_code == 200, response.text
    assert orthanc_clean.count() == 1
    assert orthanc_clean.instance_uids() == {sop_uid}
    assert orthanc_clean.instance_bytes(sop_uid) == data
    with pytest.raises(KeyError):
        orthanc_clean.instance_bytes("1.2.3.4.5.6.7.8.9")


def test_orthanc_listens_on_loopback_only(orthanc):
    assert _listen_addresses(orthanc.http_port) == {"127.0.0.1"}
    assert _listen_addresses(orthanc.dicom_port) == {"127.0.0.1"}


def test_orthanc_accepts_every_sample_file(orthanc_clean):
    files = sample_dicom_files()
    expected = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}

    response = orthanc_clean.stow(p.read_bytes() for p in files)

    assert response.status_code == 200, response.text
    assert orthanc_clean.instance_uids() == expected
    assert len(files) == len(expected) >= 30


@pytest.mark.parametrize("path", bad_dicom_files() + pacs_refused_files(), ids=lambda p: p.name)
def test_orthanc_refuses_bad_and_refused_files(orthanc_clean, path):
    response = orthanc_clean.stow([path.read_bytes()])

    assert response.status_code == 400
    assert orthanc_clean.count() == 0


def test_synthetic_study_arrives_as_one_study(orthanc_clean):
    files = synthetic_study(5)
    datasets = [pydicom.dcmread(io.BytesIO(f)) for f in files]

    response = orthanc_clean.stow(files)

    assert response.status_code == 200, response.text
    assert orthanc_clean.instance_uids() == {ds.SOPInstanceUID for ds in datasets}
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert orthanc_clean.instance_bytes(datasets[0].SOPInstanceUID) == files[0]


def test_orthanc_restarts_on_same_ports_with_its_data(orthanc_clean):
    orthanc_clean.stow(synthetic_study(2))
    url = orthanc_clean.http_url

    orthanc_clean.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/system", timeout=2)
    orthanc_clean.start()

    assert orthanc_clean.http_url == url
    assert orthanc_clean.count() == 2


def test_moto_s3_bucket_put_get(s3):
    # Its own bucket: the gateway owns s3.bucket and may have created it already.
    bucket = f"{s3.bucket}-smoke"
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="a/b.dcm", Body=b"DICM-bytes")

    # The AWS_* variables are in os.environ, so a default client reaches moto too.
    default_client = boto3.client("s3")
    body = default_client.get_object(Bucket=bucket, Key="a/b.dcm")["Body"].read()

    assert body == b"DICM-bytes"
    assert s3.storage_url == f"s3://{s3.bucket}"
    client.delete_object(Bucket=bucket, Key="a/b.dcm")
    client.delete_bucket(Bucket=bucket)


def test_postgres_database_is_private_to_the_session(postgres_url):
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        name = conn.execute(sa.text("SELECT current_database()")).scalar_one()
        conn.execute(sa.text("CREATE TEMP TABLE smoke (id int)"))
    engine.dispose()

    assert name.startswith("relaypacs_it_")
    assert postgres_url == f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"


def test_redis_database_is_claimed_by_this_session(redis_database, redis_url):
    client = redis.Redis.from_url(redis_url)

    assert client.ping()
    assert client.get(REDIS_CLAIM_KEY) == redis_database.token.encode()
    assert redis_url.endswith(f"/{redis_database.db}")
    client.close()


def test_extra_worker_answers_and_dies_whole_on_kill(worker_fleet, spawn_worker, redis_url):
    extra = spawn_worker(queues="pacs", concurrency=2)
    pgid = extra.pid
    answering = [
        stats["pid"]
        for reply in celery_replies(redis_url)
        for stats in reply.values()
        if isinstance(stats, dict)
    ]

    assert set(answering) & set(process_group_members(pgid))  # it answers a broadcast
    assert len(process_group_members(pgid)) >= 3  # main process + 2 pool children

    worker_fleet.kill(extra)

    assert not extra.alive
    assert process_group_members(pgid) == []


def test_default_worker_comes_back_after_a_kill(worker_fleet, worker):
    worker_fleet.kill(worker)

    again = worker_fleet.default()

    assert again is not worker and again.alive
