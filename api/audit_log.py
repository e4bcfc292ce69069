"""The audit trail for admins: newest first, filterable, paged by id."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from sqlalchemy import select

from api.auth import require
from api.context import db
from api.errors import ApiError
from pipeline.audit import as_dict
from pipeline.models import AuditEvent, Role

blueprint = Blueprint("audit", __name__)


@blueprint.route("", methods=["GET"])
@require(Role.ADMIN)
def list_events():  # noqa: ANN201
    query = select(AuditEvent).order_by(AuditEvent.id.desc())
    for name, column in (("before_id", AuditEvent.id), ("user_id", AuditEvent.user_id),
                         ("facility_id", AuditEvent.facility_id)):
        raw = request.args.get(name)
        if raw is not None:
            if not raw.isdigit():
                raise ApiError(400, f"{name} must be a positive integer")
            query = query.where(column < int(raw) if name == "before_id" else column == int(raw))
    action = request.args.get("action")
    if action:
        query = query.where(AuditEvent.action == action[:64])
    raw_limit = request.args.get("limit", "100")
    if not raw_limit.isdigit():
        raise ApiError(400, "limit must be a positive integer")
    events = db().scalars(query.limit(min(max(int(raw_limit), 1), 1000))).all()
    return jsonify({"events": [as_dict(e) for e in events]})
