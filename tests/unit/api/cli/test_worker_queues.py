"""``relaypacs worker`` with no ``-Q`` (a small site's single worker) serves every queue work
can be sent to: each task route's queue and each beat job's (beat also sends a canary to
every queue), so no periodic job waits in a queue nobody consumes. docker-compose names one
queue per service instead (tests/unit/test_compose.py)."""

from __future__ import annotations

from click.testing import CliRunner

from api.cli import main
from beat_schedule import BEAT_SCHEDULE
from config.celery import TASK_ROUTES
from config.settings import QUEUES


def _default_worker_queues(monkeypatch) -> set[str]:  # noqa: ANN001
    from workers.app import app

    started: list[list[str]] = []
    monkeypatch.setattr(app, "worker_main", started.append)
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 0, result.output
    argv = started[0]
    return set(argv[argv.index("-Q") + 1].split(","))


def _queue_of(task_name: str) -> str:
    from workers.app import app

    return app.amqp.router.route({}, task_name)["queue"].name


def test_the_default_worker_serves_every_routed_queue(monkeypatch):
    assert {route["queue"] for route in TASK_ROUTES.values()} <= _default_worker_queues(monkeypatch)


def test_the_default_worker_serves_every_queue_beat_sends_to(monkeypatch):
    served = _default_worker_queues(monkeypatch)
    beat_queues = {_queue_of(entry["task"]) for entry in BEAT_SCHEDULE.values()}
    assert "reports" in beat_queues  # the report poll, reports.poll_pacs
    assert beat_queues <= served
    assert set(QUEUES) <= served  # health.send_canaries: one canary per queue
