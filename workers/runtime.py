"""Process-wide resources for tasks: settings, engine, session scope, object store, secret keys."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

from celery.exceptions import Reject
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from config import Settings, load_settings
from pipeline.db.engine import make_engine, make_session_factory
from pipeline.delivery.destinations.credentials import SecretBox
from pipeline.dicom.grouping import spool_dir_for
from pipeline.dicom.headers import ParseLimits
from pipeline.intake import attempts
from pipeline.ops import outbox
from pipeline.ops.telemetry import Telemetry
from pipeline.storage import ObjectStore, open_store
from pipeline.storage.byte_cache import ByteCache, CachedStore

_override: Settings | None = None
# What this process's event relay hands each batch to (workers.chains.after_events, which
# imports this module, registers itself: see use_follow_up).
_follow_up: Callable[[list[outbox.Outgoing]], None] | None = None

# The database went away under a task (a restart, a failover, a dropped connection): the
# task runs again with backoff instead of failing, which would drop its message and leave
# its work to the slow re-drive.
DATABASE_AWAY = (OperationalError, InterfaceError)


@cache
def settings() -> Settings:
    return _override or load_settings()


@cache
def engine() -> Engine:
    return make_engine(settings().database_url)


@cache
def session_factory() -> sessionmaker[Session]:
    factory = make_session_factory(engine())
    # Events a task wrote into its transaction go out right after its commit, and with them
    # the work they start (any process's relay may send any committed row).
    if _follow_up is None:
        raise RuntimeError("no relay follow-up: import workers.chains (it registers after_events)")
    cfg = settings()
    outbox.relay_after_commit(factory, outbox.process_relay(
        engine(), cfg.redis_url, cfg.events_amqp_url, cfg.events_amqp_exchange, _follow_up).kick)
    return factory


@cache
def store() -> ObjectStore:
    cfg = settings()
    opened = open_store(cfg.storage_url)
    if cfg.byte_cache_mb > 0 and cfg.storage_url.startswith("s3://"):
        # A folder store is local already; S3 reads are what the host cache spares.
        return CachedStore(opened, ByteCache(cfg.var_dir / "byte-cache", cfg.byte_cache_mb * 1024**2))
    return opened


@cache
def secret_box() -> SecretBox:
    """Destination secrets' keys, resolved at the first destination with a secret."""
    return SecretBox.from_settings(settings())


@cache
def telemetry() -> Telemetry:
    return Telemetry(settings().redis_url)


def parse_limits() -> ParseLimits:
    return ParseLimits.from_settings(settings())


def spool_dir():  # noqa: ANN201
    return spool_dir_for(settings().var_dir)


# Imported by warm_up, named as strings so the import happens in the pool process, not at
# module load (a test imports each one, so a moved module cannot fail silently here).
WARM_UP_MODULES = (
    "pipeline.delivery.destinations.stowrs",
    "pipeline.delivery.destinations.dimse",
    "pipeline.delivery.destinations.folder",
    "pipeline.dicom.rewrite",
    "pydicom",
)


def warm_up() -> None:
    """Pay a fresh pool process's start-up costs before its first task, not during it: the
    forwarding benchmark saw a new child's first study take 2-3 s (imports of the senders,
    the S3 client, the first database connection) against 0.6 s once warm."""
    import importlib
    import logging

    try:
        for module in WARM_UP_MODULES:
            importlib.import_module(module)
        store()
        with engine().connect():
            pass
        # Mapper configuration runs on the first query otherwise: the forwarding profile
        # showed it as 13 % of a fresh pool process's first study.
        from sqlalchemy.orm import configure_mappers

        import pipeline.models  # noqa: F401 - every mapper registered before configuring

        configure_mappers()
    except Exception:  # noqa: BLE001 - a service still starting: the first task retries
        logging.getLogger(__name__).warning("warm-up incomplete", exc_info=True)


def reset() -> None:
    """Drop cached resources (after fork: the child must not reuse the parent's sockets)."""
    if engine.cache_info().currsize:
        engine().dispose(close=False)
    for cached in (settings, engine, session_factory, store, secret_box, telemetry):
        cached.cache_clear()


def use_follow_up(follow_up: Callable[[list[outbox.Outgoing]], None]) -> None:
    """The relay follow-up of this process's sessions (registered by workers.chains)."""
    global _follow_up
    _follow_up = follow_up


def configure(custom: Settings | None) -> None:
    """Use ``custom`` settings in this process (the embedded demo, tests)."""
    global _override
    _override = custom
    reset()


@contextmanager
def session_scope() -> Iterator[Session]:
    """One transaction per task run: commit on success, roll back on any error."""
    session = session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def delete_in_chunks(prune: Callable[..., int], *, limit: int, chunk: int, **kwargs: object) -> int:
    """Call ``prune(session, chunk=N, **kwargs)`` (a bounded delete returning its row count)
    in a transaction of its own each time, until a call deletes less than a full chunk or
    ``limit`` rows are gone: a backlog never holds one long lock. Returns the rows deleted."""
    removed = 0
    while removed < limit:
        with session_scope() as session:
            count = prune(session, chunk=min(chunk, limit - removed), **kwargs)
        removed += count
        if count < chunk:
            break
    return removed


# Failures of the services around a task, not of the file it works on: retried, never a
# reason to quarantine a good file.
RETRYABLE = (OSError, OperationalError, InterfaceError)


@contextmanager
def upload_attempt(upload_id: str, stage: str) -> Iterator[attempts.Attempt]:
    """Run one attempt at an upload's ``stage`` (assembly, parse) so that it always settles.

    The attempt is counted (committed) before the work, and the count set back when it ends:
    a worker that dies in between leaves it raised, and past ``max_worker_losses`` the upload
    is quarantined instead of redelivered (``attempt.go`` is False). A retryable error goes
    up to the task's retry policy; any other error quarantines the upload with its reason,
    so no batch waits for ever on a file nobody can process.

    A MemoryError is counted like a dead worker (the host may just have been short of memory,
    but not every time) and the message is given back to the broker at once, as for a dead
    worker. Let through, it would end the whole worker: Celery's parent process treats a
    child's MemoryError as unrecoverable and exits.
    """
    with session_scope() as session:
        attempt = attempts.begin(session, upload_id, settings().max_worker_losses)
    if not attempt.go:
        yield attempt
        return
    try:
        yield attempt
    except MemoryError as exc:
        raise Reject(f"{stage} of upload {upload_id} ran out of memory", requeue=True) from exc
    except RETRYABLE:
        _end_attempt(upload_id)
        raise
    except Exception as exc:  # noqa: BLE001 - whatever it is, the upload must settle
        # The type only: exception text may quote file contents (patient data).
        logging.getLogger(__name__).exception("%s of upload %s failed: %s", stage, upload_id,
                                              type(exc).__name__)
        with session_scope() as session:
            attempts.quarantine(session, upload_id, f"{stage}_failed",
                                f"{stage} failed ({type(exc).__name__}); see the worker log")
            attempts.end(session, upload_id)
    else:
        _end_attempt(upload_id)


def _end_attempt(upload_id: str) -> None:
    with session_scope() as session:
        attempts.end(session, upload_id)
