"""What one API request costs in round trips: SQL statements, transaction statements (BEGIN,
COMMIT, ROLLBACK), connection pings, Redis commands and Celery task messages, counted with
SQLAlchemy's event listeners, a wrapper around redis-py's command sending and Celery's
before_task_publish signal (instrumentation only: every statement still goes to the real
PostgreSQL and Redis; a task message goes to the broker, in-memory in the tests' process,
a round trip to Redis or RabbitMQ in production). Apart from the round trips, the ORM
objects the request attached to a session (SQLAlchemy's session events)."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session


class RequestCosts:
    """Counts the round trips the measuring thread (the request's, under Flask's test client)
    sends on ``engine`` and to Redis while active. Other threads' statements (the outbox relay
    thread publishing after the commit, the telemetry flusher) are not the request's cost:
    they are counted apart, under ``background``, and left out of ``sql``/``round_trips``."""

    def __init__(self, engine: Engine, *more: Engine) -> None:
        self.engine = engine
        # The app's other engines (its autocommit engine for snapshot reads) count too.
        self.engines = [engine, *more]
        self.counts: Counter = Counter()
        self.statements: list[str] = []
        # ORM objects the measuring thread attached to a session (added, merged or loaded):
        # not round trips, but Python work per request (a cached user merged into the
        # request's session was a tenth of a small read's worker time).
        self.orm_objects = 0
        self._lock = threading.Lock()

    def _add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.counts[kind] += n

    @property
    def sql(self) -> int:
        return self.counts["sql"]

    @property
    def round_trips(self) -> int:
        return sum(n for kind, n in self.counts.items() if kind != "background")

    def reset(self) -> None:
        self.counts.clear()
        self.statements.clear()
        self.orm_objects = 0

    @contextlib.contextmanager
    def redis_only(self) -> Iterator[RequestCosts]:
        """Count the measuring thread's Redis commands only."""
        with self._redis_counted():
            yield self

    @contextlib.contextmanager
    def _redis_counted(self) -> Iterator[None]:
        import redis.connection

        original_send = redis.connection.AbstractConnection.send_packed_command
        measured_thread = threading.get_ident()

        def send(connection, command, check_health=True):  # noqa: ANN001, ANN202
            # The request's own commands, not the telemetry flusher's (a background thread).
            if threading.get_ident() == measured_thread:
                self._add("redis")
            return original_send(connection, command, check_health)

        redis.connection.AbstractConnection.send_packed_command = send
        try:
            yield
        finally:
            redis.connection.AbstractConnection.send_packed_command = original_send

    @contextlib.contextmanager
    def _tasks_counted(self) -> Iterator[None]:
        from celery.signals import before_task_publish

        measured_thread = threading.get_ident()

        def published(**_: object) -> None:
            if threading.get_ident() == measured_thread:
                self._add("task")

        before_task_publish.connect(published, weak=False)
        try:
            yield
        finally:
            before_task_publish.disconnect(published)

    @contextlib.contextmanager
    def active(self) -> Iterator[RequestCosts]:
        measured_thread = threading.get_ident()

        def on_execute(conn, cursor, statement, params, context, executemany):  # noqa: ANN001, ARG001
            if threading.get_ident() != measured_thread:
                self._add("background")
                return
            self._add("sql")
            self.statements.append(statement.split("\n")[0][:120])

        # On an AUTOCOMMIT connection psycopg2 sends no BEGIN, COMMIT or ROLLBACK at all,
        # although SQLAlchemy still reports its transaction's begin and end.
        def autocommit(conn) -> bool:  # noqa: ANN001
            if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
                return True
            # An engine made in autocommit (pipeline.db.engine.make_autocommit_engine): ask
            # the driver's connection, which knows without a round trip.
            return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))

        def on_begin(conn):  # noqa: ANN001
            if not autocommit(conn) and threading.get_ident() == measured_thread:
                self._add("begin")

        def on_commit(conn):  # noqa: ANN001
            if not autocommit(conn) and threading.get_ident() == measured_thread:
                self._add("commit")

        def on_rollback(conn):  # noqa: ANN001
            if not autocommit(conn) and threading.get_ident() == measured_thread:
                self._add("rollback")

        def counted_ping(original):  # noqa: ANN001, ANN202
            def ping(dbapi_connection):  # noqa: ANN001, ANN202
                if threading.get_ident() == measured_thread:
                    self._add("ping")
                return original(dbapi_connection)
            return ping

        def on_attach(*_: object) -> None:
            if threading.get_ident() == measured_thread:
                with self._lock:
                    self.orm_objects += 1

        orm_listeners = [("after_attach", on_attach), ("loaded_as_persistent", on_attach)]
        for name, fn in orm_listeners:
            event.listen(Session, name, fn)
        listeners = [("before_cursor_execute", on_execute), ("begin", on_begin),
                     ("commit", on_commit), ("rollback", on_rollback)]
        pings = {}
        for engine in self.engines:
            for name, fn in listeners:
                event.listen(engine, name, fn)
            if engine.dialect not in pings:
                pings[engine.dialect] = engine.dialect.do_ping
                engine.dialect.do_ping = counted_ping(engine.dialect.do_ping)
        try:
            with self._redis_counted(), self._tasks_counted():
                yield self
        finally:
            for engine in self.engines:
                for name, fn in listeners:
                    event.remove(engine, name, fn)
            for dialect, original in pings.items():
                dialect.do_ping = original
            for name, fn in orm_listeners:
                event.remove(Session, name, fn)
