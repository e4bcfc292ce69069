"""``relaypacs demo``: the whole pipeline on embedded defaults, with no services.

A fresh folder under ./var/demo holds a SQLite database, the object store and the
forwarding destination; Celery runs on its in-memory broker with a worker thread in this
process. Sample studies from pydicom are uploaded over tus in small chunks through the
real API, grouped, and forwarded; then the batch report is printed.
"""

from __future__ import annotations

import base64
import hashlib
import time
from datetime import datetime
from pathlib import Path

import click
import pydicom

from config import load_settings

TUS = {"Tus-Resumable": "1.0.0"}


def sample_files(limit: int) -> list[Path]:
    """Good sample instances that ship inside pydicom, plus one broken file to quarantine."""
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    names = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm", "SC_rgb.dcm",
             "US1_UNCR.dcm", "JPEG2000.dcm", "emri_small.dcm", "mlut_18.dcm", "vlut_04.dcm",
             "OBXXXX1A.dcm", "image_dfl.dcm"]
    files = [folder / n for n in names if (folder / n).is_file()][: max(limit - 1, 1)]
    return files + [folder / "rtplan_truncated.dcm"]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def run_demo(max_files: int = 12, chunk_size: int = 16 * 1024) -> int:
    from celery.contrib.testing.worker import start_worker

    from api import create_app
    from api.cli import upgrade_database
    from config.celery import celery_config
    from pipeline.accounts import create_user
    from pipeline.database import make_engine, make_session_factory
    from pipeline.destination_registry import add_destination
    from workers import runtime
    from workers.app import app as celery_app

    base = load_settings()
    home = base.var_dir / "demo" / datetime.now().strftime("%Y%m%d-%H%M%S")
    settings = base.with_overrides(
        var_dir=home,
        database_url=f"sqlite:///{home / 'relaypacs.sqlite'}",
        storage_url=f"file://{home / 'objects'}",
        broker_url="memory://",
        batch_quiet_seconds=3600,
    )
    click.echo(f"demo home: {home}")
    upgrade_database(settings.database_url)
    session = make_session_factory(make_engine(settings.database_url))()
    _, token = create_user(session, "radiographer@demo.clinic", "Demo Clinic", "uploader")
    pacs_folder = home / "pacs"
    add_destination(session, "demo-pacs", folder=str(pacs_folder))
    session.commit()

    runtime.configure(settings)
    celery_app.conf.update(celery_config(settings))
    celery_app.conf.task_routes = None  # one in-process worker consumes every stage
    celery_app.conf.task_default_queue = "intake"
    import workers.tasks  # noqa: F401 - register tasks with the app

    web = create_app(settings).test_client()
    auth = {"Authorization": f"Bearer {token}"}
    files = sample_files(max_files)
    started = time.monotonic()
    with start_worker(celery_app, pool="threads", concurrency=2, perform_ping_check=False,
                      queues=["intake", "dicom", "pacs"], shutdown_timeout=30):
        batch = web.post("/api/v1/batches", json={"label": "demo"}, headers=auth).get_json()
        total = sum(f.stat().st_size for f in files)
        with click.progressbar(length=total, label="uploading over tus") as bar:
            for path in files:
                data = path.read_bytes()
                meta = f"filename {_b64(path.name)},batch_id {_b64(str(batch['id']))}"
                created = web.post("/api/v1/files", headers={
                    **auth, **TUS, "Upload-Length": str(len(data)), "Upload-Metadata": meta})
                location = created.headers["Location"]
                for offset in range(0, len(data), chunk_size):
                    piece = data[offset : offset + chunk_size]
                    digest = base64.b64encode(hashlib.sha1(piece).digest()).decode()
                    answer = web.patch(location, data=piece, headers={
                        **auth, **TUS, "Upload-Offset": str(offset),
                        "Content-Type": "application/offset+octet-stream",
                        "Upload-Checksum": f"sha1 {digest}"})
                    if answer.status_code != 204:
                        raise click.ClickException(f"PATCH failed: {answer.get_json()}")
                    bar.update(len(piece))
        web.post(f"/api/v1/batches/{batch['id']}/complete", headers=auth)
        report = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            report = web.get(f"/api/v1/batches/{batch['id']}", headers=auth).get_json()
            if report["state"] == "done":
                break
            time.sleep(0.2)
    elapsed = time.monotonic() - started
    _print_report(report, pacs_folder, elapsed)
    return 0 if report.get("state") == "done" else 1


def _print_report(report: dict, pacs_folder: Path, elapsed: float) -> None:
    totals = report.get("totals", {})
    click.echo(f"\nbatch {report.get('id')}: {report.get('state')} in {elapsed:.1f}s; "
               f"{totals.get('files')} files, {totals.get('bytes')} bytes")
    click.echo(f"files by state: {totals.get('files_by_state')}")
    for f in report.get("files", []):
        if f["state"] == "quarantined":
            click.echo(f"  quarantined {f['filename']}: {f['quarantine_reason']} "
                       f"({f['quarantine_detail']})")
    click.echo(f"{totals.get('studies')} studies:")
    for s in report.get("studies", []):
        click.echo(f"  {s['study_instance_uid']}  {s['modality'] or '-':<4} "
                   f"{s['series']} series, {s['instances']} instances, {s['deliveries']}")
    stored = sorted(pacs_folder.rglob("*.dcm")) if pacs_folder.exists() else []
    click.echo(f"deliveries: {totals.get('deliveries_by_state')}; "
               f"{len(stored)} instances in destination folder {pacs_folder}")
