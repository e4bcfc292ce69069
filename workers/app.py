"""The Celery application and the per-process resources its tasks share."""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from beat_schedule import BEAT_SCHEDULE
from config import load_settings
from config.celery import celery_config
from workers import runtime

app = Celery("relaypacs")
app.config_from_object(celery_config(load_settings()))
# beat_schedule.py is data only; loaded here so `celery beat` and `relaypacs beat` agree.
app.conf.beat_schedule = BEAT_SCHEDULE
app.conf.imports = ["workers.tasks"]  # loaded by workers; the API imports lazily


@worker_process_init.connect
def _fresh_connections_after_fork(**_: object) -> None:
    # A forked child must not share the parent's pooled database connections.
    runtime.reset()
