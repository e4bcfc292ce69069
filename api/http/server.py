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

A kept-alive connection whose next request follows at once stays on its request thread:
after answering, the thread waits up to ``LINGER_SECONDS`` (one ``poll`` on that one socket)
for the next request and serves it itself, skipping the round trip through the poller
thread (the wake-up pipe, ``finish_request``, registering the socket with the poller, its
readiness, unregistering, queueing the connection again): under a steady stream of small
reads that round trip was a quarter of a worker's GIL time. It waits only while no other
connection is queued for a thread and another request thread is idle to take one, and not
when the worker is stopping; a quiet connection goes back to the poller after the linger
as before, so a slow or idle client holds a thread for milliseconds at most (its body, as
before, is read on the thread).

Depends on gthread's ``enqueue_req``/``handle``/``finish_request``/``method_queue``
(gunicorn is pinned in requirements/runtime.txt; tests/unit/api/http/test_server.py serves
requests through it).
"""

from __future__ import annotations

import queue
import select
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
        # Threads waiting for a job, read without a lock (a stale count only costs or skips
        # one linger: see RequestThreadWorker.next_request_follows).
        self.idle = 0
        self._idle_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name=f"request-{n}", daemon=True)
                         for n in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        self._jobs.put((fn, args))

    def _work(self) -> None:
        while True:
            with self._idle_lock:
                self.idle += 1
            job = self._jobs.get()
            with self._idle_lock:
                self.idle -= 1
            if job is None:
                return
            fn, args = job
            fn(*args)

    def queued(self) -> bool:
        return not self._jobs.empty()

    def shutdown(self, wait: bool = True) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


class RequestThreadWorker(ThreadWorker):
    """``gunicorn -k api.http.server.RequestThreadWorker --threads N``: gthread with
    :class:`RequestThreads` for its pool, and a kept-alive connection's next request served
    on the same thread when it follows within ``LINGER_SECONDS``."""

    # Long enough for a client that sends its next request as soon as it has read the
    # answer (a proxy's pooled upstream connection, a polling client), short enough that a
    # quiet connection costs its thread almost nothing.
    LINGER_SECONDS = 0.002

    def get_thread_pool(self) -> RequestThreads:  # type: ignore[override]
        return RequestThreads(self.cfg.threads)

    def enqueue_req(self, conn) -> None:  # noqa: ANN001 - gthread's TConn
        self.tpool.submit(self._serve, conn)

    def _serve(self, conn) -> None:  # noqa: ANN001
        while True:
            try:
                result = self.handle(conn)  # answers (or logs) whatever a request raises itself
            except Exception:  # noqa: BLE001 - as a failed Future: gthread closes the connection
                self.log.exception("request thread failed")
                result = False
            # handle() says True only for a kept-alive HTTP/1 connection whose body is read.
            if result is not True or not self.next_request_follows(conn):
                break
        self.method_queue.defer(self.finish_request, conn, _Finished(result))

    def next_request_follows(self, conn) -> bool:  # noqa: ANN001
        """Whether this thread should serve ``conn``'s next request itself: it is already
        buffered, or it arrives within the linger while no one else needs the thread."""
        if not self.alive:  # stopping (or max-requests): gthread's hand-back closes it
            return False
        if conn.parser.unreader.buf.getvalue():  # read ahead with the last body
            return True
        if self.tpool.queued() or self.tpool.idle == 0:
            return False
        poller = select.poll()
        poller.register(conn.sock, select.POLLIN)
        try:
            return bool(poller.poll(self.LINGER_SECONDS * 1000))
        except OSError:
            return False
