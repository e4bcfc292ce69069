"""Clinic links that die mid-chunk: the real API server (gunicorn) cuts a silent client off
after RELAYPACS_CLIENT_IDLE_TIMEOUT_SECONDS, keeps what arrived of the chunk (to the last
whole read block), and frees the thread, so more dead links than the API has threads cannot
starve everyone else."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
import requests

from pipeline.intake.uploads import READ_BLOCK
from tests.integration.gateway_client import OCTET, Gateway
from tests.integration.services import ApiServer

pytestmark = pytest.mark.integration

IDLE_SECONDS = 2
# ApiServer runs `relaypacs api` with its defaults: 2 processes x 8 threads.
API_THREADS = 16


@pytest.fixture(scope="module")
def strict_api(gateway_env, it_dir) -> Iterator[ApiServer]:
    env = {**gateway_env, "RELAYPACS_CLIENT_IDLE_TIMEOUT_SECONDS": str(IDLE_SECONDS)}
    server = ApiServer(env, it_dir / "logs" / "api-stalled.log").start()
    try:
        yield server
    finally:
        server.stop(grace=10)


def _stall_mid_chunk(url: str, location: str, token: str, body_length: int, sent: bytes) -> socket.socket:
    """Start a PATCH that promises ``body_length`` bytes, send ``sent``, then go silent."""
    parts = urlparse(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    head = (f"PATCH {urlparse(location).path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
            f"Content-Type: {OCTET}\r\nContent-Length: {body_length}\r\n\r\n")
    sock.sendall(head.encode() + sent)
    return sock


def test_dead_links_are_cut_off_keep_their_bytes_and_free_the_threads(strict_api, make_user):
    token = make_user("Stalled Clinic", "uploader")
    gateway = Gateway(strict_api.url, token)
    batch_id = gateway.open_batch(label="bad link")
    # Not DICOM and never finished: only the bytes' journey matters here, no worker runs.
    data = os.urandom(8 * READ_BLOCK)
    first = 3 * READ_BLOCK + 100

    locations = []
    for n in range(API_THREADS + 4):
        created = gateway.create(batch_id, len(data), f"stalled-{n}.dcm")
        assert created.status_code == 201, created.text
        locations.append(created.headers["Location"])
    started = time.monotonic()
    stalled = [_stall_mid_chunk(strict_api.url, location, token, len(data), data[:first])
               for location in locations]
    try:
        # More silent clients than threads, yet a request still gets through: each silent
        # one is cut off after the idle timeout.
        assert requests.get(f"{strict_api.url}/healthz", timeout=30).status_code == 200
        for sock in stalled:
            status_line = sock.recv(200).split(b"\r\n", 1)[0]
            assert status_line.upper() == b"HTTP/1.1 204 NO CONTENT", status_line
        assert time.monotonic() - started < IDLE_SECONDS * 6
    finally:
        for sock in stalled:
            sock.close()

    # Every upload kept what arrived, up to the last whole read block (the server reads the
    # body READ_BLOCK bytes at a time); the clinic resumes from there.
    offsets = {int(gateway.head(location).headers["Upload-Offset"]) for location in locations}
    assert offsets == {first - first % READ_BLOCK}
    kept = offsets.pop()
    resumed = gateway.patch(locations[0], kept, data[kept:kept + READ_BLOCK])
    assert resumed.status_code == 204, resumed.text
    assert int(resumed.headers["Upload-Offset"]) == kept + READ_BLOCK
