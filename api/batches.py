"""Batches: one clinic session of many files; open, watch, complete."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from sqlalchemy import select

from api.auth import actor, check_facility, current_user, require
from api.context import db
from api.errors import ApiError
from pipeline import audit, batch_edits
from pipeline.batch_report import batch_report, batch_summary
from pipeline.dicom_attributes import MetadataError
from pipeline.models import Batch, BatchState, Role, utcnow
from workers import chains

blueprint = Blueprint("batches", __name__)
WRITERS = (Role.UPLOADER, Role.ADMIN)


def _json_body() -> dict:
    if not request.content_length:
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _load(batch_id: int) -> Batch:
    batch = db().get(Batch, batch_id)
    if batch is None:
        raise ApiError(404, f"batch {batch_id} not found")
    check_facility(batch.facility_id)
    return batch


@blueprint.route("", methods=["POST"])
@require(*WRITERS)
def create():  # noqa: ANN201
    body = _json_body()
    label = body.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > 200):
        raise ApiError(400, "label must be a string of at most 200 characters")
    template = body.get("template")
    if template is not None and (not isinstance(template, str) or len(template) > 200):
        raise ApiError(400, "template must be a template name")
    overrides = body.get("overrides")
    if overrides is not None and not (
        isinstance(overrides, dict)
        and all(isinstance(v, dict) for v in overrides.values())
    ):
        raise ApiError(400, "overrides must map PatientID to an object of attribute values")
    unknown = set(body) - {"label", "template", "overrides"}
    if unknown:
        raise ApiError(400, f"unknown fields: {', '.join(sorted(unknown))}")
    user = current_user()
    batch = Batch(facility_id=user.facility_id, user_id=user.id, label=label)
    session = db()
    session.add(batch)
    session.flush()
    try:  # the template must exist; keywords and values are checked against the dictionary
        batch_edits.start_batch(session, batch, user, template_name=template, overrides=overrides)
    except MetadataError as exc:
        session.rollback()
        raise ApiError(400, str(exc)) from exc
    audit.record(session, actor(), "batch.created", f"batch:{batch.id}",
                 {"template": template, "override_patients": len(overrides or {})})
    session.commit()
    response = jsonify(batch_summary(batch))
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/batches/{batch.id}"
    return response


@blueprint.route("", methods=["GET"])
@require()
def list_batches():  # noqa: ANN201
    user = current_user()
    try:
        limit = min(max(int(request.args.get("limit", 50)), 1), 200)
    except ValueError as exc:
        raise ApiError(400, "limit must be an integer") from exc
    query = select(Batch).order_by(Batch.id.desc()).limit(limit)
    if user.role != Role.ADMIN:
        query = query.where(Batch.facility_id == user.facility_id)
    return jsonify({"batches": [batch_summary(b) for b in db().scalars(query)]})


@blueprint.route("/<int:batch_id>", methods=["GET"])
@require()
def show(batch_id: int):  # noqa: ANN201
    batch = _load(batch_id)
    return jsonify(batch_report(db(), batch))


@blueprint.route("/<int:batch_id>/complete", methods=["POST"])
@require(*WRITERS)
def complete(batch_id: int):  # noqa: ANN201
    batch = _load(batch_id)
    session = db()
    if batch.state == BatchState.OPEN:
        batch.state = BatchState.COMPLETED
        batch.completed_at = utcnow()
        audit.record(session, actor(), "batch.completed", f"batch:{batch.id}")
        session.commit()
    chains.enqueue_batch_dispatch(batch.id)  # after the commit that made it visible
    return jsonify(batch_summary(batch))
