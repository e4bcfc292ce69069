"""The event outbox: events written in the state change's transaction, and the relay that
publishes them.

Why: an event published after the commit is lost when the process dies between the two.
Here the event is a row (``event_outbox``) added to the same session as the change, so it
commits or rolls back with it; a relay publishes committed rows and marks them sent. A
crash between commit and publish only delays an event; a crash between publish and mark
publishes it again with the same id, so consumers drop duplicates by id.

Ids and order. A sequence given out at INSERT is not a safe paging key: a transaction that
took id 7 can commit after one that took 8, and a consumer that already read 8 would
never see 7. So the order is given out by the relay, to committed rows only, under one
lock (a PostgreSQL advisory lock held across assign, publish and mark; a process lock on
SQLite), and each assignment commits before the next begins: positions become visible in
increasing order, and a late commit simply gets a later position. The position is also the
public id, written like a Redis stream id (``<ms>-<seq>``: milliseconds when it was given
out, and a counter), so the Redis stream keeps the same ids, an SSE client's old
``Last-Event-ID`` from before the outbox still compares correctly, and ``after=ID`` pages
through PostgreSQL in the same order.

Sinks: the Redis stream and live channel (what ``relaypacs events`` serves as SSE), a
RabbitMQ topic exchange when ``RELAYPACS_EVENTS_AMQP_URL`` is set (routing key = event type,
``message_id`` = event id), and the in-process bus when there is no Redis (demo, unit tests).
Last, every relay hands each batch to its process's follow-up (:class:`FollowUp`): the work a
committed event starts (an upload's parse, enqueued by workers.chains), so that work is
started from the committed row, like the event, by whichever relay sends it.

Who relays: the process that wrote the rows wakes its own relay thread right after the
commit (``RelayThread.kick``), so the latency after a quiet spell is a few milliseconds
(under sustained writes, up to ``GATHER_SECONDS`` more) and the request never waits for a
broker; ``relaypacs events-relay`` runs the same relay in a loop and
sweeps what a process that died after its commit left behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Protocol

from redis import exceptions as redis_exceptions
from sqlalchemy import Engine, Insert, delete, event, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from pipeline.db.engine import make_autocommit_engine
from pipeline.models import OutboxEvent, utcnow
from pipeline.ops import events

log = logging.getLogger(__name__)

SPECVERSION = "1.0"
SOURCE = "/relaypacs/gateway"
SEQ_BITS = 20  # up to ~1M events in one millisecond before the id moves to the next one
_SEQ_MASK = (1 << SEQ_BITS) - 1
_MAX_MS = (1 << (63 - SEQ_BITS)) - 1
# pg_advisory_lock key: "RPOUTBOX" read as a number, so it collides with no other lock.
ADVISORY_KEY = 0x52504F5554424F58 & 0x7FFFFFFFFFFFFFFF
BATCH = 500
# A process's relay runs at most once in this interval while kicks keep coming (RelayThread):
# at 400 events/s a run carried one or two events and cost the API more CPU and PostgreSQL
# time than the request that wrote them; gathered, an event waits at most this much longer.
# A run costs about the same whatever it carries (four statements, a Redis pipeline, one task
# message for the uploads it completes): 50 ms -> 200 ms cut ~0.7 ms of gunicorn and ~0.3 ms
# of PostgreSQL CPU a file at 120 files/s (README, API capacity). After a quiet spell a kick
# still runs at once.
GATHER_SECONDS = 0.2
# At least a week of events stays replayable (the issue asks a week; a day's margin).
RETENTION_DAYS = 8


def format_id(position: int) -> str:
    return f"{position >> SEQ_BITS}-{position & _SEQ_MASK}"


def parse_id(value: str) -> int | None:
    """``<ms>-<seq>`` (a Redis stream id) as a position; None when it is not one."""
    ms, sep, seq = value.strip().partition("-")
    if not (ms.isascii() and ms.isdigit()) or (sep and not (seq.isascii() and seq.isdigit())):
        return None
    if len(ms) > 15 or len(seq) > 7:
        return None
    ms_value, seq_value = int(ms), int(seq or 0)
    if ms_value > _MAX_MS or seq_value > _SEQ_MASK:
        return None
    return (ms_value << SEQ_BITS) | seq_value


_WRITTEN = "relaypacs.outbox_written"


def record(session: Session, batch: events.Event | Iterable[events.Event]) -> None:
    """Add events to the caller's transaction: they exist exactly when the change commits."""
    values = rows(batch)
    if not values:
        return
    session.info[_WRITTEN] = True
    # One Core INSERT in the caller's transaction, sent now (after whatever the session has
    # flushed before): the rows are never read back as objects, so the ORM's unit of work
    # (identity map, flush planning, primary keys fetched back) was pure cost. The statement
    # is built once (the module's); a rollback of the caller's transaction takes them back.
    session.execute(_INSERT, values if len(values) > 1 else values[0])


_INSERT = insert(OutboxEvent.__table__)


def record_statement(session: Session, batch: events.Event | Iterable[events.Event]) -> Insert | None:
    """:func:`record`'s rows as an INSERT construct (None for no events) for a caller that
    sends it inside a statement of its own (a data-modifying CTE on PostgreSQL,
    pipeline/intake/uploads.py); the caller must execute it in ``session``'s transaction
    before it commits."""
    values = rows(batch)
    if not values:
        return None
    session.info[_WRITTEN] = True
    return insert(OutboxEvent.__table__).values(values)


def rows(batch: events.Event | Iterable[events.Event]) -> list[dict]:
    """The outbox rows (column values) of events, for a caller that INSERTs them in its own
    statement; one that commits outside a session wakes the relay itself afterwards."""
    items = [batch] if isinstance(batch, events.Event) else list(batch)
    return [{"type": e.type, "facility_id": e.facility_id, "data": dict(e.data), "occurred_at": e.at}
            for e in items]


def envelope(row: OutboxEvent) -> dict:
    """The CloudEvents 1.0 structured form (JSON) of a positioned row.

    ``facility`` is an extension attribute (who may see it). The previous flat fields
    (``facility_id``, ``at`` and the data's ids at the top level) stay beside it so the
    consumers written before the envelope (the live dashboard, SSE clients) keep working.
    """
    if row.position is None:
        raise ValueError("an outbox row has no id before the relay gives it a position")
    at = row.occurred_at.isoformat()
    data = dict(row.data or {})
    return {"specversion": SPECVERSION, "id": format_id(row.position), "source": SOURCE,
            "type": row.type, "time": at, "facility": row.facility_id,
            "datacontenttype": "application/json", "data": data,
            "facility_id": row.facility_id, "at": at, **data}


@dataclass(frozen=True)
class Outgoing:
    id: str
    type: str
    facility_id: int
    payload: str  # the envelope as compact JSON
    # The event's data (ids and counts), for a sink that acts on it (FollowUp).
    data: dict = field(default_factory=dict, compare=False)


class Sink(Protocol):
    def floor(self) -> int:
        """The highest position this sink already holds (0 when none): new positions go above."""
        ...

    def send(self, batch: Sequence[Outgoing]) -> None:
        """Hand every event over (idempotent per id); raise if any was not accepted."""
        ...


# XADD with the event's own id, then PUBLISH "<id> <json>". An id the stream already holds
# (a re-publish after a crash) is neither added nor announced again.
_REDIS_LUA = """
local ok = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ARGV[2], 'e', ARGV[3])
if type(ok) == 'table' and ok['err'] then
  if string.find(ok['err'], 'equal or smaller', 1, true) then return 0 end
  return redis.error_reply(ok['err'])
end
redis.call('PUBLISH', KEYS[2], ARGV[2] .. ' ' .. ARGV[3])
return 1
"""


class RedisSink:
    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._script = self.client.register_script(_REDIS_LUA)  # its sha1, computed locally

    def floor(self) -> int:
        newest = self.client.xrevrange(events.STREAM_KEY, count=1)
        if not newest:
            return 0
        raw = newest[0][0]
        return parse_id(raw.decode() if isinstance(raw, bytes) else str(raw)) or 0

    def send(self, batch: Sequence[Outgoing]) -> None:
        # EVALSHA in one pipeline; redis-py's Script in a pipeline asks SCRIPT EXISTS first on
        # every execute (a round trip a run): here only a Redis that lost the script (restarted)
        # answers NOSCRIPT, and the batch goes again after loading it (XADD drops repeated ids).
        try:
            self._send(batch)
        except redis_exceptions.NoScriptError:
            self._script.sha = self.client.script_load(_REDIS_LUA)
            self._send(batch)

    def _send(self, batch: Sequence[Outgoing]) -> None:
        pipe = self.client.pipeline(transaction=False)
        keys = (events.STREAM_KEY, events.CHANNEL)
        for item in batch:
            pipe.evalsha(self._script.sha, 2, *keys, events.STREAM_MAXLEN, item.id, item.payload)
        pipe.execute()


class InProcessSink:
    """The embedded demo's and unit tests' bus (no Redis)."""

    def __init__(self, bus: events.InProcessEventBus) -> None:
        self.bus = bus

    def floor(self) -> int:
        return parse_id(self.bus.last_id()) or 0

    def send(self, batch: Sequence[Outgoing]) -> None:
        for item in batch:
            self.bus.append(item.id, item.payload)


class AmqpSink:
    """A RabbitMQ topic exchange (kombu): routing key = event type, so a consumer binds
    ``upload.*`` or ``#``; persistent messages, publisher confirms, ``message_id`` = id."""

    def __init__(self, url: str, exchange: str) -> None:
        from kombu import Connection, Exchange

        self.exchange = Exchange(exchange, type="topic", durable=True)
        self.connection = Connection(url, connect_timeout=5, transport_options={"confirm_publish": True})

    def floor(self) -> int:
        return 0  # a broker keeps no order of its own to stay above

    def send(self, batch: Sequence[Outgoing]) -> None:
        from kombu import Producer

        publish = self.connection.ensure(self, self._publish, max_retries=3)
        producer = Producer(self.connection.default_channel, exchange=self.exchange)
        for item in batch:
            publish(producer, item)

    def _publish(self, producer, item: Outgoing) -> None:  # noqa: ANN001
        producer.publish(item.payload, routing_key=item.type, exchange=self.exchange,
                         declare=[self.exchange], message_id=item.id, delivery_mode=2,
                         content_type="application/cloudevents+json", content_encoding="utf-8",
                         headers={"ce_id": item.id, "ce_type": item.type, "ce_facility": item.facility_id})

    def close(self) -> None:
        self.connection.release()


class FollowUp:
    """The work committed events start, handed over after the event sinks (last): a request
    that commits its change and its event thereby commits the work's start too. A process
    that dies after its commit leaves both to the next relay (where a task enqueued by the
    request after its commit was lost with it), and a failed hand-over leaves the batch
    unmarked, so it is sent again (the follow-up is idempotent, like the tasks it starts)."""

    def __init__(self, start: Callable[[Sequence[Outgoing]], None]) -> None:
        self.start = start

    def floor(self) -> int:
        return 0  # it keeps no ids

    def send(self, batch: Sequence[Outgoing]) -> None:
        self.start(batch)


_LOCAL_LOCKS: dict[str, threading.Lock] = {}
_LOCAL_LOCKS_GUARD = threading.Lock()


class Relay:
    """Gives positions to committed rows, publishes them to every sink, marks them sent."""

    def __init__(self, engine: Engine, sinks: Sequence[Sink], *, batch: int = BATCH,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.sinks = list(sinks)
        self.batch = batch
        self.clock = clock
        self._pg_engine: Engine | None = None

    @contextlib.contextmanager
    def _lock(self) -> Iterator[bool]:
        """One relay at a time on SQLite (the demo's one process): a process lock. PostgreSQL
        takes an advisory lock instead (:meth:`_run_once_pg`)."""
        with _LOCAL_LOCKS_GUARD:
            lock = _LOCAL_LOCKS.setdefault(str(self.engine.url), threading.Lock())
        got = lock.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                lock.release()

    def run_once(self) -> int | None:
        """Publish up to one batch; the number published, or None when another relay holds
        the lock (it will see these rows too, or the caller tries again)."""
        if self.engine.dialect.name == "postgresql":
            return self._run_once_pg()
        with self._lock() as got:
            if not got:
                return None
            with Session(self.engine, expire_on_commit=False) as session:
                self._assign(session)
                # Core rows (the same attribute names envelope() reads): never changed as objects.
                table = OutboxEvent.__table__
                rows = session.execute(
                    select(table).where(table.c.published_at.is_(None), table.c.position.is_not(None))
                    .order_by(table.c.position).limit(self.batch)).all()
                if not rows:
                    return 0
                self._send(rows)
                session.execute(update(OutboxEvent).where(OutboxEvent.id.in_([r.id for r in rows]))
                                .values(published_at=utcnow()))
                session.commit()
                return len(rows)

    def _send(self, rows: Sequence) -> None:  # noqa: ANN001 - rows with envelope()'s attributes
        batch = [Outgoing(format_id(r.position), r.type, r.facility_id,
                          json.dumps(envelope(r), separators=(",", ":")), r.data or {}) for r in rows]
        for sink in self.sinks:
            sink.send(batch)

    def _run_once_pg(self) -> int | None:
        """:meth:`run_once` on PostgreSQL in four statements on one autocommit connection of
        the relay's own (each statement its own transaction): take the lock; give positions
        and read the batch to publish in one statement (committed, so visible in increasing
        order, before anything is published); publish; mark the batch sent; let the lock go.
        Was a connection for the lock and a session beside it: eleven round trips a run."""
        with self._autocommit().connect() as conn:
            if not conn.exec_driver_sql(_TRY_LOCK_PG, {"k": ADVISORY_KEY}).scalar():
                return None
            try:
                floor = max([0, *(sink.floor() for sink in self.sinks)])
                base = max(int(self.clock() * 1000) << SEQ_BITS, floor + 1)
                rows = conn.exec_driver_sql(_ASSIGN_AND_READ_PG, {"base": base, "batch": self.batch}).all()
                if not rows:
                    return 0
                self._send([_PgRow(*row) for row in rows])
                conn.exec_driver_sql(_MARK_SENT_PG, {"at": utcnow(), "ids": [row[0] for row in rows]})
                return len(rows)
            finally:
                conn.exec_driver_sql(_UNLOCK_PG, {"k": ADVISORY_KEY})

    def _autocommit(self) -> Engine:
        # One connection at a time (one relay thread a process), kept in autocommit: no
        # BEGIN/COMMIT round trips, and no SET when it goes back to a pool of its own.
        if self._pg_engine is None:
            self._pg_engine = make_autocommit_engine(self.engine, pool_size=1, max_overflow=2)
        return self._pg_engine

    def _assign(self, session: Session) -> None:
        pending = session.scalars(select(OutboxEvent).where(OutboxEvent.position.is_(None))
                                  .order_by(OutboxEvent.id).limit(self.batch)).all()
        if not pending:
            return
        floor = max([session.scalar(select(func.max(OutboxEvent.position))) or 0,
                     *(sink.floor() for sink in self.sinks)])
        position = max(int(self.clock() * 1000) << SEQ_BITS, floor + 1)
        for row in pending:
            row.position = position
            position += 1
        session.commit()  # visible now, in increasing order, before any later assignment

    def drain(self, max_batches: int = 1000) -> int:
        """Relay until nothing is left (or another relay has the lock); the count published."""
        total = 0
        for _ in range(max_batches):
            sent = self.run_once()
            if not sent:
                break
            total += sent
        return total


class _PgRow:
    """A row of :data:`_ASSIGN_AND_READ_PG` with the attributes envelope() reads."""

    __slots__ = ("id", "position", "type", "facility_id", "data", "occurred_at")

    def __init__(self, id: int, position: int, type: str, facility_id: int, data: dict,  # noqa: A002
                 occurred_at: datetime) -> None:
        self.id, self.position, self.type, self.facility_id = id, position, type, facility_id
        self.data = data
        self.occurred_at = occurred_at.astimezone(UTC)  # as UTCDateTime reads it


_TRY_LOCK_PG = "SELECT pg_try_advisory_lock(%(k)s)"
_UNLOCK_PG = "SELECT pg_advisory_unlock(%(k)s)"
# Every pending row (up to a batch, in id order) gets the next position above the highest
# one given (the unique index on position answers max() at once) and above :base (the
# clock, the sinks' floor); the rows to publish are those, after any positioned earlier and
# not yet sent (a failed publish), in position order. The UNION's second part reads the
# statement's snapshot, so it never sees the rows the first part positions.
_ASSIGN_AND_READ_PG = """
WITH pending AS (
    SELECT id, row_number() OVER (ORDER BY id) - 1 AS n
    FROM event_outbox WHERE position IS NULL ORDER BY id LIMIT %(batch)s),
start AS (SELECT GREATEST(%(base)s, COALESCE(max(position), 0) + 1) AS at FROM event_outbox),
assigned AS (
    UPDATE event_outbox SET position = start.at + pending.n FROM pending, start
    WHERE event_outbox.id = pending.id
    RETURNING event_outbox.id, event_outbox.position, event_outbox.type,
              event_outbox.facility_id, event_outbox.data, event_outbox.occurred_at)
SELECT * FROM (
    SELECT id, position, type, facility_id, data, occurred_at FROM event_outbox
    WHERE published_at IS NULL AND position IS NOT NULL
    UNION ALL
    SELECT * FROM assigned) AS ready
ORDER BY position LIMIT %(batch)s
"""
_MARK_SENT_PG = "UPDATE event_outbox SET published_at = %(at)s WHERE id = ANY(%(ids)s)"


class RelayThread:
    """A process's own relay, woken right after the commits that wrote events. The caller
    never waits for it and it never raises into the caller. ``inline`` (the in-process bus
    of the demo and unit tests) relays in the committing thread instead, so a reader in the
    same process sees the event as soon as the commit returns."""

    def __init__(self, relay: Relay, *, busy_retry_seconds: float = 0.02, inline: bool = False,
                 gather_seconds: float = GATHER_SECONDS, failure_retry_seconds: float = 0.5,
                 max_failure_retry_seconds: float = 5.0) -> None:
        self.relay = relay
        self.inline = inline
        self.busy_retry = busy_retry_seconds
        self.gather = gather_seconds
        self.failure_retry = failure_retry_seconds
        self.max_failure_retry = max_failure_retry_seconds
        self._wake = threading.Event()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def kick(self) -> None:
        if self.inline:
            try:
                self.relay.drain()
            except Exception as exc:  # noqa: BLE001 - the rows stay for the next kick
                log.warning("event relay failed (%s); the events stay in the outbox", type(exc).__name__)
            return
        if self._thread is None or not self._thread.is_alive():
            with self._guard:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="event-relay", daemon=True)
                    self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        failures = 0
        last_run = 0.0
        while True:
            self._wake.wait()
            # Under load, wait out the rest of the gathering interval since the last run, so
            # one run carries the events of many commits (a run costs about ten statements
            # whatever it carries); a kick after a quiet spell runs at once.
            pause = last_run + self.gather - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            self._wake.clear()
            last_run = time.monotonic()
            while True:
                try:
                    sent = self.relay.run_once()
                    failures = 0
                except Exception as exc:  # noqa: BLE001 - the rows stay; this loop sends them when it can
                    # Tried again until a run goes through, backing off to every few seconds: a
                    # committed row may be the only start of an upload's chain (FollowUp), and
                    # after a database or broker outage no further commit may come to kick.
                    failures += 1
                    log.warning("event relay failed (%s); the events stay in the outbox", type(exc).__name__)
                    time.sleep(min(self.failure_retry * failures, self.max_failure_retry))
                    continue
                if sent is None:  # another relay is at work and may have read before our commit
                    time.sleep(self.busy_retry)
                    continue
                if sent < self.relay.batch:
                    break


def relay_after_commit(factory: sessionmaker, kick: Callable[[], None]) -> None:
    """Wake ``kick`` after every commit of a session from ``factory`` that wrote events."""

    def committed(session: Session) -> None:
        if session.info.pop(_WRITTEN, False):
            kick()

    def rolled_back(session: Session) -> None:
        session.info.pop(_WRITTEN, None)

    event.listen(factory, "after_commit", committed)
    event.listen(factory, "after_rollback", rolled_back)


@lru_cache(maxsize=8)
def process_relay(engine: Engine, redis_url: str | None, amqp_url: str | None,
                  amqp_exchange: str, follow_up: Callable[[Sequence[Outgoing]], None]) -> RelayThread:
    """This process's relay for a database and its sinks (one per process and settings)."""
    return RelayThread(Relay(engine, sinks_for(redis_url, amqp_url, amqp_exchange, follow_up)),
                       inline=not redis_url)


def run_forever(relay: Relay, *, poll_seconds: float = 1.0, stop: threading.Event | None = None) -> None:
    """``relaypacs events-relay``: sweep every ``poll_seconds``, at once again after a full batch."""
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            sent = relay.run_once()
        except Exception as exc:  # noqa: BLE001 - a broker or database blip: try again next sweep
            log.warning("event relay failed (%s); retrying", type(exc).__name__)
            sent = 0
        if sent is None or sent < relay.batch:
            stop.wait(poll_seconds)


def history(session: Session, *, after: int, limit: int, facility_id: int | None = None,
            before: int | None = None, facility_ids: frozenset[int] | None = None) -> list[OutboxEvent]:
    """Positioned events after ``after`` (and below ``before``) in order, of ``facility_id``
    or of ``facility_ids`` (neither: every facility)."""
    query = (select(OutboxEvent).where(OutboxEvent.position > after)
             .order_by(OutboxEvent.position).limit(limit))
    if before is not None:
        query = query.where(OutboxEvent.position < before)
    if facility_id is not None:
        query = query.where(OutboxEvent.facility_id == facility_id)
    if facility_ids is not None:
        query = query.where(OutboxEvent.facility_id.in_(sorted(facility_ids)))
    return list(session.scalars(query))


def prune_chunk(session: Session, *, cutoff: datetime, chunk: int = 10_000) -> int:
    """Delete up to ``chunk`` sent events older than ``cutoff`` (one bounded statement; the
    caller commits and calls again, so a backlog never holds one long lock)."""
    ids = select(OutboxEvent.id).where(OutboxEvent.occurred_at < cutoff,
                                       OutboxEvent.published_at.is_not(None)).limit(chunk).scalar_subquery()
    return session.execute(delete(OutboxEvent).where(OutboxEvent.id.in_(ids))).rowcount or 0


def retention_cutoff(now: datetime | None = None, keep_days: int = RETENTION_DAYS) -> datetime:
    return (now or utcnow()) - timedelta(days=max(keep_days, 7))


def sinks_for(redis_url: str | None, amqp_url: str | None, amqp_exchange: str,
              follow_up: Callable[[Sequence[Outgoing]], None]) -> list[Sink]:
    """Every relay's sinks. ``follow_up`` is required: any process's relay may send any
    committed row, so each must start the work the rows ask for (workers.chains.after_events)."""
    out: list[Sink] = [RedisSink(redis_url) if redis_url else InProcessSink(events.event_bus(None))]  # type: ignore[arg-type]
    if amqp_url:
        out.append(AmqpSink(amqp_url, amqp_exchange))
    out.append(FollowUp(follow_up))
    return out
