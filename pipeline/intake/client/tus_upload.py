"""Send one file over tus 1.0 on a keep-alive connection, resumably.

Why not tuspy here: it opens a new connection for every request and needs two requests for
a file that fits in one chunk. A clinic folder is mostly small instances, so the client
uses tus creation-with-upload (the first chunk rides on the creating POST) over one
``requests.Session`` per thread: one request per small file instead of two, and no TCP
handshake per request. Every chunk carries a sha1 ``Upload-Checksum``.

Resume: given the upload URL of an earlier run, HEAD says where the server stopped and only
the rest is sent. Any request that fails in a retryable way is followed by a HEAD, so a
chunk the server already kept is never sent again.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urljoin

import requests

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"
# Worth another try: busy lease (423), offset race (409), checksum mismatch (460: the chunk
# was damaged in transit), throttling and server-side trouble.
RETRYABLE = frozenset({408, 409, 423, 425, 429, 460, 500, 502, 503, 504})


class TusUploadFailed(RuntimeError):
    """The server refused the file, or the retries ran out."""


def _b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode("ascii")


def _message(response: requests.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def server_offset(http: requests.Session, url: str, timeout: float) -> int | None:
    """Where the server's copy ends; None when the upload is gone (expired, terminated)."""
    response = http.head(url, headers=TUS, timeout=timeout)
    if response.status_code in (404, 410):
        return None
    if response.status_code != 200 or "Upload-Offset" not in response.headers:
        raise TusUploadFailed(f"HEAD {url}: {response.status_code}")
    return int(response.headers["Upload-Offset"])


def upload_file(
    http: requests.Session,
    files_url: str,
    path: Path,
    *,
    url: str | None,
    metadata: Mapping[str, str],
    chunk_size: int,
    on_created: Callable[[str], None] = lambda _url: None,
    progress: Callable[[int], None] = lambda _n: None,
    retries: int = 5,
    retry_delay: float = 2.0,
    timeout: float = 60.0,
) -> int:
    """Upload ``path``; returns how many bytes the server already had from an earlier run.

    ``on_created`` gets the new upload's URL as soon as the server made it (to be kept for a
    resume); ``progress`` gets every confirmed number of new bytes.
    """
    size = path.stat().st_size
    offset = 0
    if url is not None:
        known = server_offset(http, url, timeout)
        if known is None:
            url = None  # expired or terminated on the server: start this file again
        else:
            offset = known
            progress(offset)
    already = offset
    failures = 0
    with open(path, "rb") as fh:
        while url is None or offset < size:
            fh.seek(offset)
            chunk = fh.read(min(chunk_size, size - offset))
            headers = {**TUS, "Content-Type": OCTET,
                       "Upload-Checksum": f"sha1 {_b64(hashlib.sha1(chunk).digest())}"}
            try:
                if url is None:
                    meta = ",".join(f"{k} {_b64(v)}" for k, v in metadata.items())
                    response = http.post(files_url, data=chunk, timeout=timeout, headers={
                        **headers, "Upload-Length": str(size), "Upload-Metadata": meta})
                else:
                    response = http.patch(url, data=chunk, timeout=timeout,
                                          headers={**headers, "Upload-Offset": str(offset)})
            except requests.RequestException as exc:
                response, error = None, f"{type(exc).__name__}"
            if response is not None and response.status_code in (201, 204):
                if url is None:
                    url = urljoin(files_url, response.headers["Location"])
                    on_created(url)
                new_offset = int(response.headers.get("Upload-Offset", offset + len(chunk)))
                progress(new_offset - offset)
                offset, failures = new_offset, 0
                continue
            if response is not None:
                error = f"{response.status_code} {_message(response)}"
                if response.status_code not in RETRYABLE:
                    raise TusUploadFailed(f"{path.name}: {error}")
            failures += 1
            if failures > retries:
                raise TusUploadFailed(f"{path.name}: gave up after {retries} retries ({error})")
            time.sleep(retry_delay)
            if url is not None:
                known = server_offset(http, url, timeout)
                if known is None:
                    raise TusUploadFailed(f"{path.name}: the upload vanished on the server")
                if known > offset:
                    progress(known - offset)  # part of a broken request was kept
                offset = known
    return already
