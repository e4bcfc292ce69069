"""Canary tasks that prove each queue's pool consumes work, not only that its process is up:
beat sends one canary per queue and the pool that serves the queue stamps it.

Task names are stable (``area.verb_noun``): renaming a module must not orphan queued work.
"""

from __future__ import annotations

import socket

from config.settings import QUEUES
from pipeline.ops import liveness
from workers import runtime
from workers.app import app


@app.task(name="health.send_canaries")
def send_canaries() -> None:
    with runtime.session_scope() as session:
        liveness.record_sent(session, QUEUES)
    for queue in QUEUES:
        # Data decides the queue here: one canary per queue, whichever pool serves it.
        stamp_canary.apply_async(args=(queue,), queue=queue, expires=300)


@app.task(name="health.stamp_canary")
def stamp_canary(queue: str) -> None:
    with runtime.session_scope() as session:
        liveness.record_consumed(session, queue, socket.gethostname())
