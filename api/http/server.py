"""The gunicorn worker class the API is served by (``relaypacs api``, docker-compose):
gunicorn's gthread worker, its poller and keep-alive handling unchanged, with a lighter
hand-over between the poller thread and the request threads.

Why: gthread hands every request to a ``concurrent.futures.ThreadPoolExecutor`` and gets it
back through the Future's done-callback; each request thus builds a Future, its Condition
and a callback list, and under load those were ~10 % of a worker's GIL time for an
authenticated read (py-spy ``--gil``). Here a fixed set of request threads takes connections
from one ``queue.SimpleQueue`` (C code) and hands each back to the poller thread with the
result gthread's ``finish_request`` reads, through gthread's own wake-up pipe. Everything
else (keep-alive, timeouts, the data wait that keeps a slow client off a request thread,
graceful stop) is gthread's.

Depends on gthread's ``enqueue_req``/``handle``/``finish_request``/``method_queue``
(gunicorn is pinned in requirements/runtime.txt; tests/unit/api/http/test_server.py serves
requests through it).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from gunicorn.workers.gthread import ThreadWorker


class _Finished:
    """A finished request as ``ThreadWorker.finish_request`` reads it (its Future's API)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def cancelled(self) -> bool:
        return False

    def result(self) -> object:
        return self.value


class RequestThreads:
    """What gthread needs of its pool (``submit``, ``shutdown``): a fixed set of daemon
    threads taking jobs from one queue, with no Future per job."""

    def __init__(self, count: int) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"request-{n}", daemon=True)
                         for n in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        self._jobs.put((fn, args))

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args = job
            fn(*args)

    def shutdown(self, wait: bool = True) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


class RequestThreadWorker(ThreadWorker):
    """``gunicorn -k api.http.server.RequestThreadWorker --threads N``: gthread with
    :class:`RequestThreads` for its pool."""

    def get_thread_pool(self) -> RequestThreads:  # type: ignore[override]
        return RequestThreads(self.cfg.threads)

    def enqueue_req(self, conn) -> None:  # noqa: ANN001 - gthread's TConn
        self.tpool.submit(self._serve, conn)

    def _serve(self, conn) -> None:  # noqa: ANN001
        try:
            result = self.handle(conn)  # answers (or logs) whatever a request raises itself
        except Exception:  # noqa: BLE001 - as a failed Future: gthread closes the connection
            self.log.exception("request thread failed")
            result = False
        self.method_queue.defer(self.finish_request, conn, _Finished(result))
