"""The core promise, on real services: files uploaded over tus in chunks reach Orthanc
byte-identical through real Celery workers on Redis and PostgreSQL, with S3 (moto_server)
as the byte store; bad files are quarantined and never forwarded."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlparse

import pytest
import requests
from tusclient import client as tus_client

from tests.integration.gateway_client import TUS, Gateway, b64
from tests.sample_data import bad_dicom_files, sample_dicom_files, synthetic_study

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stow_destination(add_stow_destination):
    return add_stow_destination("orthanc-it", facility="Clinic North")


@pytest.fixture
def gateway(api_server, make_user, worker, stow_destination, orthanc_clean):
    return Gateway(api_server.url, make_user("Clinic North", "uploader"))


def test_tuspy_batch_reaches_orthanc_byte_identical_and_bad_files_quarantined(
    gateway, api_server, orthanc_clean, tmp_path
):
    good = sample_dicom_files()[:6]
    bad = bad_dicom_files()
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_bytes(b"this is a referral letter, not an image\n" * 10)
    batch_id = gateway.open_batch(label="tuspy batch")
    tus = tus_client.TusClient(
        f"{api_server.url}/api/v1/files", headers={"Authorization": gateway.http.headers["Authorization"]}
    )
    for path in [*good, *bad, not_dicom]:
        uploader = tus.uploader(
            str(path),
            chunk_size=8 * 1024,
            upload_checksum=True,
            metadata={"filename": path.name, "batch_id": str(batch_id)},
        )
        uploader.upload()
    gateway.complete(batch_id)
    report = gateway.wait_state(batch_id, "done")

    states = {f["filename"]: f for f in report["files"]}
    for path in good:
        assert states[path.name]["state"] == "parsed", states[path.name]
    assert states["notes.dcm"]["quarantine_reason"] == "not_dicom"
    for path in bad:
        assert states[path.name]["state"] == "quarantined"
        assert states[path.name]["quarantine_reason"] == "truncated"
    assert report["totals"]["deliveries_by_state"] == {"delivered": len(good)}
    assert len(report["studies"]) >= 1

    stored = orthanc_clean.instance_uids()
    expected = {states[p.name]["sop_instance_uid"] for p in good}
    assert stored == expected  # the quarantined files never went out
    for path in good:
        uid = states[path.name]["sop_instance_uid"]
        assert orthanc_clean.instance_bytes(uid) == path.read_bytes()


def test_resume_after_interrupted_upload(gateway, api_server, orthanc_clean):
    data = synthetic_study(1)[0]
    batch_id = gateway.open_batch()
    location = gateway.create(batch_id, len(data), "ct.dcm").headers["Location"]
    assert gateway.patch(location, 0, data[:10_000]).status_code == 204

    # The link drops in the middle of the next chunk: headers say 20,000 bytes, 5,000 arrive.
    url = urlparse(location)
    with socket.create_connection((url.hostname, url.port)) as sock:
        headers = (
            f"PATCH {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: {gateway.http.headers['Authorization']}\r\n"
            "Tus-Resumable: 1.0.0\r\nUpload-Offset: 10000\r\n"
            "Content-Type: application/offset+octet-stream\r\n"
            "Content-Length: 20000\r\n\r\n"
        )
        sock.sendall(headers.encode() + data[10_000:15_000])
    # The server keeps what arrived, so the client resumes from there, not from 10,000.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        offset = int(gateway.head(location).headers["Upload-Offset"])
        if offset == 15_000:
            break
        time.sleep(0.2)
    assert offset == 15_000

    # An off-the-shelf client picks it up from the offset the server reports.
    tus = tus_client.TusClient(
        f"{api_server.url}/api/v1/files", headers={"Authorization": gateway.http.headers["Authorization"]}
    )
    import io

    uploader = tus.uploader(file_stream=io.BytesIO(data), url=location, chunk_size=4096)
    assert uploader.offset == 15_000
    uploader.upload()
    gateway.complete(batch_id)
    report = gateway.wait_state(batch_id, "done")
    uid = report["files"][0]["sop_instance_uid"]
    assert orthanc_clean.instance_bytes(uid) == data


def test_protocol_errors_over_http(gateway, api_server, make_user):
    data = synthetic_study(1)[0]
    batch_id = gateway.open_batch()
    location = gateway.create(batch_id, len(data)).headers["Location"]
    gateway.patch(location, 0, data[:1000])

    wrong_offset = gateway.patch(location, 500, data[500:1500])
    assert wrong_offset.status_code == 409
    assert wrong_offset.json()["error"]["upload_offset"] == 1000

    mismatch = gateway.patch(location, 1000, data[1000:2000], **{"Upload-Checksum": "sha1 " + b64("x" * 20)})
    assert mismatch.status_code == 460
    assert gateway.head(location).headers["Upload-Offset"] == "1000"

    anonymous = requests.head(location, headers=TUS, timeout=10)
    assert anonymous.status_code == 401
    assert (
        requests.get(f"{api_server.url}/api/v1/batches/{batch_id}", timeout=10).json()["error"]["status"]
        == 401
    )

    other = Gateway(api_server.url, make_user("Clinic South", "uploader"))
    assert other.http.get(f"{api_server.url}/api/v1/batches/{batch_id}", timeout=10).status_code == 403
    assert other.patch(location, 1000, data[1000:2000]).status_code == 403

    too_big = gateway.create(batch_id, 10 * 1024**4)
    assert too_big.status_code == 413
    assert "limit" in too_big.json()["error"]["message"]


def test_reuploaded_instance_is_not_duplicated(gateway, orthanc_clean, api_server):
    files = synthetic_study(3)
    first = gateway.open_batch()
    for i, data in enumerate(files):
        gateway.upload(first, data, f"i{i}.dcm")
    gateway.complete(first)
    gateway.wait_state(first, "done")
    assert orthanc_clean.count() == 3

    second = gateway.open_batch()
    for i, data in enumerate(files):
        gateway.upload(second, data, f"again{i}.dcm")
    gateway.complete(second)
    report = gateway.wait_state(second, "done")
    assert orthanc_clean.count() == 3
    # One delivery row per instance and destination, already delivered: nothing re-sent.
    assert report["totals"]["deliveries_by_state"] == {"delivered": 3}
    assert all(d["attempts"] == 1 for d in report["deliveries"])


def test_batch_never_completed_is_forwarded_after_quiet_period(gateway, orthanc_clean, beat):
    files = synthetic_study(2)
    batch_id = gateway.open_batch()
    for i, data in enumerate(files):
        gateway.upload(batch_id, data, f"q{i}.dcm")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and orthanc_clean.count() < 2:
        time.sleep(0.5)
    assert orthanc_clean.count() == 2
    assert gateway.report(batch_id)["state"] == "open"  # still open for more files


def test_pacs_outage_delays_but_loses_nothing(gateway, orthanc_clean):
    files = synthetic_study(4)
    orthanc_clean.stop()
    try:
        batch_id = gateway.open_batch()
        for i, data in enumerate(files):
            gateway.upload(batch_id, data, f"o{i}.dcm")
        gateway.complete(batch_id)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            report = gateway.report(batch_id)
            if report["totals"].get("deliveries_by_state", {}).get("pending"):
                break
            time.sleep(0.3)
        assert report["state"] == "forwarding"
        assert report["totals"]["deliveries_by_state"].get("pending") == 4
        assert all("unavailable" in (d["reason"] or "") for d in report["deliveries"])
    finally:
        orthanc_clean.start()
    report = gateway.wait_state(batch_id, "done", timeout=120)
    assert report["totals"]["deliveries_by_state"] == {"delivered": 4}
    assert orthanc_clean.count() == 4
