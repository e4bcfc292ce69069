"""What a tiering run is given (``TieringOptions``: the policy, bundling, concurrency,
chunking, limits) and what it gives back (``RunResult``: counts, time per phase, whether work
is left); shared by the run and each of its steps.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from pipeline.lifecycle import policy as lifecycle
from pipeline.lifecycle.policy import TierPolicy


@dataclass(frozen=True)
class TieringOptions:
    policy: TierPolicy
    bundle_below: int = lifecycle.DEFAULT_BUNDLE_BELOW
    bundle_max_bytes: int = lifecycle.DEFAULT_BUNDLE_MAX_BYTES
    managed_by: str = "gateway"  # or "s3"
    concurrency: int = 8
    # Objects announced and recorded per commit; also the most a killed run leaves to check.
    chunk: int = 200
    abort_multipart_days: int = 2
    upload_expiry: timedelta = timedelta(days=1)
    staging_days: int = 3  # day partitions swept per night, just past the upload expiry
    spool_dir: Path = Path("var/spool")
    max_seconds: float | None = None  # stop cleanly between chunks; the caller re-enqueues
    plan_limit: int = 250_000  # objects decided per run: bounds its memory
    facility_ids: tuple[int, ...] | None = None  # scope (tests, per-facility runs)
    rendition_days: int = lifecycle.DEFAULT_RENDITION_DAYS

    def __post_init__(self) -> None:
        if self.managed_by not in ("gateway", "s3"):
            raise lifecycle.PolicyError(f"managed_by must be gateway or s3, not {self.managed_by!r}")
        lifecycle.check_rendition_days(self.policy, self.rendition_days)


@dataclass
class RunResult:
    counts: Counter = field(default_factory=Counter)
    more: bool = False  # stopped at the time limit (or the plan limit) with work left
    plan: dict | None = None  # a dry run's summary of what is due
    seconds: dict[str, float] = field(default_factory=dict)  # per phase

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.seconds[phase] = round(self.seconds.get(phase, 0.0) + time.monotonic() - start, 3)

    def as_dict(self) -> dict:
        return {**dict(self.counts), "more": self.more, "seconds": self.seconds,
                **({"plan": self.plan} if self.plan else {})}
