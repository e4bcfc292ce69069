"""Per-token rate limits: uploads get generous limits, listings stricter, writes strictest;
and dashboard sign-in attempts per client address.

Counters live in Redis (fixed one-minute windows) so every API process shares them; with
no Redis configured (embedded mode) each process counts on its own.

Every request is counted in Redis, so the count is the API's most frequent Redis command:
each request thread sends it on a redis-py connection of its own as one pre-encoded
``EVALSHA`` and reads the integer back. Through ``Script.__call__`` (the client's command
lookup, connection pool, retry wrapper and argument encoding) the same round trip cost the
API 80 us of CPU a request; this way about 25.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable

from flask import request
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.http.errors import ApiError

WINDOW_SECONDS = 60
# Count the request and start the window's expiry in one command: a script's one reply costs
# the API a quarter less CPU than a MULTI/INCR/EXPIRE/EXEC pipeline's four (measured: 91 vs
# 121 us a check), and the expiry is set once per window instead of on every request.
_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


def request_class(method: str, path: str) -> str:
    if path.startswith("/api/v1/files"):
        return "upload"
    return "read" if method in ("GET", "HEAD") else "write"


_COUNT_SHA = hashlib.sha1(_COUNT.encode()).hexdigest().encode()  # noqa: S324 - Redis names scripts so
# EVALSHA sha 1 KEY expiry, as RESP: what comes before the key and what follows it.
_EVALSHA = b"*5\r\n$7\r\nEVALSHA\r\n$40\r\n" + _COUNT_SHA + b"\r\n$1\r\n1\r\n"
_EXPIRY = str(WINDOW_SECONDS * 2).encode()
_AFTER_KEY = b"\r\n$%d\r\n%s\r\n" % (len(_EXPIRY), _EXPIRY)


class RateLimiter:
    def __init__(self, limits: dict[str, int], redis_url: str | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.limits = limits
        # The wall clock the windows are cut from (a test holds it inside one window: its
        # requests could otherwise straddle a minute boundary and start a fresh count).
        self.clock = clock
        self.redis = None
        if redis_url:
            import redis

            self.redis = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self._connections = threading.local()  # each thread's own connection (and its pid)
        self._local: dict[str, int] = {}
        self._lock = threading.Lock()

    def _count(self, key: str) -> int:
        if self.redis is not None:
            try:
                return self._count_in_redis(key)
            except Exception:  # noqa: BLE001 - a limiter outage must not take the API down
                return 0
        with self._lock:
            if len(self._local) > 100_000:
                self._local.clear()
            self._local[key] = self._local.get(key, 0) + 1
            return self._local[key]

    def _count_in_redis(self, key: str) -> int:
        mine = self._connections
        connection = getattr(mine, "connection", None)
        if connection is None or mine.pid != os.getpid():  # a forked child opens its own
            pool = self.redis.connection_pool  # type: ignore[union-attr]
            connection = mine.connection = pool.connection_class(**pool.connection_kwargs)
            mine.pid = os.getpid()
        raw = key.encode()
        command = b"%s$%d\r\n%s%s" % (_EVALSHA, len(raw), raw, _AFTER_KEY)
        try:
            connection.send_packed_command((command,))  # connects first when not connected
            return int(connection.read_response())
        except NoScriptError:  # a restarted or flushed Redis: load the script, count again
            self.redis.script_load(_COUNT)  # type: ignore[union-attr]
        except (RedisConnectionError, RedisTimeoutError):  # dropped: once more on a new one
            connection.disconnect()
        connection.send_packed_command((command,))
        return int(connection.read_response())

    def check(self, user_id: int) -> None:
        self._check(str(user_id), request_class(request.method, request.path))

    def check_login(self, remote_addr: str) -> None:
        """Sign-in attempts per client address: tokens are long and random, but nobody should
        get to try thousands of them, and the audit trail should not be flooded either."""
        self._check(f"addr:{remote_addr}", "login")

    def _check(self, subject: str, kind: str) -> None:
        limit = self.limits.get(kind)
        if not limit:
            return
        now = self.clock()
        window = int(now // WINDOW_SECONDS)
        if self._count(f"relaypacs:rate:{subject}:{kind}:{window}") > limit:
            retry_after = int((window + 1) * WINDOW_SECONDS - now) + 1
            raise ApiError(429, f"rate limit of {limit} {kind} requests per minute reached",
                           retry_after=retry_after)
