"""Celery configuration built from settings: queues, routes, reliability options."""

from __future__ import annotations

from kombu import Queue

from config.settings import QUEUES, Settings

# Stable task names (area.verb_noun) routed to their stage's queue.
TASK_ROUTES = {
    "intake.*": {"queue": "intake"},
    "dicom.*": {"queue": "dicom"},
    "pacs.*": {"queue": "pacs"},
    "storage.*": {"queue": "storage"},
    "analytics.*": {"queue": "analytics"},
    "exports.*": {"queue": "exports"},
    # The report poll asks every DICOMweb destination about its delivered studies: a pool of
    # its own, so a long poll never delays forwarding (pacs) and each scales on its own.
    "reports.*": {"queue": "reports"},
    # Comment mail, digests, consult reminders, addendum filing: the pool that mails.
    "consults.*": {"queue": "exports"},
    "teaching.*": {"queue": "teaching"},
    # The canary sender; each canary itself is sent to the queue it tests.
    "health.*": {"queue": "intake"},
    # Outbox housekeeping (a bounded delete an hour): light, beside the canary sender.
    "events.*": {"queue": "intake"},
    "accounts.*": {"queue": "intake"},
}


def celery_config(settings: Settings) -> dict:
    # visibility_timeout is a Redis/SQS transport option; kombu's SQLAlchemy transport (the
    # embedded sqla+sqlite broker) hands its options to create_engine, which refuses it.
    redelivering = settings.broker_url.startswith(("redis", "rediss", "sqs"))
    transport_options = (
        {"visibility_timeout": settings.visibility_timeout_seconds} if redelivering else {}
    )
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport_options,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_queues": [Queue(name) for name in QUEUES],
        "task_default_queue": "intake",
        "task_routes": TASK_ROUTES,
        # A task is acknowledged only when it finished, and a worker killed mid-task gives
        # it back: with idempotent bodies, a redelivery is harmless.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": 3600,
        "task_soft_time_limit": 3300,
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        "enable_utc": True,
    }
