"""The CLI's tus client against the real API app served on loopback (SQLite, folder store):
creation-with-upload, chunks with checksums, resume from the server's offset."""

from __future__ import annotations

import threading

import pytest
import requests
from werkzeug.serving import make_server

from pipeline.intake.client.tus_upload import TusUploadFailed, upload_file


@pytest.fixture
def server(app, enqueued):
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


@pytest.fixture
def session_and_batch(server, make_token):
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {make_token('Clinic A')}"
    batch = http.post(f"{server}/api/v1/batches", json={}).json()["id"]
    return http, batch


def stored_offset(http, url):
    return int(http.head(url, headers={"Tus-Resumable": "1.0.0"}).headers["Upload-Offset"])


def test_small_file_is_one_request(server, session_and_batch, tmp_path, enqueued):
    http, batch = session_and_batch
    path = tmp_path / "a.dcm"
    path.write_bytes(b"x" * 5000)
    urls, sent = [], []
    already = upload_file(http, f"{server}/api/v1/files", path, url=None,
                          metadata={"filename": "a.dcm", "batch_id": str(batch)},
                          chunk_size=1 << 20, on_created=urls.append, progress=sent.append)
    assert already == 0 and sent == [5000] and len(urls) == 1
    assert stored_offset(http, urls[0]) == 5000
    # complete, and stored whole as its original: parsing was queued, no assembly needed
    assert [kind for kind, _ in enqueued] == ["parse"]


def test_chunks_and_resume_after_interruption(server, session_and_batch, tmp_path):
    http, batch = session_and_batch
    data = bytes(range(256)) * 100  # 25,600 bytes: 4 chunks of 8 KiB
    path = tmp_path / "b.dcm"
    path.write_bytes(data)
    urls: list[str] = []

    def stop_after_two(n: int, seen=[]):  # noqa: B006 - counts across calls on purpose
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upload_file(http, f"{server}/api/v1/files", path, url=None, metadata={
            "filename": "b.dcm", "batch_id": str(batch)}, chunk_size=8192,
            on_created=urls.append, progress=stop_after_two)
    assert stored_offset(http, urls[0]) == 16384
    sent: list[int] = []
    already = upload_file(http, f"{server}/api/v1/files", path, url=urls[0], metadata={},
                          chunk_size=8192, progress=sent.append)
    assert already == 16384
    assert sum(sent) == len(data)  # the resumed bytes reported once, then the rest
    assert stored_offset(http, urls[0]) == len(data)


def test_vanished_upload_starts_again(server, session_and_batch, tmp_path):
    http, batch = session_and_batch
    path = tmp_path / "c.dcm"
    path.write_bytes(b"y" * 100)
    urls: list[str] = []
    already = upload_file(http, f"{server}/api/v1/files", path,
                          url=f"{server}/api/v1/files/{'0' * 32}",
                          metadata={"filename": "c.dcm", "batch_id": str(batch)},
                          chunk_size=1024, on_created=urls.append)
    assert already == 0 and len(urls) == 1


def test_refusal_is_reported_not_retried(server, session_and_batch, tmp_path):
    http, batch = session_and_batch
    path = tmp_path / "d.dcm"
    path.write_bytes(b"z" * (5 * 1024 * 1024))  # over the unit settings' 4 MiB limit
    with pytest.raises(TusUploadFailed, match="413"):
        upload_file(http, f"{server}/api/v1/files", path, url=None,
                    metadata={"filename": "d.dcm", "batch_id": str(batch)}, chunk_size=1 << 20,
                    retry_delay=0)
