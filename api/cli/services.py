"""The long-running processes: ``relaypacs api``, ``worker``, ``beat``, ``events``, ``events-relay``
and ``scp``.

Each command starts one service in the foreground (docker-compose runs one per container);
they are top-level commands rather than a group, listed in ``COMMANDS`` for ``api.cli``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from config import load_settings
from config.settings import QUEUES


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn processes")
@click.option("--threads", default=8, show_default=True, type=int, help="threads per process")
def api(host: str, port: int, workers: int, threads: int) -> None:
    """Serve the intake API (gunicorn, threaded workers: slow uploads do not block others;
    gthread with a lighter request hand-over, api/http/server.py)."""
    gunicorn = shutil.which("gunicorn") or str(Path(sys.executable).with_name("gunicorn"))
    if not Path(gunicorn).exists():
        from api import create_app

        click.echo("gunicorn not installed; serving with the development server", err=True)
        create_app().run(host=host, port=port, threaded=True)
        return
    os.execv(gunicorn, [  # noqa: S606 - replace this process with gunicorn
        gunicorn, "--bind", f"{host}:{port}", "--workers", str(workers),
        "--worker-class", "api.http.server.RequestThreadWorker", "--threads", str(threads),
        "--timeout", "300",
        "--graceful-timeout", "30", "--keep-alive", "5",
        # Above the app's own JSON 414/431 bounds (api/http/observability.py), so a client normally
        # gets those; these only stop what would never reach the app.
        "--limit-request-line", "8190", "--limit-request-fields", "100",
        "--limit-request-field_size", "16384",
        # gunicorn believes X-Forwarded-Proto from 127.0.0.1 by default; RELAYPACS_TRUSTED_PROXIES
        # (werkzeug's ProxyFix in create_app) is the one place that decides what to believe.
        "--forwarded-allow-ips", "", "api:create_app()",
    ])


# Every queue by default: a small site's one worker then runs every job beat sends (reports,
# exports, storage, analytics, teaching, each queue's canary), not only the upload pipeline.
# Larger sites run a pool per queue (-Q pacs), as docker-compose does.
@click.command(context_settings={"ignore_unknown_options": True})
@click.option("-Q", "--queues", default=",".join(QUEUES), show_default=True)
@click.option("-c", "--concurrency", default=None, type=int)
@click.option("--pool", default=None, help="prefork (CPU) or threads (I/O-bound forwarding)")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def worker(queues: str, concurrency: int | None, pool: str | None, extra: tuple[str, ...]) -> None:
    """Run a worker pool for the given queues (default: every queue)."""
    from workers.app import app

    argv = ["worker", "-Q", queues, "--loglevel", "INFO", "-n", f"{queues.replace(',', '-')}@%h"]
    if concurrency:
        argv += ["-c", str(concurrency)]
    if pool:
        argv += ["--pool", pool]
    app.worker_main(argv + list(extra))


@click.command()
def beat() -> None:
    """Run the periodic scheduler (beat_schedule.py)."""
    from workers.app import app

    settings = load_settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--loglevel", "INFO", "-s", str(settings.var_dir / "celerybeat-schedule")])


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8001, show_default=True, type=int)
def events(host: str, port: int) -> None:
    """Serve GET /api/v1/events (SSE from Redis; asyncio, thousands of open streams)."""
    from api.events.stream import serve

    serve(load_settings(), host, port)


@click.command("events-relay")
@click.option("--once", is_flag=True, help="publish what is pending, then exit")
def events_relay(once: bool) -> None:
    """Publish the event outbox to the Redis stream (and RabbitMQ when configured).

    Writers relay their own events right after their commits; this loop sweeps every
    RELAYPACS_EVENTS_RELAY_POLL_SECONDS for what a process that died after its commit left."""
    from pipeline.db.engine import make_engine
    from pipeline.ops import outbox
    from workers import chains

    settings = load_settings()
    relay = outbox.Relay(make_engine(settings.database_url), outbox.sinks_for(
        settings.redis_url, settings.events_amqp_url, settings.events_amqp_exchange, chains.after_events))
    if once:
        click.echo(f"{relay.drain()} events published")
        return
    outbox.run_forever(relay, poll_seconds=settings.events_relay_poll_seconds)


@click.command()
@click.option("--aet", required=True, help="this SCP's AE title (modalities call it)")
@click.option("--port", required=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--facility", help="serve only this facility's callers (default: every facility "
              "on the allow-list, `relaypacs scp-callers`)")
def scp(aet: str, port: int, host: str, facility: str | None) -> None:
    """Run a DICOM Storage SCP: pushed instances take the same chain as uploads.

    Only callers on the allow-list (`relaypacs scp-callers add`) are accepted; each one's
    instances go to the facility its entry names."""
    from api.intake.scp import serve

    serve(load_settings(), ae_title=aet, port=port, host=host, facility=facility)


COMMANDS = (api, worker, beat, events, events_relay, scp)
