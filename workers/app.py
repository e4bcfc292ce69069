"""The Celery application and the per-process resources its tasks share."""

from __future__ import annotations

import time

from celery import Celery
from celery.signals import before_task_publish, setup_logging, task_postrun, task_prerun, worker_process_init

from beat_schedule import BEAT_SCHEDULE
from config import Settings, load_settings
from config.celery import celery_config
from config.logging import configure_logging, request_id
from workers import runtime

app = Celery("relaypacs")
app.config_from_object(celery_config(load_settings()))
# beat_schedule.py is data only; loaded here so `celery beat` and `relaypacs beat` agree.
app.conf.beat_schedule = BEAT_SCHEDULE
# One module per queue, plus the canaries every queue answers. Loaded by workers (and by
# load_tasks for an in-process worker); callers enqueue by task name through workers.chains.
TASK_MODULES = (
    "workers.intake",
    "workers.dicom",
    "workers.pacs",
    "workers.storage",
    "workers.analytics",
    "workers.reports",
    "workers.exports",
    "workers.liveness",
    "workers.consults",
    "workers.event_outbox",
    "workers.accounts",
    "workers.teaching",
)
app.conf.imports = list(TASK_MODULES)


def load_tasks() -> None:
    """Register every task with the app, for a worker started inside another process (the demo)."""
    app.loader.import_default_modules()


def use_settings(settings: Settings) -> None:
    """Run the app and its tasks in this process on ``settings`` rather than the environment's
    (the demo's in-process worker: its own database, object store and in-memory broker)."""
    runtime.configure(settings)
    app.conf.update(celery_config(settings))


@worker_process_init.connect
def _fresh_connections_after_fork(**_: object) -> None:
    # A forked child must not share the parent's pooled database connections.
    runtime.reset()
    runtime.warm_up()
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # see pyproject.toml: processes, not BLAS threads


@setup_logging.connect
def _json_logs(**_: object) -> None:
    configure_logging()


@before_task_publish.connect
def _carry_request_id(headers: dict | None = None, **_: object) -> None:
    # The request (or task) that caused this task: one id follows the work across processes.
    current = request_id.get()
    if headers is not None and current and "relaypacs_request_id" not in headers:
        headers["relaypacs_request_id"] = current


@task_prerun.connect
def _adopt_request_id(task=None, **_: object) -> None:  # noqa: ANN001
    incoming = getattr(task.request, "relaypacs_request_id", None) if task else None
    task.request.relaypacs_request_token = request_id.set(incoming or task.request.id)
    task.request.relaypacs_started = time.perf_counter()


@task_postrun.connect
def _drop_request_id(task=None, state: str | None = None, **_: object) -> None:  # noqa: ANN001
    if task is None:
        return
    started = getattr(task.request, "relaypacs_started", None)
    if started is not None:
        runtime.telemetry().observe_task(task.name, time.perf_counter() - started,
                                         (state or "UNKNOWN").lower())
    token = getattr(task.request, "relaypacs_request_token", None)
    if token is not None:
        request_id.reset(token)
