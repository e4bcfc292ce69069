"""The rate limiter on a real Redis: one command per counted request (a Lua script that
counts and sets the window's expiry), the limit still refused with 429 and Retry-After,
the window's key still expiring."""

from __future__ import annotations

import pytest
import redis

from api.http.errors import ApiError
from api.http.limits import WINDOW_SECONDS, RateLimiter
from tests.integration.request_costs import RequestCosts
from tests.rate_limits import in_one_window

pytestmark = pytest.mark.integration


def test_one_redis_command_per_check_and_the_limit_holds(redis_url):  # noqa: ANN001
    # The clock held in one window: on the real one the four checks could straddle a minute
    # boundary and the fourth would start a fresh count.
    limiter = RateLimiter({"login": 3}, redis_url, clock=in_one_window)
    limiter.check_login("203.0.113.9")  # the script is loaded once per process
    costs = RequestCosts(None)  # type: ignore[arg-type] - Redis only
    with costs.redis_only():
        limiter.check_login("203.0.113.9")
    assert costs.counts["redis"] == 1
    limiter.check_login("203.0.113.9")
    with pytest.raises(ApiError) as refused:
        limiter.check_login("203.0.113.9")
    assert refused.value.status == 429 and 1 <= refused.value.extra["retry_after"] <= WINDOW_SECONDS + 1
    client = redis.Redis.from_url(redis_url)
    keys = client.keys("relaypacs:rate:addr:203.0.113.9:login:*")
    assert keys and 0 < client.ttl(keys[0]) <= WINDOW_SECONDS * 2
    client.delete(*keys)


def test_counting_survives_a_flushed_script_and_a_dropped_connection(redis_url):  # noqa: ANN001
    """Each request thread counts on a Redis connection of its own with the script's SHA:
    after SCRIPT FLUSH (as after a Redis restart) the script is loaded again, after the
    server closed the connection a new one is opened, and no count is lost or skipped;
    threads count into the same key."""
    import threading

    limiter = RateLimiter({"login": 1000}, redis_url)
    client = redis.Redis.from_url(redis_url)
    counts = [limiter._count("relaypacs:rate:test:flush") for _ in range(3)]  # noqa: SLF001
    client.script_flush()
    counts.append(limiter._count("relaypacs:rate:test:flush"))  # noqa: SLF001
    # The server drops the limiter's connections (only this session's database's clients:
    # the Redis server is shared).
    own = client.client_id()
    db = client.connection_pool.connection_kwargs.get("db", 0)
    for other in client.client_list():
        if int(other["db"]) == db and int(other["id"]) != own:
            client.client_kill_filter(_id=other["id"])
    counts.append(limiter._count("relaypacs:rate:test:flush"))  # noqa: SLF001
    assert counts == [1, 2, 3, 4, 5]
    others = [threading.Thread(target=limiter._count, args=("relaypacs:rate:test:flush",))  # noqa: SLF001
              for _ in range(4)]
    for thread in others:
        thread.start()
    for thread in others:
        thread.join(10)
    assert int(client.get("relaypacs:rate:test:flush")) == 9
    client.delete("relaypacs:rate:test:flush")
