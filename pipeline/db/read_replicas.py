"""Read replicas: analytics and listings read from a healthy, current replica; writes and
everything else use the primary.

A replica is skipped while it is down or replays more than ``max_lag_seconds`` behind. Its
health is checked at most every ``check_every`` seconds per process, so a request pays for
a check only when the cached one has gone stale. Lag is the age of the last replayed
transaction while WAL is waiting to be replayed, and zero when everything received is
replayed (an idle primary sends nothing, and an old replay timestamp then means nothing).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

LAG_SQL = text(
    "SELECT pg_is_in_recovery(), CASE WHEN pg_last_wal_receive_lsn() IS NULL"
    " OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
    " ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END"
)


@dataclass
class ReplicaHealth:
    ok: bool
    lag_seconds: float | None
    checked_at: float
    error: str | None = None


class Replica:
    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine
        self.sessions = sessionmaker(bind=engine, expire_on_commit=False)
        self.health: ReplicaHealth | None = None


class ReplicaRouter:
    def __init__(self, urls: Sequence[str], *, max_lag_seconds: float = 30.0, check_every: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 engine_factory: Callable[[str], Engine] | None = None) -> None:
        make = engine_factory or _replica_engine
        self.replicas = [Replica(url, make(url)) for url in urls]
        self.max_lag_seconds = max_lag_seconds
        self.check_every = check_every
        self.clock = clock
        self._lock = threading.Lock()
        self._turn = itertools.count()

    def _check(self, replica: Replica) -> ReplicaHealth:
        now = self.clock()
        try:
            with replica.engine.connect() as conn:
                if conn.dialect.name == "postgresql":
                    in_recovery, lag = conn.execute(LAG_SQL).one()
                    lag = float(lag or 0.0)
                else:  # a test double (SQLite): no replication to measure
                    conn.execute(text("SELECT 1"))
                    in_recovery, lag = True, 0.0
            ok = lag <= self.max_lag_seconds
            if not in_recovery:
                log.warning("replica %s is not in recovery (a promoted primary?)", _safe(replica.url))
            return ReplicaHealth(ok, lag, now, None if ok else f"lag {lag:.1f}s")
        except Exception as exc:  # noqa: BLE001 - any failure means: do not read from it
            return ReplicaHealth(False, None, now, type(exc).__name__)

    def healthy(self) -> list[Replica]:
        now = self.clock()
        out = []
        for replica in self.replicas:
            health = replica.health
            if health is None or now - health.checked_at >= self.check_every:
                with self._lock:
                    health = replica.health = self._check(replica)
            if health.ok:
                out.append(replica)
        return out

    def read_session(self) -> Session | None:
        """A session on a healthy replica (round robin), or None: use the primary."""
        healthy = self.healthy()
        if not healthy:
            return None
        return healthy[next(self._turn) % len(healthy)].sessions()

    def status(self) -> list[dict]:
        self.healthy()
        return [{"replica": _safe(r.url), "ok": r.health.ok if r.health else None,
                 "lag_seconds": r.health.lag_seconds if r.health else None,
                 "error": r.health.error if r.health else None} for r in self.replicas]


def _replica_engine(url: str) -> Engine:
    if url.startswith("postgresql"):
        # Fail fast on a dead replica: the primary answers instead.
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                             connect_args={"connect_timeout": 2})
    return create_engine(url)


def _safe(url: str) -> str:
    """The URL without its password, for logs and status."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, creds = head.partition("://")
    return f"{scheme}://{creds.partition(':')[0]}@{tail}"
