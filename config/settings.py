"""Typed settings from the environment; the only module that reads ``os.environ``.

Every variable is optional. Unset, the gateway runs on embedded defaults: a SQLite file
and a folder of objects under ``./var``, and a broker kept in a SQLite file, so the demo
and a laptop install need no services at all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

QUEUES = ("intake", "dicom", "pacs", "storage", "analytics", "exports", "teaching", "reports")


@dataclass(frozen=True)
class Settings:
    var_dir: Path = Path("var")
    database_url: str = ""
    broker_url: str = ""
    redis_url: str | None = None
    storage_url: str = ""
    # Reading a deflated file's header inflates it at most to this many bytes, and past
    # 8 MiB at most to this many times its deflated size; beyond, it is quarantined.
    dicom_inflate_max_bytes: int = 256 * 1024 * 1024
    dicom_inflate_max_ratio: int = 200
    # A parse or assembly that killed its worker this many times (out of memory, a crash) is
    # not tried again: the upload is quarantined ("worker_lost") instead of looping.
    max_worker_losses: int = 2
    # tus limits: a single DICOM file larger than this is refused with 413.
    max_upload_bytes: int = 2 * 1024**3
    # An upload nobody touched for this long expires (tus expiration extension).
    upload_expiry_seconds: int = 24 * 3600
    # Lease on an upload while one request writes a chunk; renewed while bytes flow.
    upload_lock_seconds: int = 120
    # A client that sends nothing for this long mid-request is cut off (what arrived of a
    # chunk is kept): a dead clinic link must not hold an API thread until TCP gives up.
    client_idle_timeout_seconds: int = 60
    # A batch never completed explicitly is forwarded after this many quiet seconds.
    batch_quiet_seconds: int = 120
    # Local copy of recently written/read instance objects on a worker host (pipeline/
    # byte_cache.py): spares S3 GETs when the same host parses and forwards. 0 turns it off.
    byte_cache_mb: int = 2048
    # Instances per STOW-RS request (measured against Orthanc: batches of 20-50 gave 201-243
    # instances/s, one instance per request 149-187).
    stow_batch_size: int = 40
    stow_timeout_seconds: float = 120.0
    delivery_max_attempts: int = 20
    # A forwarding run whose heartbeat (every sixth of this) stopped this long ago has a dead
    # worker: the re-drive, every third of this, hands its study to a new run. A run that
    # keeps beating is never taken over, however slow its PACS.
    claim_stale_seconds: int = 30
    # Work untouched this long with no task in flight is re-enqueued by the beat re-drive.
    redrive_after_seconds: int = 600
    # How often beat looks for such work.
    redrive_every_seconds: int = 60
    # Above the longest task and any ETA, else Redis redelivers running work.
    visibility_timeout_seconds: int = 6 * 3600
    cors_origins: tuple[str, ...] = ("*",)
    # Where the dashboard page opens its live event stream (EventSource). Same origin by
    # default: a proxy routes /dashboard/events to the ``relaypacs events`` process. Another
    # origin works when it lists the dashboard's origin in RELAYPACS_CORS_ORIGINS.
    dashboard_events_url: str = "/dashboard/events"
    # Where the pages load their content-hashed static assets from: "" serves them from this
    # app at /assets/; a CDN's URL (https://cdn.example/relaypacs/) that mirrors /assets/.
    asset_base_url: str = ""
    # Read replicas for analytics and listings; one skipped while down or lagging.
    database_replica_urls: tuple[str, ...] = ()
    replica_max_lag_seconds: int = 30
    # Requests per token per minute, by class (0: no limit); "login" counts dashboard sign-in
    # attempts per client address instead.
    rate_limits: tuple[tuple[str, int], ...] = (
        ("upload", 3000), ("read", 600), ("write", 120), ("login", 10))
    # tus uploads one user may have open (created, not finished) at once.
    max_open_uploads: int = 2000
    # Storage lifecycle; pipeline/lifecycle/policy.py validates the policy and prices.
    # Tiers as (class, from age in days): STANDARD 0-30 d, GLACIER_IR 30-365 d, then DEEP_ARCHIVE
    # (pipeline.lifecycle.policy.DEFAULT_TIERS says why 30 and not the 90).
    storage_tiers: tuple[tuple[str, int], ...] = (("STANDARD", 0), ("GLACIER_IR", 30), ("DEEP_ARCHIVE", 365))
    # "gateway": the nightly job copies objects to colder classes itself; "s3": it writes the
    # equivalent bucket lifecycle rules instead, for stores that execute them.
    storage_managed_by: str = "gateway"
    # USD per GB-month by class, over the built-in us-east-1 list prices.
    storage_prices: tuple[tuple[str, float], ...] = ()
    # Instances smaller than this go cold inside their study's bundle: one transition request
    # per study instead of one per slice (pipeline.lifecycle.policy.DEFAULT_BUNDLE_BELOW says why 8 MiB).
    storage_bundle_below_bytes: int = 8 * 1024 * 1024
    storage_tier_concurrency: int = 8
    # A restored archive object stays readable this long; the S3 restore tier asked for.
    storage_restore_days: int = 7
    storage_restore_tier: str = "Standard"
    storage_abort_multipart_days: int = 2
    # Share of the bytes in IA/GLACIER_IR read back per month: the cost report's retrieval fees.
    storage_cold_reads_per_month: float = 0.02
    # Rewritten renditions are deleted after this many days (rebuilt from the original if needed).
    storage_rendition_days: int = 7
    # Disaster-recovery copy: a second bucket, optionally on its own endpoint and credentials.
    dr_storage_url: str | None = None
    dr_endpoint_url: str | None = None
    dr_access_key_id: str | None = None
    dr_secret_access_key: str | None = field(default=None, repr=False)
    dr_region: str | None = None
    dr_storage_class: str = "GLACIER_IR"
    # Scheduled exports: SMTP as smtp://[user:pass@]host:port[?starttls=1].
    smtp_url: str | None = None
    mail_from: str = "relaypacs@localhost"
    # Attachments up to this size in total; above it the mail carries presigned links.
    export_attachment_limit_bytes: int = 10 * 1024**2
    export_link_ttl_seconds: int = 7 * 24 * 3600
    # A run "working" this long has a dead worker: the dispatcher queues it again.
    export_working_timeout_seconds: int = 1800
    export_max_attempts: int = 5
    export_retry_base_seconds: int = 60
    # The DICOM listener (relaypacs scp). Associations served at once; one more is rejected
    # as transient ("local limit exceeded"), so the modality retries later. Each association
    # holds a thread and, while it stores, a database connection (the pool has 30).
    scp_max_associations: int = 20
    # A data set larger than this is not received: the association is aborted once that many
    # bytes of it arrived. Unset, the tus limit (RELAYPACS_MAX_UPLOAD_BYTES) applies.
    scp_max_dataset_bytes: int = 2 * 1024**3
    # DICOM TLS: the listener speaks TLS only when a certificate and key (PEM) are given; with
    # a CA bundle, callers must present a certificate it signed.
    scp_tls_cert: Path | None = None
    scp_tls_key: Path | None = None
    scp_tls_ca: Path | None = None
    # Fernet keys (url-safe base64, 32 bytes) for secrets at rest, newest first: the first
    # encrypts, every one decrypts (rotation). Unset with the embedded SQLite database, a key
    # is generated once in the var folder (secret.key, mode 0600).
    secret_keys: tuple[str, ...] = field(default=(), repr=False)
    # Sign-in sessions: one ends after this long without a request, and at the latest
    # this long after sign-in whatever the activity.
    session_idle_seconds: int = 30 * 60
    session_lifetime_seconds: int = 12 * 3600
    # How long a mailed password-reset link works.
    password_reset_ttl_seconds: int = 3600
    # Where people reach the gateway (https://gateway.example): the base of the links in
    # password-reset mails. Never taken from a request's Host header, which anyone can set.
    public_url: str | None = None
    # Proxies in front of the API whose X-Forwarded-For/-Proto/-Host/-Port are believed (0:
    # none; behind one nginx: 1). More than the real number lets a client forge its address.
    trusted_proxies: int = 0
    # Load shedding (api/http/shedding.py): a request a proxy stamped with X-Request-Start
    # more than shed_queue_ms ago is answered 503 + Retry-After (0: never); a process with
    # max_in_flight requests in progress answers the next the same way (0: no bound, the
    # default: a tus PATCH over a slow link is in progress for seconds without using the CPU,
    # so the bound suits read-only pods and deployments without a proxy, set below --threads).
    max_in_flight: int = 0
    shed_queue_ms: int = 1000
    # An open event stream checks this often that its token or session still works.
    events_auth_recheck_seconds: float = 20.0
    # The event outbox (pipeline/ops/outbox.py): a RabbitMQ topic exchange that also gets every
    # event when set (amqp://...), how long sent events stay replayable (at least 7 days), and
    # how often `relaypacs events-relay` sweeps for events a dead process left behind.
    events_amqp_url: str | None = None
    events_amqp_exchange: str = "relaypacs.events"
    events_retention_days: int = 8
    events_relay_poll_seconds: float = 1.0
    # GraphQL introspection (the schema's self-description) is off unless turned on: a
    # production API need not hand its map to every token holder; development turns it on.
    graphql_introspection: bool = False
    # Teaching file: the HMAC key for de-identified UIDs, pseudonyms and date shifts (unset: one
    # generated once in the var folder), and the root of the new UIDs ("2.25": UUID-derived).
    teaching_secret: str | None = field(default=None, repr=False)
    teaching_uid_root: str = "2.25"
    # Retain Safe Private: the (private creator, element byte) pairs a case with that option
    # keeps; none by default, so the option keeps nothing until an operator lists some.
    teaching_safe_private: tuple[tuple[str, int], ...] = ()
    extra: dict[str, str] = field(default_factory=dict)

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def _number(env: dict[str, str], name: str, default: T, cast: Callable[[str], T], kind: str) -> T:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be {kind}, got {raw!r}") from exc


def _int(env: dict[str, str], name: str, default: int) -> int:
    return _number(env, name, default, int, "an integer")


def _float(env: dict[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, "a number")


def _pairs(env: dict[str, str], name: str, cast: type, default: tuple) -> tuple:
    """``A:1,B:2`` (or ``A=1``) as ((A, 1), (B, 2)); meaning is checked by the consumer."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    pairs = []
    for part in raw.split(","):
        key, sep, value = part.replace("=", ":").partition(":")
        try:
            pairs.append((key.strip().upper(), cast(value.strip())))
        except ValueError as exc:
            raise ValueError(f"{name} is like STANDARD:0,GLACIER_IR:90; bad part {part!r}") from exc
        if not sep or not key.strip():
            raise ValueError(f"{name} is like STANDARD:0,GLACIER_IR:90; bad part {part!r}")
    return tuple(pairs)


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build settings from ``env`` (``os.environ`` by default)."""
    env = dict(os.environ if env is None else env)
    var_dir = Path(env.get("RELAYPACS_VAR_DIR", "var")).absolute()
    database_url = env.get("RELAYPACS_DATABASE_URL") or f"sqlite:///{var_dir / 'relaypacs.sqlite'}"
    broker_url = env.get("RELAYPACS_BROKER_URL") or f"sqla+sqlite:///{var_dir / 'broker.sqlite'}"
    storage_url = env.get("RELAYPACS_STORAGE_URL") or f"file://{var_dir / 'objects'}"
    origins = tuple(
        o.strip() for o in env.get("RELAYPACS_CORS_ORIGINS", "*").split(",") if o.strip()
    )
    def path(name: str) -> Path | None:
        raw = env.get(name, "").strip()
        return Path(raw).absolute() if raw else None

    rate_limits = dict(Settings.rate_limits)
    for part in env.get("RELAYPACS_RATE_LIMITS", "").split(","):
        name, _, value = part.partition("=")
        if name.strip():
            if name.strip() not in rate_limits or not value.strip().isdigit():
                raise ValueError(
                    "RELAYPACS_RATE_LIMITS is like upload=3000,read=600,write=120,login=10")
            rate_limits[name.strip()] = int(value)
    return Settings(
        var_dir=var_dir,
        database_url=database_url,
        broker_url=broker_url,
        redis_url=env.get("RELAYPACS_REDIS_URL") or None,
        storage_url=storage_url,
        max_upload_bytes=_int(env, "RELAYPACS_MAX_UPLOAD_BYTES", Settings.max_upload_bytes),
        dicom_inflate_max_bytes=_int(
            env, "RELAYPACS_DICOM_INFLATE_MAX_BYTES", Settings.dicom_inflate_max_bytes),
        dicom_inflate_max_ratio=_int(
            env, "RELAYPACS_DICOM_INFLATE_MAX_RATIO", Settings.dicom_inflate_max_ratio),
        max_worker_losses=_int(env, "RELAYPACS_MAX_WORKER_LOSSES", Settings.max_worker_losses),
        upload_expiry_seconds=_int(
            env, "RELAYPACS_UPLOAD_EXPIRY_SECONDS", Settings.upload_expiry_seconds
        ),
        upload_lock_seconds=_int(env, "RELAYPACS_UPLOAD_LOCK_SECONDS", Settings.upload_lock_seconds),
        client_idle_timeout_seconds=_int(
            env, "RELAYPACS_CLIENT_IDLE_TIMEOUT_SECONDS", Settings.client_idle_timeout_seconds),
        batch_quiet_seconds=_int(env, "RELAYPACS_BATCH_QUIET_SECONDS", Settings.batch_quiet_seconds),
        stow_batch_size=_int(env, "RELAYPACS_STOW_BATCH_SIZE", Settings.stow_batch_size),
        byte_cache_mb=_int(env, "RELAYPACS_BYTE_CACHE_MB", Settings.byte_cache_mb),
        delivery_max_attempts=_int(
            env, "RELAYPACS_DELIVERY_MAX_ATTEMPTS", Settings.delivery_max_attempts
        ),
        claim_stale_seconds=_int(env, "RELAYPACS_CLAIM_STALE_SECONDS", Settings.claim_stale_seconds),
        redrive_after_seconds=_int(env, "RELAYPACS_REDRIVE_AFTER_SECONDS", Settings.redrive_after_seconds),
        redrive_every_seconds=_int(env, "RELAYPACS_REDRIVE_EVERY_SECONDS", Settings.redrive_every_seconds),
        visibility_timeout_seconds=_int(
            env, "RELAYPACS_VISIBILITY_TIMEOUT_SECONDS", Settings.visibility_timeout_seconds
        ),
        cors_origins=origins or ("*",),
        dashboard_events_url=env.get("RELAYPACS_DASHBOARD_EVENTS_URL") or Settings.dashboard_events_url,
        asset_base_url=env.get("RELAYPACS_ASSET_BASE_URL", "").strip(),
        database_replica_urls=tuple(
            u.strip() for u in env.get("RELAYPACS_DATABASE_REPLICA_URLS", "").split(",") if u.strip()
        ),
        replica_max_lag_seconds=_int(
            env, "RELAYPACS_REPLICA_MAX_LAG_SECONDS", Settings.replica_max_lag_seconds
        ),
        rate_limits=tuple(rate_limits.items()),
        max_open_uploads=_int(env, "RELAYPACS_MAX_OPEN_UPLOADS", Settings.max_open_uploads),
        storage_tiers=_pairs(env, "RELAYPACS_STORAGE_TIERS", int, Settings.storage_tiers),
        storage_managed_by=env.get("RELAYPACS_STORAGE_MANAGED_BY") or Settings.storage_managed_by,
        storage_prices=_pairs(env, "RELAYPACS_STORAGE_PRICES", float, ()),
        storage_bundle_below_bytes=_int(
            env, "RELAYPACS_STORAGE_BUNDLE_BELOW_BYTES", Settings.storage_bundle_below_bytes
        ),
        storage_tier_concurrency=_int(
            env, "RELAYPACS_STORAGE_TIER_CONCURRENCY", Settings.storage_tier_concurrency
        ),
        storage_restore_days=_int(env, "RELAYPACS_STORAGE_RESTORE_DAYS", Settings.storage_restore_days),
        storage_restore_tier=env.get("RELAYPACS_STORAGE_RESTORE_TIER") or Settings.storage_restore_tier,
        storage_abort_multipart_days=_int(
            env, "RELAYPACS_STORAGE_ABORT_MULTIPART_DAYS", Settings.storage_abort_multipart_days
        ),
        storage_cold_reads_per_month=_float(
            env, "RELAYPACS_STORAGE_COLD_READS_PER_MONTH", Settings.storage_cold_reads_per_month
        ),
        storage_rendition_days=_int(env, "RELAYPACS_STORAGE_RENDITION_DAYS", Settings.storage_rendition_days),
        dr_storage_url=env.get("RELAYPACS_DR_STORAGE_URL") or None,
        dr_endpoint_url=env.get("RELAYPACS_DR_ENDPOINT_URL") or None,
        dr_access_key_id=env.get("RELAYPACS_DR_ACCESS_KEY_ID") or None,
        dr_secret_access_key=env.get("RELAYPACS_DR_SECRET_ACCESS_KEY") or None,
        dr_region=env.get("RELAYPACS_DR_REGION") or None,
        dr_storage_class=env.get("RELAYPACS_DR_STORAGE_CLASS") or Settings.dr_storage_class,
        smtp_url=env.get("RELAYPACS_SMTP_URL") or None,
        mail_from=env.get("RELAYPACS_MAIL_FROM") or Settings.mail_from,
        export_attachment_limit_bytes=_int(
            env, "RELAYPACS_EXPORT_ATTACHMENT_LIMIT_BYTES", Settings.export_attachment_limit_bytes
        ),
        export_link_ttl_seconds=_int(
            env, "RELAYPACS_EXPORT_LINK_TTL_SECONDS", Settings.export_link_ttl_seconds
        ),
        export_working_timeout_seconds=_int(
            env, "RELAYPACS_EXPORT_WORKING_TIMEOUT_SECONDS", Settings.export_working_timeout_seconds
        ),
        export_max_attempts=_int(env, "RELAYPACS_EXPORT_MAX_ATTEMPTS", Settings.export_max_attempts),
        export_retry_base_seconds=_int(
            env, "RELAYPACS_EXPORT_RETRY_BASE_SECONDS", Settings.export_retry_base_seconds
        ),
        scp_max_associations=_int(env, "RELAYPACS_SCP_MAX_ASSOCIATIONS", Settings.scp_max_associations),
        scp_max_dataset_bytes=_int(
            env, "RELAYPACS_SCP_MAX_DATASET_BYTES",
            _int(env, "RELAYPACS_MAX_UPLOAD_BYTES", Settings.max_upload_bytes)),
        scp_tls_cert=path("RELAYPACS_SCP_TLS_CERT"),
        scp_tls_key=path("RELAYPACS_SCP_TLS_KEY"),
        scp_tls_ca=path("RELAYPACS_SCP_TLS_CA"),
        secret_keys=tuple(
            k.strip() for k in env.get("RELAYPACS_SECRET_KEY", "").split(",") if k.strip()),
        session_idle_seconds=_int(env, "RELAYPACS_SESSION_IDLE_SECONDS", Settings.session_idle_seconds),
        session_lifetime_seconds=_int(
            env, "RELAYPACS_SESSION_LIFETIME_SECONDS", Settings.session_lifetime_seconds),
        password_reset_ttl_seconds=_int(
            env, "RELAYPACS_PASSWORD_RESET_TTL_SECONDS", Settings.password_reset_ttl_seconds),
        public_url=(env.get("RELAYPACS_PUBLIC_URL") or "").rstrip("/") or None,
        trusted_proxies=_int(env, "RELAYPACS_TRUSTED_PROXIES", Settings.trusted_proxies),
        max_in_flight=_int(env, "RELAYPACS_MAX_IN_FLIGHT", Settings.max_in_flight),
        shed_queue_ms=_int(env, "RELAYPACS_SHED_QUEUE_MS", Settings.shed_queue_ms),
        events_auth_recheck_seconds=_float(
            env, "RELAYPACS_EVENTS_AUTH_RECHECK_SECONDS", Settings.events_auth_recheck_seconds),
        events_amqp_url=env.get("RELAYPACS_EVENTS_AMQP_URL") or None,
        events_amqp_exchange=env.get("RELAYPACS_EVENTS_AMQP_EXCHANGE") or Settings.events_amqp_exchange,
        events_retention_days=max(7, _int(
            env, "RELAYPACS_EVENTS_RETENTION_DAYS", Settings.events_retention_days)),
        events_relay_poll_seconds=_float(
            env, "RELAYPACS_EVENTS_RELAY_POLL_SECONDS", Settings.events_relay_poll_seconds),
        graphql_introspection=env.get("RELAYPACS_GRAPHQL_INTROSPECTION", "").lower() in ("1", "true", "yes"),
        teaching_secret=env.get("RELAYPACS_TEACHING_SECRET") or None,
        teaching_uid_root=_uid_root(env.get("RELAYPACS_TEACHING_UID_ROOT") or Settings.teaching_uid_root),
        teaching_safe_private=_safe_private(env.get("RELAYPACS_TEACHING_SAFE_PRIVATE", "")),
    )


def _safe_private(raw: str) -> tuple[tuple[str, int], ...]:
    """``GEMS_ACQU_01|10;SIEMENS CSA HEADER|08``: private creator, then the element byte (hex)."""
    pairs = []
    for part in raw.split(";"):
        if not part.strip():
            continue
        creator, sep, element = part.rpartition("|")
        try:
            byte = int(element.strip(), 16)
        except ValueError:
            byte = -1
        if not sep or not creator.strip() or not 0 <= byte <= 0xFF:
            raise ValueError("RELAYPACS_TEACHING_SAFE_PRIVATE is like GEMS_ACQU_01|10;OTHER CREATOR|2B; "
                             f"bad part {part!r}")
        pairs.append((creator.strip(), byte))
    return tuple(pairs)


def _uid_root(raw: str) -> str:
    root = raw.strip().rstrip(".")
    if not re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*", root) or len(root) > 40:
        raise ValueError("RELAYPACS_TEACHING_UID_ROOT is a UID root like 2.25 or 1.2.826.0.1.3680043.10.NNN "
                         "(at most 40 characters, leaving room for the number)")
    return root
