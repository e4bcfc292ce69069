"""Terminal side of ``relaypacs upload``: summary, live progress, final table, exit code."""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

import click

from pipeline.intake.client.folder_scan import scan_folder
from pipeline.intake.client.folder_upload import (
    EXIT_UPLOAD_FAILED,
    GatewayClient,
    OverrideFileError,
    UploadState,
    default_state_path,
    exit_code,
    follow,
    load_overrides,
    upload_folder,
    waiting_line,
)


class ProgressLine:
    """A bar on a terminal; a plain line every few seconds when output goes to a log."""

    def __init__(self, total: int, files: int) -> None:
        self.total = max(total, 1)
        self.files = files
        self.done = 0
        self.started = time.monotonic()
        self.last_print = 0.0
        self.lock = threading.Lock()
        self.tty = sys.stdout.isatty()
        self.bar = click.progressbar(length=self.total, label="uploading", show_pos=False,
                                     show_eta=True) if self.tty else None
        if self.bar:
            self.bar.__enter__()

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n
            if self.bar:
                self.bar.update(n)
            elif time.monotonic() - self.last_print > 5 or self.done >= self.total:
                self.last_print = time.monotonic()
                click.echo(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        return (f"uploaded {self.done}/{self.total} bytes ({100 * self.done / self.total:.0f}%), "
                f"{rate / 1e6:.2f} MB/s, ETA {eta:.0f}s")

    def close(self) -> None:
        if self.bar:
            self.bar.__exit__(None, None, None)


class WaitingLine:
    """While following a batch: what it waits for, printed at once when a new kind of wait
    appears (a conflict, a straggler), else every 10 s at most."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.last = ""
        self.last_at = 0.0

    def __call__(self, report: dict) -> None:
        line = waiting_line(report)
        if not line:
            return
        now = time.monotonic()
        # Counts ticking down are shown every few seconds; a new kind of wait at once.
        if _kinds(line) != _kinds(self.last) or now - self.last_at >= self.every:
            click.echo(line)
            self.last, self.last_at = line, now


def _kinds(line: str) -> str:
    return re.sub(r"\([^)]*\)|\d+m?\d*s?", "", line)


def run_upload(folder: Path, server: str, token: str, *, jobs: int, chunk_size: int,
               label: str | None, state_file: Path | None, wait: int, template: str | None = None,
               override_file: Path | None = None) -> int:
    try:
        overrides = load_overrides(override_file) if override_file else None
    except OverrideFileError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_UPLOAD_FAILED
    scan = scan_folder(folder)
    summary = scan.summary()
    click.echo("found: " + ", ".join(f"{v} {k}" for k, v in summary.items()))
    for skipped in scan.skipped:
        click.echo(f"  skipped {skipped.path.relative_to(folder)}: {skipped.reason}")
    for study_uid, patients in scan.mixed_patient_studies().items():
        click.echo(f"  WARNING: study {study_uid} holds {len(patients)} different PatientIDs")
    if not scan.files:
        click.echo("nothing to upload")
        return EXIT_UPLOAD_FAILED
    client = GatewayClient(server, token)
    state = UploadState.load(state_file or default_state_path(folder, server))
    progress = ProgressLine(scan.total_bytes, len(scan.files))
    already = [0]

    def count_resumed(n: int) -> None:
        already[0] += n

    if template or overrides:
        click.echo(f"template: {template or '-'}; overrides for {len(overrides or {})} patient(s)")
    fields = {"label": label, "template": template, "overrides": overrides}
    try:
        batch_id, failures = upload_folder(client, folder, scan, state, jobs=jobs,
                                           chunk_size=chunk_size, progress=progress.add,
                                           resumed=count_resumed, batch_fields=fields)
    except RuntimeError as exc:  # the server refused the batch (unknown template, bad override)
        click.echo(f"error: {exc}", err=True)
        return EXIT_UPLOAD_FAILED
    finally:
        progress.close()
    if already[0]:
        click.echo(f"resumed: {already[0]} bytes were already on the server, not sent again")
    click.echo(f"batch {batch_id}: {progress.line()}")
    if failures:
        for rel, why in failures:
            click.echo(f"  FAILED {rel}: {why}")
        click.echo("run the same command again to resume")
        return EXIT_UPLOAD_FAILED
    client.complete(batch_id)
    if wait <= 0:
        click.echo(f"batch {batch_id} completed; follow it at {server}/api/v1/batches/{batch_id}")
        return 0
    report = follow(client, batch_id, wait, on_update=WaitingLine())
    click.echo(f"batch {batch_id}: {report['state']}")
    click.echo(f"{'study':<66} {'inst':>5}  deliveries")
    for study in report["studies"]:
        deliveries = ", ".join(f"{dest}: {dict(c)}" for dest, c in study["deliveries"].items())
        click.echo(f"{study['study_instance_uid']:<66} {study['instances']:>5}  {deliveries or '-'}")
    for problem in report.get("problems", []):
        click.echo(f"  PROBLEM study {problem['study_instance_uid']}: {problem['message']}")
    for conflict in report.get("conflicts", []):
        chosen = conflict["chosen_upload_id"]
        names = {v["upload_id"]: v["filename"] for v in conflict["versions"]}
        click.echo(f"  {'CONFLICT' if conflict['state'] == 'open' else 'versions'} "
                   f"{conflict['sop_instance_uid']} ({conflict['kind']}): "
                   + ", ".join(names.values())
                   + (f"; sent: {names.get(chosen)}" if chosen else
                      f"; a person chooses: {server}/api/v1/batches/{batch_id}/conflicts"))
    for f in report["files"]:
        if f["state"] == "quarantined":
            click.echo(f"  quarantined {f['filename']}: {f['quarantine_reason']} ({f['quarantine_detail']})")
    code = exit_code(report)
    if code == 0:
        state.path.unlink(missing_ok=True)  # finished: nothing left to resume
    return code
