"""Deliveries for admins: list them (dead letters first of all) and replay them."""

from __future__ import annotations

from flask import Blueprint, g, jsonify
from pydantic import BaseModel, ConfigDict, Field

from api.http.auth import actor, require
from api.http.context import db
from api.http.errors import ApiError
from api.http.openapi import operation
from pipeline.accounts import audit
from pipeline.delivery.dead_letters import SelectionError, describe, select_deliveries
from pipeline.delivery.forwarding import replay
from pipeline.intake.batches import reopen_for_replay
from pipeline.models import DeliveryState, Role
from workers import chains

blueprint = Blueprint("deliveries", __name__)


class DeliveryQuery(BaseModel):
    status: DeliveryState = DeliveryState.FAILED
    batch_id: int | None = Field(None, ge=1)
    destination: str | None = Field(None, max_length=100)
    limit: int = Field(100, ge=1, le=1000)


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    ids: list[int] = Field(default_factory=list, max_length=10_000)
    batch_id: int | None = Field(None, ge=1)
    destination: str | None = Field(None, max_length=100)
    everything: bool = Field(False, alias="all", description="every failed delivery")


@blueprint.route("", methods=["GET"])
@require(Role.ADMIN)
@operation("List deliveries (by default the dead letters)", query=DeliveryQuery)
def list_deliveries():  # noqa: ANN201
    query: DeliveryQuery = g.query
    try:
        selection = select_deliveries(status=query.status.value, batch_id=query.batch_id,
                                      destination=query.destination)
    except SelectionError as exc:
        raise ApiError(400, str(exc)) from exc
    session = db()
    rows = session.scalars(selection.limit(query.limit)).all()
    return jsonify({"deliveries": describe(session, rows)})


@blueprint.route("/retry", methods=["POST"])
@require(Role.ADMIN)
@operation("Replay failed deliveries by id, batch, destination or all", body=RetryRequest)
def retry():  # noqa: ANN201
    body: RetryRequest = g.body
    try:
        selection = select_deliveries(status="failed", ids=body.ids, batch_id=body.batch_id,
                                      destination=body.destination, everything=body.everything)
    except SelectionError as exc:
        raise ApiError(400, str(exc)) from exc
    session = db()
    chosen = session.scalars(selection).all()
    pairs = replay(session, chosen)
    reopen_for_replay(session, {d.batch_id for d in chosen})
    audit.record(session, actor(), "deliveries.replayed", None, {
        "count": len(chosen), "batch_id": body.batch_id, "destination": body.destination,
        "all": body.everything, "ids": [d.id for d in chosen][:1000]})
    session.commit()
    chains.enqueue_forwarding(pairs)  # after the commit that made them pending
    return jsonify({"replayed": len(chosen), "study_forwards": len(pairs)})
