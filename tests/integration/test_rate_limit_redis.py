"""The rate limiter on a real Redis: one command per counted request (a Lua script that
counts and sets the window's expiry), the limit still refused with 429 and Retry-After,
the window's key still expiring."""

from __future__ import annotations

import pytest
import redis

from api.http.errors import ApiError
from api.http.limits import WINDOW_SECONDS, RateLimiter
from tests.integration.request_costs import RequestCosts

pytestmark = pytest.mark.integration


def test_one_redis_command_per_check_and_the_limit_holds(redis_url):  # noqa: ANN001
    limiter = RateLimiter({"login": 3}, redis_url)
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
