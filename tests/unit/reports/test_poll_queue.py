"""The report poll runs on a queue of its own (``reports``), with its own worker service in
docker-compose: beat's tick and any manual run land there, never on ``pacs`` (forwarding)."""

from __future__ import annotations

from beat_schedule import BEAT_SCHEDULE
from config.settings import QUEUES


def _queue_of(task_name: str) -> str:
    from workers.app import app

    return app.amqp.router.route({}, task_name)["queue"].name


def test_the_report_poll_has_its_own_queue():
    entries = [e for e in BEAT_SCHEDULE.values() if e["task"] == "reports.poll_pacs"]
    assert len(entries) == 1 and "queue" not in entries[0].get("options", {})  # routed by config
    assert "reports" in QUEUES
    assert _queue_of("reports.poll_pacs") == "reports"
    assert _queue_of("pacs.forward_study") == "pacs"  # forwarding stays where it was
