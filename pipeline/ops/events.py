"""Domain events: what they carry, who may see them, and the bus they go out on.

Events carry ids, the facility and counts, never patient data or file names (a file name
can be a patient's name). Every state change is a committed row first; the event only
announces it, so a lost event costs a live view a refresh, never data.

The bus is Redis when ``RELAYPACS_REDIS_URL`` is set: each event is appended to a capped
stream (replay, ``Last-Event-ID``) and published on a channel (live) in one Lua call, so the
live message carries the stream id and a subscriber can tell where the replay ends. Without
Redis an in-process bus keeps the same interface for the embedded demo and unit tests.
Publishing never raises into the caller: ``publish_safely`` logs and goes on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Protocol

from pipeline.models import UPLOAD_EVENT_FIELDS, utcnow

log = logging.getLogger(__name__)

UPLOAD_INITIATED = "upload.initiated"
UPLOAD_CHUNK_RECEIVED = "upload.chunk_received"
UPLOAD_COMPLETED = "upload.completed"
STUDY_FORWARDED = "study.forwarded"
# Instances a destination refused for good: someone has to look at the destination or the data.
DELIVERY_DEAD_LETTERED = "delivery.dead_lettered"
# The QA managers' scheduled exports (pipeline/exports): a run's state, and the mail it sent or
# its final failure. Named apart from radiology reports so no consumer mistakes one for the other.
EXPORT_RUN_STATE_CHANGED = "export.run_state_changed"
EXPORT_NOTIFICATION = "export.notification"
# Radiology reports (pipeline/reports) only: a report's status moved (from, to), and a
# notification row was created for a person.
REPORT_STATUS_CHANGED = "report.status_changed"
NOTIFICATION_CREATED = "notification.created"
# A comment (or a corrected version of one) was added to a report's thread.
COMMENT_CREATED = "comment.created"
EVENT_TYPES = frozenset({UPLOAD_INITIATED, UPLOAD_CHUNK_RECEIVED, UPLOAD_COMPLETED, STUDY_FORWARDED,
                         DELIVERY_DEAD_LETTERED, EXPORT_RUN_STATE_CHANGED, EXPORT_NOTIFICATION,
                         REPORT_STATUS_CHANGED, NOTIFICATION_CREATED, COMMENT_CREATED})

STREAM_KEY = "relaypacs:events"
CHANNEL = "relaypacs:events:live"
# About a day of busy traffic; older events are only in the database (XADD MAXLEN ~).
STREAM_MAXLEN = 100_000
# Keys an event may carry besides type/facility/at: ids and counts only, by construction.
ALLOWED_FIELDS = frozenset({"upload_id", "batch_id", "study_id", "destination_id", "user_id",
                            "offset", "length", "delivered", "failed", "deferred", "report_id",
                            "export_id", "run_id", "notification_id", "status", "from", "to",
                            "kind", "recipients", "comment_id", "consult_id", "version",
                            # upload.completed: the request that completed the file, so the
                            # chain its relay starts logs that id (api.events.publish).
                            "request_id"})
# What an export.notification is about (``kind``): things a QA manager or admin acts on.
NOTIFY_EXPORT_SENT = "export_sent"  # a scheduled export was mailed to its recipients
NOTIFY_EXPORT_FAILED = "export_failed"  # an export run failed for good (replayable)


@dataclass(frozen=True)
class Event:
    type: str
    facility_id: int
    data: dict = field(default_factory=dict)
    at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}")
        extra = set(self.data) - ALLOWED_FIELDS
        if extra:
            raise ValueError(f"event fields not allowed (ids and counts only): {sorted(extra)}")

    def to_json(self) -> str:
        return json.dumps({"type": self.type, "facility_id": self.facility_id,
                           "at": self.at.isoformat(), **self.data}, separators=(",", ":"))


def upload_event(kind: str, upload: object) -> Event:
    """upload.initiated / chunk_received / completed for an Upload row."""
    return Event(kind, upload.facility_id,  # type: ignore[attr-defined]
                 {field: getattr(upload, attr) for field, attr in UPLOAD_EVENT_FIELDS.items()})


def study_forwarded(facility_id: int, study_id: int, destination_id: int, *, delivered: int,
                    failed: int, deferred: int) -> Event:
    return Event(STUDY_FORWARDED, facility_id, {
        "study_id": study_id, "destination_id": destination_id, "delivered": delivered,
        "failed": failed, "deferred": deferred,
    })


def dead_lettered(facility_id: int, study_id: int, destination_id: int, failed: int) -> Event:
    """delivery.dead_lettered: ``failed`` instances of a study a destination refused for good."""
    return Event(DELIVERY_DEAD_LETTERED, facility_id, {"study_id": study_id,
                                                       "destination_id": destination_id, "failed": failed})


def export_run_state_changed(facility_id: int, export_id: int, run_id: int, status: str) -> Event:
    """An export run entered ``status`` (queued, working, retrying, succeeded, failed)."""
    return Event(EXPORT_RUN_STATE_CHANGED, facility_id, {"export_id": export_id, "run_id": run_id,
                                                         "status": str(status)})


def export_run_events(facility_id: int, export_id: int, run_id: int, status: str, *,
                      recipients_notified: int = 0, notified_now: bool = False) -> list[Event]:
    """The events for an export run's new state: export.run_state_changed, plus an
    export.notification when the run mailed its recipients now or failed for good."""
    out = [export_run_state_changed(facility_id, export_id, run_id, status)]
    ids = {"export_id": export_id, "run_id": run_id}
    if str(status) == "succeeded" and notified_now:
        out.append(Event(EXPORT_NOTIFICATION, facility_id,
                         {"kind": NOTIFY_EXPORT_SENT, "recipients": recipients_notified, **ids}))
    elif str(status) == "failed":
        out.append(Event(EXPORT_NOTIFICATION, facility_id, {"kind": NOTIFY_EXPORT_FAILED, **ids}))
    return out


def report_status_changed(facility_id: int, report_id: int, from_status: str | None,
                          to_status: str) -> Event:
    """A radiology report's status moved from ``from_status`` (None for a new report) to
    ``to_status`` (FHIR DiagnosticReport codes)."""
    before = None if from_status is None else str(from_status)
    return Event(REPORT_STATUS_CHANGED, facility_id, {"report_id": report_id, "from": before,
                                                      "to": str(to_status)})


def notification(facility_id: int, kind: str, **ids: int) -> Event:
    """notification.created (radiology reports: comments, consults, status): ``kind`` and
    the ids and counts it is about."""
    return Event(NOTIFICATION_CREATED, facility_id, {"kind": kind, **ids})


def comment_created(facility_id: int, report_id: int, comment_id: int, author_id: int,
                    version: int) -> Event:
    """comment.created: ids only (the text stays behind the API's scoping)."""
    return Event(COMMENT_CREATED, facility_id, {"report_id": report_id, "comment_id": comment_id,
                                                "user_id": author_id, "version": version})


def visible_to(payload: dict, facility_ids: Collection[int] | None) -> bool:
    """Facility scoping, as for every other API read: ``facility_ids`` is what
    ``readable_facility_ids`` gave the caller (None: every facility, admins)."""
    return facility_ids is None or payload.get("facility_id") in facility_ids


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """Redis stream ids ("ms-seq") in order; anything unparsable sorts first."""
    ms, _, seq = stream_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)


def sse_frame(stream_id: str, payload_json: str, event_type: str) -> bytes:
    """One Server-Sent Events message; JSON never contains a raw newline."""
    return f"id: {stream_id}\nevent: {event_type}\ndata: {payload_json}\n\n".encode()


class EventBus(Protocol):
    def publish(self, event: Event) -> str: ...

    def read_after(self, last_id: str, count: int = 500) -> list[tuple[str, str]]: ...


# XADD then PUBLISH "<id> <json>", atomically and in one round trip.
_PUBLISH_LUA = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])
redis.call('PUBLISH', KEYS[2], id .. ' ' .. ARGV[2])
return id
"""


class RedisEventBus:
    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        import redis

        # Short timeouts: a Redis outage must cost a request at most this, never hang it.
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._script = self.client.register_script(_PUBLISH_LUA)

    def publish(self, event: Event) -> str:
        result = self._script(keys=[STREAM_KEY, CHANNEL], args=[STREAM_MAXLEN, event.to_json()])
        return result.decode() if isinstance(result, bytes) else str(result)

    def read_after(self, last_id: str, count: int = 500) -> list[tuple[str, str]]:
        rows = self.client.xrange(STREAM_KEY, min=f"({last_id}", max="+", count=count)
        return [(sid.decode(), fields[b"e"].decode()) for sid, fields in rows]


class InProcessEventBus:
    """Same contract without Redis: a bounded in-memory log and synchronous listeners."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._log: deque[tuple[str, str]] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._last = (0, 0)
        self.listeners: list[Callable[[str, str], None]] = []

    def publish(self, event: Event) -> str:
        with self._lock:
            ms = int(time.time() * 1000)
            seq = self._last[1] + 1 if ms <= self._last[0] else 0
            self._last = (max(ms, self._last[0]), seq)
            stream_id = f"{self._last[0]}-{seq}"
            payload = event.to_json()
            self._log.append((stream_id, payload))
            listeners = list(self.listeners)
        for listener in listeners:
            listener(stream_id, payload)
        return stream_id

    def append(self, stream_id: str, payload: str) -> None:
        """Add an event under an id given out elsewhere (the outbox relay); an id not above
        the newest is a re-publish and is dropped, as Redis does."""
        key = stream_id_key(stream_id)
        with self._lock:
            if key <= self._last:
                return
            self._last = key
            self._log.append((stream_id, payload))
            listeners = list(self.listeners)
        for listener in listeners:
            listener(stream_id, payload)

    def last_id(self) -> str:
        with self._lock:
            return f"{self._last[0]}-{self._last[1]}"

    def read_after(self, last_id: str, count: int = 500) -> list[tuple[str, str]]:
        after = stream_id_key(last_id)
        with self._lock:
            return [e for e in self._log if stream_id_key(e[0]) > after][:count]


@lru_cache(maxsize=8)
def event_bus(redis_url: str | None) -> EventBus:
    """One bus per process and URL (the Redis client pools its connections)."""
    return RedisEventBus(redis_url) if redis_url else InProcessEventBus()


def publish_safely(bus: EventBus, events: Event | Iterable[Event]) -> None:
    """Publish; on any failure log the event type (not its content) and go on."""
    for event in [events] if isinstance(events, Event) else events:
        try:
            bus.publish(event)
        except Exception as exc:  # noqa: BLE001 - the committed row is the truth; the event is a courtesy
            log.warning("event %s not published: %s", event.type, type(exc).__name__)
