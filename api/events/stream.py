"""``GET /api/v1/events``: Server-Sent Events fed from Redis, served by ``relaypacs events``.

Why a separate asyncio process: the intake API runs gunicorn gthread workers, one thread per
open request, so 1,000 open streams would need 1,000 threads. Here an open stream is a
coroutine parked on a shared future: the process holds one Redis subscription whatever
the number of clients, and per client only its socket and the id of the last event sent.

How a client is fed:
- one reader task per process subscribes to the live channel and appends each event to a
  shared ring of recent events, then wakes every stream (one future for all of them);
- each stream walks the ring from its own position and writes what its caller may see:
  the facilities ``readable_facility_ids`` gives them, as every API read (admins every
  facility, a radiologist or consultant also the facilities assigned to them, anyone else
  their own), looked up again at each auth recheck, so a new assignment reaches an open
  stream within RELAYPACS_EVENTS_AUTH_RECHECK_SECONDS;
- ``Last-Event-ID`` (header, or ``lastEventId`` in the query for clients that cannot set
  headers) replays from the Redis stream first, and from PostgreSQL (the event outbox, a
  week at least) for whatever is older than the stream's window; a stream that falls behind the ring (a
  slow reader) catches up from the Redis stream the same way, so nothing is skipped.

Authentication is the API's: ``Authorization: Bearer TOKEN`` or the sign-in session cookie,
the same tokens, sessions and roles, checked when the stream opens and again every
RELAYPACS_EVENTS_AUTH_RECHECK_SECONDS while it is open: a stream whose token was revoked or
expired, or whose session ended (logout, password change, disabled user, idle, lifetime),
gets an ``auth.ended`` event and is closed. The recheck is not activity: an open page does
not keep its session alive. The same stream is also served at ``/dashboard/events`` for the
page's EventSource; when the page comes from another origin listed in RELAYPACS_CORS_ORIGINS
(never "*": the stream carries credentials) that origin may read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web

from config import Settings
from pipeline.accounts.scoping import readable_facility_ids
from pipeline.accounts.sessions import SessionPolicy, find_session
from pipeline.accounts.users import user_for_token
from pipeline.db.engine import make_engine, make_session_factory
from pipeline.ops import events, outbox

log = logging.getLogger(__name__)

RING_SIZE = 4096
KEEPALIVE_SECONDS = 15.0
RETRY_MS = 3000
REPLAY_PAGE = 500
SESSION_COOKIE = "relaypacs_session"  # api.http.auth.SESSION_COOKIE: the pages' sign-in
ENDED_FRAME = (b'event: auth.ended\n'
               b'data: {"type": "auth.ended", "reason": "signed out, or the token was revoked"}\n\n')


Scope = frozenset[int] | None  # the facilities a caller reads; None: every one (admins)


@dataclass
class Caller:
    facilities: Scope  # refreshed at each recheck (an admin may change the assignments)
    kind: str  # "token" or "session"
    secret: str  # what to check again: the token, or the session cookie's value


class LiveFeed:
    """The process's one view of the live channel: a ring of recent events and a future
    that every waiting stream shares."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.ring: deque[tuple[int, str, str, dict]] = deque(maxlen=RING_SIZE)
        self.seq = 0  # sequence number of the newest event in the ring
        self._changed: asyncio.Future[None] | None = None
        self._task: asyncio.Task | None = None
        self.last_stream_id = "0-0"
        self.connected = asyncio.Event()

    def changed(self) -> asyncio.Future[None]:
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    def _append(self, stream_id: str, payload: str) -> None:
        if events.stream_id_key(stream_id) <= events.stream_id_key(self.last_stream_id):
            return  # already seen (a gap fill overlapping live messages)
        try:
            parsed = json.loads(payload)
        except ValueError:
            return
        self.seq += 1
        self.last_stream_id = stream_id
        self.ring.append((self.seq, stream_id, payload, parsed))
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    def after(self, seq: int) -> list[tuple[int, str, str, dict]] | None:
        """Ring entries newer than ``seq``; None when some were already dropped."""
        if not self.ring or seq >= self.seq:
            return []
        if seq < self.ring[0][0] - 1:
            return None
        return [entry for entry in self.ring if entry[0] > seq]

    async def run(self) -> None:
        """Subscribe, and after any reconnect fill the gap from the stream."""
        import redis.asyncio as aioredis

        delay = 0.5
        while True:
            client = aioredis.Redis.from_url(self.redis_url)
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(events.CHANNEL)
                await self._fill_gap(client)
                self.connected.set()
                delay = 0.5
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    stream_id, _, payload = message["data"].decode().partition(" ")
                    self._append(stream_id, payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis went away: reconnect with backoff
                self.connected.clear()
                log.warning("event feed lost Redis (%s); reconnecting", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _fill_gap(self, client) -> None:  # noqa: ANN001
        if self.last_stream_id == "0-0":
            # First connection: live starts now; older events are replayed on request only.
            newest = await client.xrevrange(events.STREAM_KEY, count=1)
            if newest:
                self.last_stream_id = newest[0][0].decode()
            return
        while True:
            rows = await client.xrange(events.STREAM_KEY, min=f"({self.last_stream_id}", max="+",
                                       count=REPLAY_PAGE)
            for stream_id, fields in rows:
                self._append(stream_id.decode(), fields[b"e"].decode())
            if len(rows) < REPLAY_PAGE:
                return

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class EventServer:
    def __init__(self, settings: Settings) -> None:
        if not settings.redis_url:
            raise RuntimeError("relaypacs events needs RELAYPACS_REDIS_URL: events reach it through Redis")
        self.settings = settings
        self.feed = LiveFeed(settings.redis_url)
        self.sessions = make_session_factory(make_engine(settings.database_url))
        # Token checks run on a few threads (the database driver blocks); a burst of
        # connecting clients queues here instead of opening a connection each.
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="events-auth")
        self.redis = None
        self.streams = 0
        self.policy = SessionPolicy(idle_seconds=settings.session_idle_seconds,
                                    lifetime_seconds=settings.session_lifetime_seconds)
        self.recheck_seconds = max(0.1, settings.events_auth_recheck_seconds)

    def _lookup(self, kind: str, secret: str, opening: bool) -> tuple[Scope] | None:
        """(the facilities the caller reads,) while its token or session works, else None.
        Opening a stream is a request (session activity); a recheck is not."""
        with self.sessions() as session:
            if kind == "token":
                user = user_for_token(session, secret)
            else:
                found = find_session(session, secret, self.policy, touch=opening)
                session.commit()
                user = found[1] if found else None
            if user is None:
                return None
            return (readable_facility_ids(session, user),)

    async def authenticate(self, request: web.Request) -> Caller:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if header:
            kind, secret = "token", (token.strip() if scheme.lower() == "bearer" else "")
        else:
            kind, secret = "session", request.cookies.get(SESSION_COOKIE, "")
        if not secret:
            raise _error(401, "missing bearer token",
                         hint="Authorization: Bearer TOKEN, or sign in at /login")
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self.executor, self._lookup, kind, secret, True)
        if found is None:
            raise _error(401, "invalid or revoked token" if kind == "token"
                         else "session ended: sign in again")
        return Caller(found[0], kind, secret)

    async def still_allowed(self, caller: Caller) -> bool:
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(self.executor, self._lookup, caller.kind, caller.secret, False)
        except Exception as exc:  # noqa: BLE001 - a database blip must not cut every stream
            log.warning("event stream auth recheck failed (%s); keeping the stream", type(exc).__name__)
            return True
        if found is None:
            return False
        caller.facilities = found[0]
        return True

    def cors_headers(self, request: web.Request) -> dict[str, str]:
        """Credentialed CORS for the origins named in settings (a dashboard served elsewhere)."""
        origin = request.headers.get("Origin", "")
        if origin and origin in self.settings.cors_origins:
            return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true",
                    "Vary": "Origin"}
        return {}

    async def replay(self, after: str, count: int = REPLAY_PAGE) -> list[tuple[str, str]]:
        rows = await self.redis.xrange(events.STREAM_KEY, min=f"({after}", max="+", count=count)
        return [(sid.decode(), fields[b"e"].decode()) for sid, fields in rows]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        caller = await self.authenticate(request)
        last_id = request.headers.get("Last-Event-ID") or request.query.get("lastEventId") or ""
        if last_id and events.stream_id_key(last_id) == (0, 0) and last_id != "0-0":
            raise _error(400, "Last-Event-ID must be an id this stream sent, like 1711111111111-0")
        # Where live delivery starts, taken before the client can see the headers: an event
        # published the moment it does is then in the ring after this position, not lost.
        position, newest = self.feed.seq, self.feed.last_stream_id
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a proxy in front must not buffer the stream
            **self.cors_headers(request),
        })
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n: connected\n\n".encode())
        self.streams += 1
        try:
            await self._stream(response, caller, last_id, position, newest)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.streams -= 1
        return response

    async def _stream(self, response: web.StreamResponse, caller: Caller,
                      last_id: str, position: int, newest: str) -> None:
        """Live events after ``position`` in the ring; older ones come from the Redis stream.
        Ends (after an ``auth.ended`` event) once the caller's token or session stops working."""
        sent = last_id or newest
        if last_id:
            sent = await self._catch_up(response, caller, last_id)
        next_check = time.monotonic() + self.recheck_seconds
        last_write = time.monotonic()
        while True:
            if time.monotonic() >= next_check:
                if not await self.still_allowed(caller):
                    await response.write(ENDED_FRAME)
                    return
                next_check = time.monotonic() + self.recheck_seconds
            waiter = self.feed.changed()
            entries = self.feed.after(position)
            if entries is None:  # fell off the ring: read what we missed from Redis
                position = self.feed.seq
                sent = await self._catch_up(response, caller, sent)
                continue
            for seq, stream_id, payload, parsed in entries:
                position = seq
                if events.stream_id_key(stream_id) <= events.stream_id_key(sent):
                    continue
                sent = stream_id
                if events.visible_to(parsed, caller.facilities):
                    await response.write(events.sse_frame(stream_id, payload, parsed.get("type", "message")))
                    last_write = time.monotonic()
            if entries:
                continue
            wait = min(KEEPALIVE_SECONDS - (time.monotonic() - last_write), next_check - time.monotonic())
            try:
                await asyncio.wait_for(asyncio.shield(waiter), max(0.05, wait))
            except TimeoutError:
                if time.monotonic() - last_write >= KEEPALIVE_SECONDS:
                    await response.write(b": keepalive\n\n")
                    last_write = time.monotonic()

    def _history_page(self, after: int, before: int | None, facilities: Scope) -> list[tuple[str, str]]:
        with self.sessions() as session:
            rows = outbox.history(session, after=after, before=before, limit=REPLAY_PAGE,
                                  facility_ids=facilities)
            return [(outbox.format_id(r.position), json.dumps(outbox.envelope(r), separators=(",", ":")))
                    for r in rows]

    async def _from_history(self, response: web.StreamResponse, caller: Caller, after: str) -> str:
        """Events older than the Redis stream's window come from PostgreSQL (the outbox keeps
        a week at least), so an old Last-Event-ID still resumes without a gap."""
        oldest = await self.redis.xrange(events.STREAM_KEY, count=1)
        oldest_id = oldest[0][0].decode() if oldest else None
        if oldest_id is not None and events.stream_id_key(after) >= events.stream_id_key(oldest_id):
            return after  # inside the window: Redis has everything after it
        position = outbox.parse_id(after) or 0
        before = outbox.parse_id(oldest_id) if oldest_id else None
        loop = asyncio.get_running_loop()
        while True:
            rows = await loop.run_in_executor(self.executor, self._history_page, position, before,
                                              caller.facilities)
            for stream_id, payload in rows:
                after = stream_id
                await response.write(events.sse_frame(stream_id, payload, json.loads(payload)["type"]))
            if len(rows) < REPLAY_PAGE:
                return after
            position = outbox.parse_id(after) or position

    async def _catch_up(self, response: web.StreamResponse, caller: Caller, after: str) -> str:
        after = await self._from_history(response, caller, after)
        while True:
            rows = await self.replay(after)
            for stream_id, payload in rows:
                after = stream_id
                parsed = json.loads(payload)
                if events.visible_to(parsed, caller.facilities):
                    await response.write(events.sse_frame(stream_id, payload, parsed.get("type", "message")))
            if len(rows) < REPLAY_PAGE:
                return after

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "redis": self.feed.connected.is_set(),
                                  "streams": self.streams})

    async def on_startup(self, _app: web.Application) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(self.settings.redis_url)
        self.feed.start()

    async def on_cleanup(self, _app: web.Application) -> None:
        await self.feed.stop()
        if self.redis is not None:
            await self.redis.aclose()
        self.executor.shutdown(wait=False)


def _error(status: int, message: str, **extra: object) -> web.HTTPException:
    body = json.dumps({"error": {"status": status, "message": message, **extra}})
    kind = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized}[status]
    return kind(text=body, content_type="application/json")


def create_event_app(settings: Settings) -> web.Application:
    server = EventServer(settings)
    app = web.Application()
    app["server"] = server
    app.router.add_get("/api/v1/events", server.handle)
    app.router.add_get("/dashboard/events", server.handle)
    app.router.add_get("/healthz", server.healthz)
    app.on_startup.append(server.on_startup)
    app.on_cleanup.append(server.on_cleanup)
    return app


def serve(settings: Settings, host: str, port: int) -> None:
    started = time.monotonic()
    app = create_event_app(settings)
    log.info("event stream on %s:%d (%.1f s to start)", host, port, time.monotonic() - started)
    # backlog: a burst of clients reconnecting at once must not be refused by the kernel.
    web.run_app(app, host=host, port=port, backlog=2048, access_log=None, print=None)
