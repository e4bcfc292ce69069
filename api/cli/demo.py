"""``relaypacs demo`` and what it runs: the whole pipeline on embedded defaults, with no services.

A fresh folder under ./var/demo holds a SQLite database, the object store and the
forwarding destination; Celery runs on its in-memory broker with a worker thread in this
process. Sample studies from pydicom are uploaded over tus in small chunks through the
real API, grouped, and forwarded; then the batch report is printed, with where the time
went. The hourly stats are materialised once so the dashboard shows the batch: with
``--serve`` the API stays up on the demo's database and objects, with the admin's password printed;
without it, the demo prints the command that serves them.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

import click
from kombu.transport.memory import Transport as MemoryTransport

from config import load_settings
from pipeline.dicom.samples import DEMO_BROKEN, DEMO_SAMPLES, shipped, synthetic_study

TUS = {"Tus-Resumable": "1.0.0"}


@click.command()
@click.option("--synthetic", default=20, show_default=True, type=int,
              help="instances in the synthetic CT series")
@click.option("--chunk-size", default=16 * 1024, show_default=True, type=int)
@click.option("--serve", is_flag=True, help="then keep the API and dashboard up on the demo's data")
@click.option("--host", default="127.0.0.1", show_default=True, help="with --serve")
@click.option("--port", default=8000, show_default=True, type=int, help="with --serve (0: any free)")
def demo(synthetic: int, chunk_size: int, serve: bool, host: str, port: int) -> None:
    """The whole pipeline on embedded defaults, no services needed."""
    sys.exit(run_demo(synthetic=synthetic, chunk_size=chunk_size, serve=serve, host=host,
                      port=port))


def demo_uploads(synthetic: int) -> list[tuple[str, bytes]]:
    """Real samples shipped in pydicom, a synthetic CT series, and one broken file."""
    files = [(p.name, p.read_bytes()) for p in shipped(DEMO_SAMPLES)]
    study = synthetic_study(synthetic, patient_id="DEMO-001")
    files += [(f"ct-series/{i:03d}.dcm", data) for i, data in enumerate(study, 1)]
    files += [(p.name, p.read_bytes()) for p in shipped(DEMO_BROKEN)]
    files.append(("referral-letter.pdf", b"%PDF-1.4 not an image\n" * 20))
    return files


class PromptMemoryTransport(MemoryTransport):
    """memory:// for the demo's worker, whose loop comes round every 0.1 s instead of 2 s.

    memory:// has no event loop, so the worker runs Celery's synloop: it drains the broker with
    a hard-coded 2 s timeout, performs the acks it deferred only between two drains, and on
    shutdown drains once more after seeing the stop flag (2-4 s to stop an idle worker)."""

    def drain_events(self, connection, timeout=None):  # noqa: ANN001, ANN201
        return super().drain_events(connection, timeout if timeout is None else min(timeout, 0.1))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def run_demo(synthetic: int = 20, chunk_size: int = 16 * 1024, serve: bool = False,
             host: str = "127.0.0.1", port: int = 8000) -> int:
    from celery.contrib.testing.worker import start_worker

    from api import create_app
    from config.logging import configure_logging
    from pipeline.accounts.passwords import set_password
    from pipeline.accounts.users import create_user
    from pipeline.db.engine import make_engine, make_session_factory
    from pipeline.db.migrate import upgrade_database
    from pipeline.delivery.destinations.registry import add_destination
    from workers.app import app as celery_app
    from workers.app import load_tasks, use_settings

    started = time.perf_counter()
    phases: dict[str, float] = {}
    configure_logging("WARNING")  # the demo prints its own summary; request logs would drown it
    # memory:// has no host by design; kombu warns about it on every publish.
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)
    base = load_settings()
    home = base.var_dir / "demo" / datetime.now().strftime("%Y%m%d-%H%M%S")
    settings = base.with_overrides(
        var_dir=home,
        database_url=f"sqlite:///{home / 'relaypacs.sqlite'}",
        storage_url=f"file://{home / 'objects'}",
        broker_url="memory://",
        # The demo completes its batch explicitly (as a client does with POST .../complete);
        # no beat runs here, and the quiet period is never what it waits for.
        batch_quiet_seconds=3600,
    )
    click.echo(f"demo home: {home}")
    upgrade_database(settings.database_url)
    session = make_session_factory(make_engine(settings.database_url))()
    _, token = create_user(session, "radiographer@demo.clinic", "Demo Clinic", "uploader")
    # People sign in to the dashboard with email and password (an admin or QA manager): the
    # demo admin gets a random one, printed at the end.
    admin, _ = create_user(session, "admin@demo.clinic", "Demo Clinic", "admin")
    admin_password = secrets.token_urlsafe(12)
    set_password(session, admin, admin_password)
    pacs_folder = home / "pacs"
    pacs_folder.mkdir(parents=True)
    add_destination(session, "demo-pacs", folder=str(pacs_folder))
    session.commit()
    session.close()

    use_settings(settings)
    celery_app.conf.task_routes = None  # one in-process worker consumes every stage
    celery_app.conf.task_default_queue = "intake"
    celery_app.conf.broker_transport = PromptMemoryTransport
    celery_app.conf.broker_transport_options = {"polling_interval": 0.05}
    # With prefetch at concurrency x 1 (2 unacked messages) and the acks deferred to the
    # worker loop's next 2 s turn (PromptMemoryTransport), each pair of tasks waited 2 s
    # before the next pair was fetched: ~95 s for 30 files. With no prefetch limit the worker
    # takes each message as it is published (the production default stays 1).
    celery_app.conf.worker_prefetch_multiplier = 0
    load_tasks()

    app = create_app(settings)
    web = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    files = demo_uploads(synthetic)
    report: dict = {}
    with start_worker(celery_app, pool="threads", concurrency=2, perform_ping_check=False,
                      queues=["intake", "dicom", "pacs"], shutdown_timeout=30):
        mark = _phase(phases, "set-up (database, worker)", started)
        batch = web.post("/api/v1/batches", json={"label": "demo"}, headers=auth).get_json()
        total = sum(len(data) for _, data in files)
        click.echo(f"uploading {len(files)} files ({total} bytes) in {chunk_size}-byte chunks")
        with click.progressbar(length=total, label="tus upload") as bar:
            for name, data in files:
                meta = f"filename {_b64(name)},batch_id {_b64(str(batch['id']))}"
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
        mark = _phase(phases, "tus upload (assembly and parsing run alongside)", mark)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            report = web.get(f"/api/v1/batches/{batch['id']}", headers=auth).get_json()
            if report["state"] in ("forwarding", "done") and len(phases) == 2:
                mark = _phase(phases, "assembly + parse after the last chunk", mark)
            if report["state"] == "done":
                break
            # Short: each step is milliseconds, and this loop decides when the demo ends.
            time.sleep(0.05)
        mark = _phase(phases, "forwarding", mark)
    mark = _phase(phases, "worker shutdown", mark)
    # The dashboard reads the hourly stats the beat materialises each minute; no beat runs
    # here, so the stats job runs once, now.
    # The hourly stats the dashboard reads, materialised once, in this process (the task by
    # its name: the API layer reaches the workers only through their Celery app).
    celery_app.tasks["analytics.refresh_stats"]()
    _phase(phases, "hourly stats for the dashboard", mark)
    _print_report(report, pacs_folder, phases, time.perf_counter() - started)
    status = 0 if report.get("state") == "done" else 1
    if serve:
        _serve(app, admin_password, host, port)
    else:
        _print_how_to_look(settings, admin_password)
    return status


def _phase(phases: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    phases[name] = now - since
    return now


def _serve(app, admin_password: str, host: str, port: int) -> None:  # noqa: ANN001
    """The demo's API (dashboard included) on the demo's database and objects until Ctrl-C."""
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = make_server(host, port, app, threaded=True)
    url = f"http://{host}:{server.server_port}"
    click.echo(f"\nserving the demo at {url} (dashboard: {url}/dashboard); Ctrl-C stops")
    click.echo("sign in as admin@demo.clinic with the password:")
    click.echo(admin_password)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _print_how_to_look(settings, admin_password: str) -> None:  # noqa: ANN001
    env = " ".join(f"{name}={shlex.quote(str(value))}" for name, value in (
        ("RELAYPACS_VAR_DIR", settings.var_dir), ("RELAYPACS_DATABASE_URL", settings.database_url),
        ("RELAYPACS_STORAGE_URL", settings.storage_url)))
    click.echo("\nto see this batch in the dashboard, serve the demo's database:")
    click.echo(f"  {env} relaypacs api --port 8000")
    click.echo("  (or run `relaypacs demo --serve`: a fresh demo, then the same)")
    click.echo("then sign in at http://127.0.0.1:8000/dashboard as admin@demo.clinic with the password:")
    click.echo(admin_password)


def _print_report(report: dict, pacs_folder: Path, phases: dict[str, float],
                  elapsed: float) -> None:
    totals = report.get("totals", {})
    click.echo(f"\nbatch {report.get('id')}: {report.get('state')}; "
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
    click.echo("where the time went:")
    for name, seconds in phases.items():
        click.echo(f"  {name:<48} {seconds:6.2f} s")
    click.echo(f"  {'total':<48} {elapsed:6.2f} s")
