"""Deliveries for admins: list them (dead letters first of all) and replay them."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from api.auth import actor, require
from api.context import db
from api.errors import ApiError
from pipeline import audit
from pipeline.batch_progress import reopen_for_replay
from pipeline.delivery_queries import SelectionError, describe, select_deliveries
from pipeline.forwarding import replay
from pipeline.models import Role
from workers import chains

blueprint = Blueprint("deliveries", __name__)


def _int_arg(name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise ApiError(400, f"{name} must be a positive integer")
    return int(raw)


@blueprint.route("", methods=["GET"])
@require(Role.ADMIN)
def list_deliveries():  # noqa: ANN201
    limit = min(_int_arg("limit") or 100, 1000)
    try:
        query = select_deliveries(status=request.args.get("status", "failed"),
                                  batch_id=_int_arg("batch_id"),
                                  destination=request.args.get("destination"))
    except SelectionError as exc:
        raise ApiError(400, str(exc)) from exc
    session = db()
    return jsonify({"deliveries": describe(session, session.scalars(query.limit(limit)).all())})


@blueprint.route("/retry", methods=["POST"])
@require(Role.ADMIN)
def retry():  # noqa: ANN201
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object: {ids|batch_id|destination|all}")
    unknown = set(body) - {"ids", "batch_id", "destination", "all"}
    if unknown:
        raise ApiError(400, f"unknown fields: {', '.join(sorted(unknown))}")
    ids = body.get("ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, int) and i > 0 for i in ids):
        raise ApiError(400, "ids must be a list of delivery ids")
    batch_id = body.get("batch_id")
    if batch_id is not None and (not isinstance(batch_id, int) or batch_id <= 0):
        raise ApiError(400, "batch_id must be a positive integer")
    destination = body.get("destination")
    if destination is not None and not isinstance(destination, str):
        raise ApiError(400, "destination must be a destination name")
    if not isinstance(body.get("all", False), bool):
        raise ApiError(400, "all must be true or false")
    try:
        query = select_deliveries(status="failed", ids=ids, batch_id=batch_id,
                                  destination=destination, everything=body.get("all", False))
    except SelectionError as exc:
        raise ApiError(400, str(exc)) from exc
    session = db()
    chosen = session.scalars(query).all()
    pairs = replay(session, chosen)
    reopen_for_replay(session, {d.batch_id for d in chosen})
    audit.record(session, actor(), "deliveries.replayed", None,
                 {"count": len(chosen), "selection": {k: v for k, v in body.items() if k != "ids"},
                  "ids": [d.id for d in chosen][:1000]})
    session.commit()
    chains.enqueue_forwarding(pairs)  # after the commit that made them pending
    return jsonify({"replayed": len(chosen), "study_forwards": len(pairs)})
