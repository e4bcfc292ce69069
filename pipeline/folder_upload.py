"""The clinic side of ``relaypacs upload``: send a scanned folder over tus, resumably.

State lives in a small JSON file (batch id, each file's tus URL and whether it finished), so
the same command after Ctrl-C or a dropped link carries on: tus HEAD tells where each file
stopped, and no byte the server already has is sent again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import requests
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError

from pipeline.folder_scan import FolderScan, ScannedFile

EXIT_OK = 0
EXIT_UPLOAD_FAILED = 2
EXIT_QUARANTINED = 3
EXIT_DELIVERY_FAILED = 4
EXIT_NOT_FINISHED = 5


def default_state_path(folder: Path, server: str) -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    key = hashlib.sha256(f"{folder.resolve()}|{server}".encode()).hexdigest()[:16]
    return base / "relaypacs" / "uploads" / f"{key}.json"


@dataclass
class UploadState:
    """What survives an interruption; written atomically after every change."""

    path: Path
    batch_id: int | None = None
    files: dict[str, dict] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, path: Path) -> UploadState:
        state = cls(path)
        if path.is_file():
            data = json.loads(path.read_text())
            state.batch_id = data.get("batch_id")
            state.files = data.get("files", {})
        return state

    def save(self) -> None:
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"batch_id": self.batch_id, "files": self.files}, indent=1))
            os.replace(tmp, self.path)

    def entry(self, rel: str, scanned: ScannedFile) -> dict:
        stat = scanned.path.stat()
        with self.lock:
            entry = self.files.get(rel)
            fingerprint = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            if entry is None or any(entry.get(k) != v for k, v in fingerprint.items()):
                # New, or changed on disk since the last run: start this file again.
                entry = {**fingerprint, "url": None, "done": False}
                self.files[rel] = entry
            return entry


class GatewayClient:
    def __init__(self, server: str, token: str, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def _json(self, response: requests.Response) -> dict:
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise RuntimeError(f"{response.request.method} {response.url}: {response.status_code} {message}")
        return response.json()

    def open_batch(self, **body: object) -> int:
        body = {k: v for k, v in body.items() if v is not None}
        response = self.http.post(f"{self.server}/api/v1/batches", json=body, timeout=self.timeout)
        return self._json(response)["id"]

    def batch(self, batch_id: int) -> dict:
        return self._json(self.http.get(f"{self.server}/api/v1/batches/{batch_id}", timeout=self.timeout))

    def complete(self, batch_id: int) -> dict:
        return self._json(self.http.post(f"{self.server}/api/v1/batches/{batch_id}/complete",
                                         timeout=self.timeout))

    def tus(self) -> tus_client.TusClient:
        return tus_client.TusClient(f"{self.server}/api/v1/files",
                                    headers={"Authorization": self.http.headers["Authorization"]})

    def upload_exists(self, url: str) -> bool:
        response = self.http.head(url, headers={"Tus-Resumable": "1.0.0"}, timeout=self.timeout)
        return response.status_code == 200


Progress = Callable[[int], None]


class OverrideFileError(ValueError):
    """The --override file is not a mapping of PatientID to attribute values."""


def load_overrides(path: Path) -> dict[str, dict[str, object]]:
    """Per-patient overrides from a file: JSON ``{PatientID: {Keyword: value}}``, or CSV with a
    ``PatientID`` column and one column per DICOM keyword (empty cells change nothing).
    The server checks keywords and values; this only checks the shape."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise OverrideFileError(f"{path.name}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise OverrideFileError(f"{path.name}: expected {{PatientID: {{Keyword: value}}}}")
        return data
    reader = csv.DictReader(text.splitlines())
    if "PatientID" not in (reader.fieldnames or []):
        raise OverrideFileError(f"{path.name}: a CSV needs a header row with a PatientID column")
    overrides: dict[str, dict[str, object]] = {}
    for number, row in enumerate(reader, 2):
        patient_id = (row.pop("PatientID") or "").strip()
        if not patient_id or None in row:
            raise OverrideFileError(f"{path.name} line {number}: missing PatientID or extra cells")
        values = {k.strip(): v.strip() for k, v in row.items() if k and v and v.strip()}
        if patient_id in overrides:
            raise OverrideFileError(f"{path.name} line {number}: PatientID listed twice")
        overrides[patient_id] = values
    return overrides


def _upload_one(client: GatewayClient, state: UploadState, batch_id: int, rel: str,
                scanned: ScannedFile, chunk_size: int, progress: Progress, resumed: Progress) -> None:
    entry = state.entry(rel, scanned)
    if entry["done"]:
        progress(scanned.size)
        resumed(scanned.size)
        return
    url = entry["url"]
    if url and not client.upload_exists(url):
        url = None  # expired or terminated on the server: start this file over
    uploader = client.tus().uploader(
        file_path=str(scanned.path), url=url, chunk_size=chunk_size, upload_checksum=True,
        retries=5, retry_delay=2,
        metadata={"filename": rel, "batch_id": str(batch_id)},
    )
    if entry["url"] != uploader.url:
        entry["url"] = uploader.url
        state.save()
    progress(uploader.offset)  # what the server already had
    resumed(uploader.offset)
    size = uploader.get_file_size()
    while uploader.offset < size:
        before = uploader.offset
        uploader.upload_chunk()
        progress(uploader.offset - before)
    entry["done"] = True
    state.save()


def upload_folder(
    client: GatewayClient,
    root: Path,
    scan: FolderScan,
    state: UploadState,
    *,
    jobs: int = 4,
    chunk_size: int = 1024 * 1024,
    progress: Progress = lambda _n: None,
    resumed: Progress = lambda _n: None,
    batch_fields: dict | None = None,
) -> tuple[int, list[tuple[str, str]]]:
    """Upload every scanned file; returns the batch id and the files that failed, with why."""
    if state.batch_id is not None:
        try:
            if client.batch(state.batch_id)["state"] != "open":
                state.batch_id = None if not all(e["done"] for e in state.files.values()) else state.batch_id
        except RuntimeError:
            state.batch_id = None
    if state.batch_id is None:
        state.batch_id = client.open_batch(**(batch_fields or {}))
        state.files = {}
        state.save()
    batch_id = state.batch_id
    failures: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {
            pool.submit(_upload_one, client, state, batch_id, f.path.relative_to(root).as_posix(), f,
                        chunk_size, progress, resumed): f
            for f in scan.files
        }
        for future in as_completed(futures):
            try:
                future.result()
            except (TusCommunicationError, requests.RequestException, OSError, RuntimeError) as exc:
                rel = futures[future].path.relative_to(root).as_posix()
                failures.append((rel, str(exc)[:200]))
    return batch_id, failures


def follow(client: GatewayClient, batch_id: int, timeout: float,
           on_update: Callable[[dict], None] = lambda _r: None) -> dict:
    """Poll the batch until it is done or ``timeout`` passes; return the last report."""
    deadline = time.monotonic() + timeout
    report = client.batch(batch_id)
    while report["state"] != "done" and time.monotonic() < deadline:
        on_update(report)
        time.sleep(1.0)
        report = client.batch(batch_id)
    return report


def exit_code(report: dict) -> int:
    if report["state"] != "done":
        return EXIT_NOT_FINISHED
    if report["totals"].get("deliveries_by_state", {}).get("failed"):
        return EXIT_DELIVERY_FAILED
    if report["totals"].get("files_by_state", {}).get("quarantined"):
        return EXIT_QUARANTINED
    return EXIT_OK
