"""The ``relaypacs`` command line: demo, api, worker, beat, scp, db, users, destinations, upload."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from config import load_settings


@click.group()
def main() -> None:
    """RelayPACS Gateway: clinic DICOM uploads into hospital PACS."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn processes")
@click.option("--threads", default=8, show_default=True, type=int, help="threads per process")
def api(host: str, port: int, workers: int, threads: int) -> None:
    """Serve the intake API (gunicorn, threaded workers: slow uploads do not block others)."""
    gunicorn = shutil.which("gunicorn") or str(Path(sys.executable).with_name("gunicorn"))
    if not Path(gunicorn).exists():
        from api import create_app

        click.echo("gunicorn not installed; serving with the development server", err=True)
        create_app().run(host=host, port=port, threaded=True)
        return
    os.execv(gunicorn, [  # noqa: S606 - replace this process with gunicorn
        gunicorn, "--bind", f"{host}:{port}", "--workers", str(workers),
        "--worker-class", "gthread", "--threads", str(threads), "--timeout", "300",
        "--graceful-timeout", "30", "--keep-alive", "5",
        # Above the app's own JSON 414/431 bounds (api/observability.py), so a client normally
        # gets those; these only stop what would never reach the app.
        "--limit-request-line", "8190", "--limit-request-fields", "100",
        "--limit-request-field_size", "16384", "api:create_app()",
    ])


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("-Q", "--queues", default="intake,dicom,pacs", show_default=True)
@click.option("-c", "--concurrency", default=None, type=int)
@click.option("--pool", default=None, help="prefork (CPU) or threads (I/O-bound forwarding)")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def worker(queues: str, concurrency: int | None, pool: str | None, extra: tuple[str, ...]) -> None:
    """Run a worker pool for the given queues."""
    from workers.app import app

    argv = ["worker", "-Q", queues, "--loglevel", "INFO", "-n", f"{queues.replace(',', '-')}@%h"]
    if concurrency:
        argv += ["-c", str(concurrency)]
    if pool:
        argv += ["--pool", pool]
    app.worker_main(argv + list(extra))


@main.command()
def beat() -> None:
    """Run the periodic scheduler (beat_schedule.py)."""
    from workers.app import app

    settings = load_settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--loglevel", "INFO", "-s", str(settings.var_dir / "celerybeat-schedule")])


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8001, show_default=True, type=int)
def events(host: str, port: int) -> None:
    """Serve GET /api/v1/events (SSE from Redis; asyncio, thousands of open streams)."""
    from api.event_stream import serve

    serve(load_settings(), host, port)


@main.command()
@click.option("--aet", required=True, help="this SCP's AE title (modalities call it)")
@click.option("--port", required=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--facility", help="facility that owns received studies (default: the AE title)")
def scp(aet: str, port: int, host: str, facility: str | None) -> None:
    """Run a DICOM Storage SCP: pushed instances take the same chain as uploads."""
    from api.scp import serve

    serve(load_settings(), ae_title=aet, port=port, host=host, facility=facility or aet)


@main.group()
def db() -> None:
    """Database schema."""


def upgrade_database(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.set_main_option("script_location", "pipeline:migrations")
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(cfg, "head")


@db.command()
def upgrade() -> None:
    """Apply Alembic migrations up to the newest."""
    upgrade_database(load_settings().database_url)
    click.echo("database is up to date")


def _session():  # noqa: ANN202
    """A session on a schema at head: every command that reads or writes rows comes here, so
    an unmigrated database gets one clear message instead of a "no such table" traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    from pipeline.database import make_engine, make_session_factory, schema_problem

    engine = make_engine(load_settings().database_url)
    try:
        problem = schema_problem(engine)
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc  # the driver's words, not the SQL
        raise click.ClickException(f"cannot reach the database: {reason}") from exc
    if problem:
        raise click.ClickException(problem)
    return make_session_factory(engine)()


@main.group()
def users() -> None:
    """API users and tokens."""


def _lifetime(days: int):  # noqa: ANN202
    from datetime import timedelta

    return timedelta(days=days) if days > 0 else None


@users.command("create")
@click.option("--email", required=True)
@click.option("--facility", required=True)
@click.option("--role", required=True, type=click.Choice(["uploader", "qa_manager", "admin"]))
@click.option("--expires-days", default=365, show_default=True, type=int,
              help="token lifetime; 0: never expires")
def users_create(email: str, facility: str, role: str, expires_days: int) -> None:
    """Create a user; the token is printed once, on the last line."""
    from pipeline import audit
    from pipeline.accounts import create_user

    with _session() as session:
        try:
            user, token = create_user(session, email, facility, role, _lifetime(expires_days))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        audit.record(session, audit.Actor(None, user.facility_id, "cli"), "user.created",
                     f"user:{user.id}", {"role": role})
        session.commit()
        click.echo(f"created user {user.id} ({role}) in facility {facility!r}; token:", err=True)
    click.echo(token)


@users.command("revoke")
@click.option("--email", required=True)
def users_revoke(email: str) -> None:
    """Revoke a user's token at once."""
    from pipeline import audit
    from pipeline.accounts import revoke

    with _session() as session:
        try:
            user = revoke(session, email)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        audit.record(session, audit.Actor(None, user.facility_id, "cli"), "token.revoked",
                     f"user:{user.id}")
        session.commit()
    click.echo(f"token of user {user.id} revoked")


@users.command("rotate")
@click.option("--email", required=True)
@click.option("--expires-days", default=365, show_default=True, type=int)
def users_rotate(email: str, expires_days: int) -> None:
    """Issue a new token (printed once, last line); the old one stops working."""
    from pipeline import audit
    from pipeline.accounts import rotate_token

    with _session() as session:
        try:
            user, token = rotate_token(session, email, _lifetime(expires_days))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        audit.record(session, audit.Actor(None, user.facility_id, "cli"), "token.rotated",
                     f"user:{user.id}")
        session.commit()
    click.echo(f"new token for user {user.id}:", err=True)
    click.echo(token)


@main.group()
def destinations() -> None:
    """PACS destinations."""


@destinations.command("add")
@click.argument("name")
@click.option("--stow-url", help="DICOMweb root, e.g. http://pacs/dicom-web")
@click.option("--user")
@click.option("--password")
@click.option("--token", "bearer", help="bearer token for the STOW-RS endpoint")
@click.option("--dimse", help="AET@HOST:PORT of a C-STORE SCP")
@click.option("--folder", type=click.Path(file_okay=False), help="local folder (demo)")
@click.option("--facility", help="only for this facility (default: every facility)")
def destinations_add(name: str, stow_url: str | None, user: str | None, password: str | None,
                     bearer: str | None, dimse: str | None, folder: str | None,
                     facility: str | None) -> None:
    """Add a destination: exactly one of --stow-url, --dimse, --folder."""
    from pipeline.destination_registry import DestinationSpecError, add_destination

    with _session() as session:
        try:
            dest = add_destination(session, name, stow_url=stow_url, user=user,
                                   password=password, bearer=bearer, dimse=dimse,
                                   folder=folder, facility=facility)
        except DestinationSpecError as exc:
            raise click.ClickException(str(exc)) from exc
        session.commit()
        click.echo(f"destination {dest.id} {dest.name} ({dest.kind}) added")


@destinations.command("list")
def destinations_list() -> None:
    from sqlalchemy import select

    from pipeline.models import Destination

    with _session() as session:
        for d in session.scalars(select(Destination).order_by(Destination.id)):
            where = d.options.get("url") or d.options.get("path") or (
                f"{d.options.get('aet')}@{d.options.get('host')}:{d.options.get('port')}")
            click.echo(f"{d.id}\t{d.name}\t{d.kind}\t{where}\t{'enabled' if d.enabled else 'disabled'}")


@main.group()
def deliveries() -> None:
    """Deliveries: list dead letters, replay them."""


def _delivery_choice(func):  # noqa: ANN001, ANN202
    for option in reversed([
        click.option("--id", "ids", multiple=True, type=int, help="delivery id (repeatable)"),
        click.option("--batch", "batch_id", type=int),
        click.option("--destination"),
    ]):
        func = option(func)
    return func


@deliveries.command("list")
@click.option("--status", default="failed", show_default=True)
@_delivery_choice
def deliveries_list(status: str, ids: tuple[int, ...], batch_id: int | None,
                    destination: str | None) -> None:
    from pipeline.delivery_queries import SelectionError, describe, select_deliveries

    with _session() as session:
        try:
            query = select_deliveries(status=status, ids=ids, batch_id=batch_id,
                                      destination=destination)
        except SelectionError as exc:
            raise click.ClickException(str(exc)) from exc
        rows = describe(session, session.scalars(query.limit(1000)).all())
    for row in rows:
        click.echo(f"{row['id']}\tbatch {row['batch_id']}\t{row['destination']}\t{row['state']}\t"
                   f"attempts {row['attempts']}\t{row['status_code'] or '-'}\t{row['reason'] or ''}")
    click.echo(f"{len(rows)} deliveries", err=True)


@deliveries.command("retry")
@_delivery_choice
@click.option("--all", "everything", is_flag=True, help="every failed delivery")
def deliveries_retry(ids: tuple[int, ...], batch_id: int | None, destination: str | None,
                     everything: bool) -> None:
    """Replay failed deliveries (dead letters) by id, batch, destination or all."""
    from pipeline.batch_progress import reopen_for_replay
    from pipeline.delivery_queries import SelectionError, select_deliveries
    from pipeline.forwarding import replay
    from workers import chains

    with _session() as session:
        try:
            query = select_deliveries(status="failed", ids=ids, batch_id=batch_id,
                                      destination=destination, everything=everything)
        except SelectionError as exc:
            raise click.ClickException(str(exc)) from exc
        chosen = session.scalars(query).all()
        pairs = replay(session, chosen)
        reopen_for_replay(session, {d.batch_id for d in chosen})
        session.commit()
    chains.enqueue_forwarding(pairs)
    click.echo(f"replaying {len(chosen)} deliveries in {len(pairs)} study forwards")


@main.group()
def routes() -> None:
    """Routing rules: which destinations a facility's studies go to."""


@routes.command("add")
@click.option("--destination", required=True)
@click.option("--facility", help="default: every facility")
@click.option("--modality", help="default: every modality")
def routes_add(destination: str, facility: str | None, modality: str | None) -> None:
    from sqlalchemy import select

    from pipeline.accounts import get_or_create_facility
    from pipeline.models import Destination
    from pipeline.routing import add_rule

    with _session() as session:
        dest = session.scalar(select(Destination).where(Destination.name == destination))
        if dest is None:
            raise click.ClickException(f"no destination named {destination!r}")
        facility_id = get_or_create_facility(session, facility).id if facility else None
        rule = add_rule(session, destination=dest, facility_id=facility_id, modality=modality)
        session.commit()
        click.echo(f"rule {rule.id}: {facility or 'every facility'} / {rule.modality or 'any modality'}"
                   f" -> {destination}")


@routes.command("list")
def routes_list() -> None:
    from sqlalchemy import select

    from pipeline.models import Destination, Facility, RoutingRule

    with _session() as session:
        names = {d.id: d.name for d in session.scalars(select(Destination))}
        facilities = {f.id: f.name for f in session.scalars(select(Facility))}
        for rule in session.scalars(select(RoutingRule).order_by(RoutingRule.id)):
            click.echo(f"{rule.id}\t{facilities.get(rule.facility_id, '*')}\t{rule.modality or '*'}\t"
                       f"{names.get(rule.destination_id)}\t{'enabled' if rule.enabled else 'disabled'}")


@main.command()
@click.option("--synthetic", default=20, show_default=True, type=int,
              help="instances in the synthetic CT series")
@click.option("--chunk-size", default=16 * 1024, show_default=True, type=int)
@click.option("--serve", is_flag=True, help="then keep the API and dashboard up on the demo's data")
@click.option("--host", default="127.0.0.1", show_default=True, help="with --serve")
@click.option("--port", default=8000, show_default=True, type=int, help="with --serve (0: any free)")
def demo(synthetic: int, chunk_size: int, serve: bool, host: str, port: int) -> None:
    """The whole pipeline on embedded defaults, no services needed."""
    from api.demo import run_demo

    sys.exit(run_demo(synthetic=synthetic, chunk_size=chunk_size, serve=serve, host=host,
                      port=port))


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--server", required=True, help="gateway base URL, e.g. https://gateway.example")
@click.option("--token", required=True, envvar="RELAYPACS_TOKEN", help="API token (or RELAYPACS_TOKEN)")
@click.option("--jobs", default=4, show_default=True, type=click.IntRange(1, 32), help="parallel files")
@click.option("--chunk-size", default=1024 * 1024, show_default=True, type=click.IntRange(1024))
@click.option("--label", help="batch label shown to the hospital")
@click.option("--state", "state_file", type=click.Path(dir_okay=False, path_type=Path),
              help="resume file (default: under ~/.local/state/relaypacs)")
@click.option("--wait", default=600, show_default=True, type=int,
              help="seconds to follow the batch after upload (0: do not wait)")
@click.option("--template", help="name of an upload template to apply to the batch")
@click.option("--override", "override_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="per-patient values: CSV (PatientID + keyword columns) or JSON")
def upload(folder: Path, server: str, token: str, jobs: int, chunk_size: int, label: str | None,
           state_file: Path | None, wait: int, template: str | None,
           override_file: Path | None) -> None:
    """Upload a clinic folder with progress and resume; exit 0 only when all was delivered."""
    from api.upload_view import run_upload

    sys.exit(run_upload(folder, server, token, jobs=jobs, chunk_size=chunk_size, label=label,
                        state_file=state_file, wait=wait, template=template,
                        override_file=override_file))


from api.storage_cli import storage  # noqa: E402 - the storage group lives in its own module

main.add_command(storage)


@main.command()
@click.option("--facility", required=True, help="facility name or id, or 'total' for every facility")
@click.option("--horizon", default=28, show_default=True, type=click.IntRange(7, 366), help="days")
@click.option("--metric", default="uploads", show_default=True, type=click.Choice(["uploads", "bytes"]))
def forecast(facility: str, horizon: int, metric: str) -> None:
    """Forecast one facility's daily volume now and store it (the weekly job does them all)."""
    import json

    from pipeline import forecast_store

    with _session() as session:
        facility_id = None
        if facility != "total":
            found = forecast_store.facility_by_name_or_id(session, facility)
            if found is None:
                raise click.ClickException(f"no facility {facility!r}")
            facility_id = found.id
        row = forecast_store.run_forecast(session, facility_id, metric, horizon=horizon)
        session.commit()
        click.echo(json.dumps(forecast_store.as_dict(row), indent=2))


if __name__ == "__main__":
    main()
