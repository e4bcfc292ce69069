"""The audit trail for admins: newest first, filterable, paged by id."""

from __future__ import annotations

from flask import Blueprint, g, jsonify
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.http.auth import require
from api.http.context import db
from api.http.openapi import operation
from pipeline.models import AuditEvent, Role

blueprint = Blueprint("audit", __name__)


class AuditQuery(BaseModel):
    before_id: int | None = Field(None, ge=1, description="page: events older than this id")
    user_id: int | None = Field(None, ge=1)
    facility_id: int | None = Field(None, ge=1)
    action: str | None = Field(None, max_length=64)
    limit: int = Field(100, ge=1, le=1000)


@blueprint.route("", methods=["GET"])
@require(Role.ADMIN)
@operation("The audit trail, newest first", query=AuditQuery)
def list_events():  # noqa: ANN201
    q: AuditQuery = g.query
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(q.limit)
    if q.before_id:
        query = query.where(AuditEvent.id < q.before_id)
    if q.user_id:
        query = query.where(AuditEvent.user_id == q.user_id)
    if q.facility_id:
        query = query.where(AuditEvent.facility_id == q.facility_id)
    if q.action:
        query = query.where(AuditEvent.action == q.action)
    return jsonify({"events": [event_json(e) for e in db().scalars(query)]})


def event_json(event: AuditEvent) -> dict:
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "user_id": event.user_id,
        "facility_id": event.facility_id,
        "action": event.action,
        "target": event.target,
        "detail": event.detail,
        "remote_addr": event.remote_addr,
        "request_id": event.request_id,
    }
