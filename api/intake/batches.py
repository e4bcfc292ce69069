"""Batches: one clinic session of many files; open, watch, complete."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.http.auth import actor, check_facility, current_user, require
from api.http.context import autocommit_engine, db, resources, snapshot_db
from api.http.errors import ApiError
from api.http.openapi import STANDARD_ERRORS, operation
from pipeline.accounts import audit
from pipeline.dicom.attributes import MetadataError
from pipeline.editing import batch_edits
from pipeline.intake import batches as batch_progress
from pipeline.intake.batch_report import (
    batch_report,
    batch_status,
    batch_summary,
    report_without_instances,
)
from pipeline.models import Batch, BatchState, Role, utcnow
from workers import chains

blueprint = Blueprint("batches", __name__)
WRITERS = (Role.UPLOADER, Role.ADMIN)


def _load(batch_id: int, session: Session | None = None) -> Batch:
    batch = (session or db()).get(Batch, batch_id)
    if batch is None:
        raise ApiError(404, f"batch {batch_id} not found")
    check_facility(batch.facility_id)
    return batch


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str | None = Field(None, max_length=200)
    template: str | None = Field(None, min_length=1, max_length=200,
                                 description="name of one of the facility's templates")
    overrides: dict[str, dict[str, Any]] | None = Field(
        None, description="PatientID -> {DICOM keyword: value}")
    hold: bool = Field(False, description="nothing goes out (no quiet period, no completion) until "
                                          "POST /api/v1/batches/ID/confirm; the upload screen's batches")


class BatchListQuery(BaseModel):
    limit: int = Field(50, ge=1, le=200)


@blueprint.route("", methods=["POST"])
@require(*WRITERS)
@operation("Open a batch (one clinic session of many files)", body=BatchCreate,
           responses={201: "the new batch"})
def create():  # noqa: ANN201
    body: BatchCreate = g.body
    label, template, overrides = body.label, body.template, body.overrides
    user = current_user()
    batch = Batch(facility_id=user.facility_id, user_id=user.id, label=label, held=body.hold)
    session = db()
    session.add(batch)
    session.flush()
    try:  # the template must exist; keywords and values are checked against the dictionary
        batch_edits.start_batch(session, batch, user, template_name=template, overrides=overrides)
    except MetadataError as exc:
        session.rollback()
        raise ApiError(400, str(exc)) from exc
    audit.record(session, actor(), "batch.created", f"batch:{batch.id}",
                 {"template": template, "override_patients": len(overrides or {}), "held": body.hold})
    session.commit()
    response = jsonify(batch_summary(batch))
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/batches/{batch.id}"
    return response


@blueprint.route("", methods=["GET"])
@require()
@operation("List batches, newest first", query=BatchListQuery)
def list_batches():  # noqa: ANN201
    user = current_user()
    limit = g.query.limit
    query = select(Batch).order_by(Batch.id.desc()).limit(limit)
    if user.role != Role.ADMIN:
        query = query.where(Batch.facility_id == user.facility_id)
    return jsonify({"batches": [batch_summary(b) for b in db().scalars(query)]})


@blueprint.route("/<id:batch_id>", methods=["GET"])
@require()
@operation("Batch status: every file, study and delivery; conflicts; what it waits for")
def show(batch_id: int):  # noqa: ANN201
    # Polled by every client for progress: read outside a transaction (no BEGIN, ROLLBACK),
    # in one statement until the batch's files have instances (pipeline.intake.batch_report).
    quiet = resources().settings.batch_quiet_seconds
    engine = autocommit_engine()
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            status = batch_status(connection, batch_id)
        if status is None:
            raise ApiError(404, f"batch {batch_id} not found")
        check_facility(status.batch.facility_id)
        if not status.has_instances:
            return jsonify(report_without_instances(status, quiet))
    session = snapshot_db()
    batch = _load(batch_id, session)
    return jsonify(batch_report(session, batch, quiet_seconds=quiet))


@blueprint.route("/<id:batch_id>/complete", methods=["POST"])
@require(*WRITERS)
@operation("The client sent everything: forward when every file is processed")
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


@blueprint.route("/<id:batch_id>/confirm", methods=["POST"])
@require(*WRITERS)
@operation("Release a held batch (opened from the upload screen): it is complete and goes out "
           "once its files are processed", errors=(*STANDARD_ERRORS, 409))
def confirm(batch_id: int):  # noqa: ANN201
    batch = _load(batch_id)
    session = db()
    if batch_progress.confirm_held_batch(session, batch):
        audit.record(session, actor(), "batch.confirmed", f"batch:{batch.id}")
        session.commit()
    elif batch.confirmed_at is None:
        raise ApiError(409, f"batch {batch.id} is not held; it goes out on completion or its quiet period")
    chains.enqueue_batch_dispatch(batch.id)  # after the commit that made it visible
    return jsonify(batch_summary(batch))
