"""Liveness, readiness, Prometheus metrics and the OpenAPI description."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import func, select, text

from api.http.auth import require
from api.http.context import db, resources
from api.http.openapi import openapi_document
from config.settings import QUEUES
from pipeline.models import (
    Batch,
    BreakerState,
    Delivery,
    DeliveryState,
    Destination,
    DestinationHealth,
    ExportRun,
    ExportRunState,
    Upload,
)
from pipeline.ops import liveness
from pipeline.ops.telemetry import gauge, render

blueprint = Blueprint("health", __name__)


@blueprint.route("/healthz")
def healthz():  # noqa: ANN201
    return jsonify({"status": "ok"})


@blueprint.route("/readyz")
def readyz():  # noqa: ANN201
    checks: dict[str, str] = {}
    try:
        db().execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        from workers.app import app as celery_app

        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"error: {type(exc).__name__}"
    try:
        resources().store.ping()
        checks["storage"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["storage"] = f"error: {type(exc).__name__}"
    queues = liveness.canary_report(db())
    for queue, state in queues.items():
        if state["stale"]:
            checks[f"queue:{queue}"] = "error: canary not consumed"
    ready = all(v == "ok" for v in checks.values())
    response = jsonify({"ready": ready, "checks": checks, "queues": queues})
    response.status_code = 200 if ready else 503
    return response


def _by_state(rows) -> list[tuple[dict, int]]:  # noqa: ANN001
    return [({"state": state}, count) for state, count in rows]


@blueprint.route("/metrics")
def metrics() -> Response:
    session = db()
    names = dict(session.execute(select(Destination.id, Destination.name)).all())
    lines = [
        *gauge("relaypacs_uploads", "Uploads by state.", _by_state(
            session.execute(select(Upload.state, func.count()).group_by(Upload.state)))),
        *gauge("relaypacs_batches", "Batches by state.", _by_state(
            session.execute(select(Batch.state, func.count()).group_by(Batch.state)))),
        *gauge("relaypacs_deliveries", "Deliveries by state.", _by_state(
            session.execute(select(Delivery.state, func.count()).group_by(Delivery.state)))),
        *gauge("relaypacs_queue_canary_age_seconds", "Seconds since a canary was consumed.", [
            ({"queue": queue}, f'{state["consumed_age_seconds"]:.1f}')
            for queue, state in liveness.canary_report(session).items()
            if state["consumed_age_seconds"] is not None]),
        *gauge("relaypacs_destination_breaker_open", "1 when the destination's breaker is open.", [
            ({"destination": names.get(health.destination_id)}, int(health.state == BreakerState.OPEN))
            for health in session.scalars(select(DestinationHealth))]),
        *gauge("relaypacs_deliveries_by_destination", "Deliveries by destination and state.", [
            ({"destination": names.get(destination_id), "state": state}, count)
            for destination_id, state, count in session.execute(
                select(Delivery.destination_id, Delivery.state, func.count())
                .group_by(Delivery.destination_id, Delivery.state))]),
        *_dead_letters(session, names),
        *_queue_depths(),
        *render(resources().telemetry.snapshot()),
    ]
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")


def _dead_letters(session, names: dict[int, str]) -> list[str]:  # noqa: ANN001
    """Work that gave up and waits for a person: failed deliveries per destination and failed
    report runs. Always written (0 included) so an alert on ``> 0`` has a series to watch."""
    failed = dict(session.execute(
        select(Delivery.destination_id, func.count()).where(Delivery.state == DeliveryState.FAILED)
        .group_by(Delivery.destination_id)).all())
    runs = session.scalar(select(func.count()).select_from(ExportRun)
                          .where(ExportRun.state == ExportRunState.FAILED))
    return gauge("relaypacs_dead_letters", "Work that gave up and waits for a replay.", [
        *(({"kind": "delivery", "destination": name}, failed.get(destination_id, 0))
          for destination_id, name in sorted(names.items())),
        ({"kind": "report_run"}, runs)])


def _queue_depths() -> list[str]:
    """Messages waiting per queue (Redis broker: the queue is a list of that name)."""
    broker = resources().settings.broker_url
    if not broker.startswith("redis"):
        return []
    import redis

    try:
        client = redis.Redis.from_url(broker, socket_timeout=1, socket_connect_timeout=1)
        depths = {queue: client.llen(queue) for queue in QUEUES}
    except Exception:  # noqa: BLE001 - the broker check belongs to /readyz
        return []
    return gauge("relaypacs_queue_depth", None,
                 [({"queue": queue}, depth) for queue, depth in depths.items()])


@blueprint.route("/api/v1/openapi.json")
@require()
def openapi():  # noqa: ANN201
    """The OpenAPI 3 description of every /api/v1 route. Built once per process: the routes
    are fixed at start-up, and building it (pydantic schemas) took ~7 ms a request."""
    body = current_app.extensions.get("relaypacs.openapi")
    if body is None:
        body = current_app.extensions.setdefault("relaypacs.openapi",
                                                 jsonify(openapi_document(current_app)).get_data())
    return current_app.response_class(body, mimetype="application/json")
