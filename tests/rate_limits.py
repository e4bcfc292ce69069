"""The rate limiter's clock held in one window, for tests that count up to a limit."""

from __future__ import annotations

from api.http.limits import RateLimiter

# The middle of a fixed one-minute rate-limit window (api/http/limits.py).
MID_WINDOW = 1_800_000_030.0


def in_one_window() -> float:
    """A clock for ``RateLimiter(clock=...)`` that never leaves one window."""
    return MID_WINDOW


def hold_in_one_window(limiter: RateLimiter) -> None:
    """Count every request of the test in one rate-limit window: on the real clock, requests
    a moment apart straddle a minute boundary about once in a hundred runs, and the count
    starts again (CI saw [401, 401, 401] for [401, 401, 429])."""
    limiter.clock = in_one_window
