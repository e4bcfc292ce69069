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

from pipeline.intake.client.folder_scan import FolderScan, ScannedFile
from pipeline.intake.client.tus_upload import upload_file

EXIT_OK = 0
EXIT_UPLOAD_FAILED = 2
EXIT_QUARANTINED = 3
EXIT_DELIVERY_FAILED = 4
EXIT_NOT_FINISHED = 5
SAVE_INTERVAL = 1.0
IDEMPOTENT_RETRIES = 2


def default_state_path(folder: Path, server: str) -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    key = hashlib.sha256(f"{folder.resolve()}|{server}".encode()).hexdigest()[:16]
    return base / "relaypacs" / "uploads" / f"{key}.json"


@dataclass
class UploadState:
    """What survives an interruption; written atomically, at most every SAVE_INTERVAL
    seconds while files stream in (the whole file each time: saving after every one of
    thousands of files costs more CPU than the upload), and always at the end or on Ctrl-C.
    A change lost to a hard kill only costs a HEAD (or a small file sent again)."""

    path: Path
    batch_id: int | None = None
    files: dict[str, dict] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    saved_at: float = field(default=float("-inf"), repr=False)

    @classmethod
    def load(cls, path: Path) -> UploadState:
        state = cls(path)
        if path.is_file():
            data = json.loads(path.read_text())
            state.batch_id = data.get("batch_id")
            state.files = data.get("files", {})
        return state

    def save(self, force: bool = True) -> None:
        with self.lock:
            if not force and time.monotonic() - self.saved_at < SAVE_INTERVAL:
                return
            self.saved_at = time.monotonic()
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
        self.local = threading.local()

    def thread_http(self) -> requests.Session:
        """A keep-alive session for the calling upload thread (Sessions are not shared
        across threads)."""
        http = getattr(self.local, "http", None)
        if http is None:
            http = self.local.http = requests.Session()
            http.headers["Authorization"] = self.http.headers["Authorization"]
        return http

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

    def _idempotent(self, method: str, url: str) -> requests.Response:
        """A request that is safe to send twice, sent again when its connection broke.

        The control session sits idle while the files upload; the server then closes its
        keep-alive connection, and over a link with latency that close can cross the next
        request on the wire (no response at all). A fresh connection then answers."""
        for attempt in range(IDEMPOTENT_RETRIES + 1):
            try:
                return self.http.request(method, url, timeout=self.timeout)
            except requests.ConnectionError:
                if attempt == IDEMPOTENT_RETRIES:
                    raise
                time.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    def batch(self, batch_id: int) -> dict:
        return self._json(self._idempotent("GET", f"{self.server}/api/v1/batches/{batch_id}"))

    def complete(self, batch_id: int) -> dict:
        # Completing a completed batch changes nothing: safe to repeat.
        return self._json(self._idempotent("POST", f"{self.server}/api/v1/batches/{batch_id}/complete"))


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

    def created(url: str) -> None:
        entry["url"] = url
        state.save(force=False)

    already = upload_file(client.thread_http(), f"{client.server}/api/v1/files", scanned.path,
                          url=entry["url"], metadata={"filename": rel, "batch_id": str(batch_id)},
                          chunk_size=chunk_size, on_created=created, progress=progress)
    resumed(already)
    entry["done"] = True
    state.save(force=False)


def upload_folder(
    client: GatewayClient,
    root: Path,
    scan: FolderScan,
    state: UploadState,
    *,
    jobs: int = 8,
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
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        futures = {
            pool.submit(_upload_one, client, state, batch_id, f.path.relative_to(root).as_posix(), f,
                        chunk_size, progress, resumed): f
            for f in scan.files
        }
        for future in as_completed(futures):
            try:
                future.result()
            except (requests.RequestException, OSError, RuntimeError) as exc:
                rel = futures[future].path.relative_to(root).as_posix()
                failures.append((rel, str(exc)[:200]))
    finally:
        # Ctrl-C: files not started yet are dropped, those under way finish their request.
        pool.shutdown(wait=True, cancel_futures=True)
        state.save()
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


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _count(n: int, what: str, plural: str | None = None) -> str:
    return f"{n} {what if n == 1 else (plural or what + 's')}"


def waiting_line(report: dict) -> str | None:
    """What a batch still waits for, in one line (None: nothing, or an older server):
    ``waiting: 2 files parsing, 1 conflict to resolve, quiet period ends in 1m40s, ...``."""
    waiting = report.get("waiting")
    if not waiting or report.get("state") == "done":
        return None
    parts = []
    receiving = [f for f in waiting.get("unfinished_files", []) if f["state"] == "receiving"]
    if receiving:
        shown = ", ".join(f"{f['filename']} at {100 * f['offset'] // max(f['length'], 1)}%"
                          for f in receiving[:3])
        more = f" and {len(receiving) - 3} more" if len(receiving) > 3 else ""
        parts.append(f"{_count(len(receiving), 'file')} unfinished ({shown}{more})")
    if waiting.get("files_processing"):
        parts.append(f"{_count(waiting['files_processing'], 'file')} parsing")
    if waiting.get("conflicts_open"):
        parts.append(f"{_count(waiting['conflicts_open'], 'conflict')} to resolve")
    if waiting.get("quiet_period_ends_in_seconds") is not None:
        parts.append(f"quiet period ends in {_duration(waiting['quiet_period_ends_in_seconds'])}")
    if waiting.get("deliveries_pending"):
        parts.append(f"{_count(waiting['deliveries_pending'], 'delivery', 'deliveries')} pending")
    if not parts and report.get("state") == "completed":
        parts.append("forwarding to start")
    return "waiting: " + ", ".join(parts) if parts else None


def exit_code(report: dict) -> int:
    if report["state"] != "done":
        return EXIT_NOT_FINISHED
    if report["totals"].get("deliveries_by_state", {}).get("failed"):
        return EXIT_DELIVERY_FAILED
    if report["totals"].get("files_by_state", {}).get("quarantined"):
        return EXIT_QUARANTINED
    return EXIT_OK
