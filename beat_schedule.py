"""Every periodic job, in one table: task name, schedule (seconds), options.

Intervals that operators tune come from settings; the rest are fixed here.
"""

from celery.schedules import crontab

from config import load_settings

_settings = load_settings()

BEAT_SCHEDULE: dict[str, dict] = {
    "forward-quiet-batches": {
        "task": "pacs.forward_quiet_batches",
        "schedule": 15.0,
        "options": {"expires": 14},
    },
    "redrive-stuck-work": {
        "task": "intake.redrive_stuck_work",
        "schedule": float(_settings.redrive_every_seconds),
        "options": {"expires": max(_settings.redrive_every_seconds - 1, 1)},
    },
    # A killed worker's study: taken over once its heartbeat is older than the stale age.
    "redrive-dead-senders": {
        "task": "intake.redrive_dead_senders",
        "schedule": max(_settings.claim_stale_seconds / 3, 1.0),
        "options": {"expires": max(_settings.claim_stale_seconds / 3, 1.0)},
    },
    # Sent events older than RELAYPACS_EVENTS_RETENTION_DAYS (at least 7) leave the outbox,
    # at most 200,000 rows a run in bounded deletes, so a backlog never holds a long lock.
    "events-prune-outbox": {
        "task": "events.prune_outbox",
        "schedule": 3600.0,
        "options": {"expires": 3500},
    },
    # Ended sign-in sessions and spent reset links, 30 days after they ended (the audit trail
    # keeps the sign-ins): bounded deletes, daily.
    "accounts-prune-sign-ins": {
        "task": "accounts.prune_sign_ins",
        "schedule": crontab(hour=3, minute=45),
        "options": {"expires": 6 * 3600},
    },
    "send-queue-canaries": {
        "task": "health.send_canaries",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "expire-abandoned-uploads": {
        "task": "intake.expire_abandoned_uploads",
        "schedule": 3600.0,
        "options": {"expires": 3500},
    },
    # Consults: a reminder before the due time, and past it the consult goes back to the pool
    # (locked rows, skip-locked: a second beat is harmless). Daily digests of notices, hourly
    # (each user's digest is a day apart). Both on the exports pool, which mails.
    "consults-check-due": {
        "task": "consults.check_due",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "consults-send-digests": {
        "task": "consults.send_digests",
        "schedule": 3600.0,
        "options": {"expires": 3500},
    },
    # Scheduled exports: schedules live in export_definitions; this tick creates
    # the due runs (unique per export and slot, so a second beat is harmless).
    "exports-dispatch-due": {
        "task": "exports.dispatch_due",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Hourly stats for dashboards: incremental, so a minute's run touches only what changed.
    "analytics-refresh-stats": {
        "task": "analytics.refresh_stats",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Upload volume forecasts, weekly (Monday before the working day): fans out one task per
    # facility on the analytics queue.
    "analytics-forecast-volumes": {
        "task": "analytics.forecast_all",
        "schedule": crontab(day_of_week="mon", hour=3, minute=30),
        "options": {"expires": 6 * 3600},
    },
    # Next-48-hour forecasts, hourly just after the stats refresh has closed the last hour:
    # light models (milliseconds a facility), one task per facility.
    "analytics-forecast-hours": {
        "task": "analytics.forecast_hours_all",
        "schedule": crontab(minute=5),
        "options": {"expires": 50 * 60},
    },
    # Storage lifecycle (queue storage by its route): nightly tiering, resumable and locked,
    # so a second or a killed run is harmless; restores polled; DR copies hourly.
    "storage-lifecycle": {
        "task": "storage.run_lifecycle",
        "schedule": crontab(hour=2, minute=15),
        "options": {"expires": 6 * 3600},
    },
    "storage-process-restores": {
        "task": "storage.process_restores",
        "schedule": 600.0,
        "options": {"expires": 590},
    },
    "storage-replicate": {
        "task": "storage.replicate",
        "schedule": 3600.0,
        "options": {"expires": 3500},
    },
    # Radiology reports back from the PACS: each minute, each DICOMweb destination is asked
    # about its due delivered studies (schedule and backoff: pipeline/reports/poll.py), on the
    # ``reports`` queue and its own worker pool (config/celery.py routes reports.*).
    "reports-poll-pacs": {
        "task": "reports.poll_pacs",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Teaching cases that waited for a restore (or whose task was lost) try again.
    "teaching-resume-waiting": {
        "task": "teaching.resume_waiting",
        "schedule": 600.0,
        "options": {"expires": 590},
    },
}
