"""The heartbeat of this process's forwarding runs.

A forwarding run registers its claim (``pipeline.delivery.senders``) and holds it here while it
works; a daemon thread of the process refreshes the heartbeat of every claim held, a sixth of
the stale age apart, whether the run is reading storage, writing the ledger or waiting for a
slow PACS. When the process dies (``kill -9``, OOM, a lost host), the heartbeats stop with it,
and the re-drive takes the study over once they are older than the stale age.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from pipeline.delivery import senders
from workers import runtime

log = logging.getLogger(__name__)


class Heartbeats:
    """The claims this process holds, and the thread that beats for them."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.pid = os.getpid()
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sender-heartbeats", daemon=True)
        self._thread.start()

    def hold(self, claim: str) -> None:
        with self._lock:
            self._held[claim] += 1

    def drop(self, claim: str) -> None:
        with self._lock:
            self._held[claim] -= 1
            if self._held[claim] <= 0:
                del self._held[claim]

    def held(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def _run(self) -> None:
        while not self._wake.wait(self.interval):
            claims = self.held()
            if not claims:
                continue
            try:
                with runtime.session_scope() as session:
                    senders.beat(session, claims)
            except Exception:  # noqa: BLE001 - the database away for a moment: beat again next time
                log.warning("sender heartbeat failed", exc_info=True)


_heartbeats: Heartbeats | None = None
_lock = threading.Lock()


def stale_after() -> timedelta:
    return timedelta(seconds=runtime.settings().claim_stale_seconds)


def heartbeats() -> Heartbeats:
    """This process's heartbeats, started on first use (after a fork, in the child)."""
    global _heartbeats
    with _lock:
        if _heartbeats is None or _heartbeats.pid != os.getpid():
            _heartbeats = Heartbeats(senders.heartbeat_interval(stale_after()))
        return _heartbeats


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def sending(claim: str, study_id: int, destination_id: int) -> Iterator[None]:
    """Registered and beating while the block runs; released when it ends, whatever the end.

    The release comes before the task publishes its retry: the retry carries the same claim
    and registers it again, which a late release must not undo."""
    with runtime.session_scope() as session:
        senders.register(session, claim, study_id, destination_id, worker_name())
    beating = heartbeats()
    beating.hold(claim)
    try:
        yield
    finally:
        beating.drop(claim)
        try:
            with runtime.session_scope() as session:
                senders.release(session, claim)
        except Exception:  # noqa: BLE001 - left behind, the row goes stale and is re-driven
            log.warning("could not release sender claim", exc_info=True)
