"""Object storage lifecycle over HTTP: the cost report (admins) and restores of cold studies.

``GET  /api/v1/storage/report[?facility=NAME]``  objects and bytes per tier and facility,
     monthly cost and the saving against all-STANDARD (admin).
``POST /api/v1/storage/restores`` ``{"study_id"|"instance_id": N, "purpose": "read"|"forward"}``
     asks for cold bytes back; answers 202 with each request's state and expected time.
``GET  /api/v1/storage/restores/ID``  one request's state.
``GET  /api/v1/storage/instances/ID/file``  an instance's stored original (Part-10); when its
     bytes are cold (archive class or bundle) it starts a restore and answers 202 instead.
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, Response, g, jsonify, stream_with_context
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select

from api.http.auth import actor, check_facility, current_user, require
from api.http.context import db, resources
from api.http.errors import ApiError
from api.http.openapi import operation
from pipeline.accounts import audit
from pipeline.lifecycle import cost_report as storage_report
from pipeline.lifecycle import policy as lifecycle
from pipeline.lifecycle import restore
from pipeline.models import Facility, Instance, RestoreRequest, Role, StoredObject, Study, utcnow
from pipeline.storage import ObjectMissing
from workers import chains

blueprint = Blueprint("storage", __name__)


class ReportQuery(BaseModel):
    facility: str | None = Field(None, max_length=200, description="one facility by name")


class RestoreBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    study_id: int | None = Field(None, ge=1)
    instance_id: int | None = Field(None, ge=1)
    purpose: Literal["read", "forward"] = "read"

    @model_validator(mode="after")
    def _one_target(self) -> RestoreBody:
        if (self.study_id is None) == (self.instance_id is None):
            raise ValueError("give exactly one of study_id and instance_id")
        return self


def _visible(model: type, row_id: int, what: str):  # noqa: ANN202
    """The row with this id: 404 when there is none, 403 when it is another facility's."""
    row = db().get(model, row_id)
    if row is None:
        raise ApiError(404, f"no {what} {row_id}")
    check_facility(row.facility_id)
    return row


@blueprint.route("/report", methods=["GET"])
@require(Role.ADMIN)
@operation("Objects, bytes and monthly cost (storage, transition, retrieval and restore fees) per tier "
           "and facility; saving against all-STANDARD",
           query=ReportQuery)
def report():  # noqa: ANN201
    settings = resources().settings
    try:
        prices = lifecycle.parse_prices(settings.storage_prices)
        lifecycle.check_read_fraction(settings.storage_cold_reads_per_month)
    except lifecycle.PolicyError as exc:
        raise ApiError(500, f"storage prices misconfigured: {exc}") from exc
    session = db()
    facility_ids = None
    if g.query.facility is not None:
        facility = session.scalar(select(Facility).where(Facility.name == g.query.facility))
        if facility is None:
            raise ApiError(404, f"no facility named {g.query.facility!r}")
        facility_ids = [facility.id]
    dr_class = settings.dr_storage_class if settings.dr_storage_url else None
    built = storage_report.build(session, prices, facility_ids=facility_ids, dr_storage_class=dr_class,
                                 cold_reads_per_month=settings.storage_cold_reads_per_month,
                                 restore_days=settings.storage_restore_days)
    body = built.as_dict()
    try:
        body["policy"] = lifecycle.TierPolicy.of(settings.storage_tiers).describe()
    except lifecycle.PolicyError as exc:
        body["policy_error"] = str(exc)
    body["managed_by"] = settings.storage_managed_by
    return jsonify(body)


@blueprint.route("/restores", methods=["POST"])
@require(Role.ADMIN, Role.QA_MANAGER)
@operation("Ask for a cold study or instance back; 202 with each request's expected time",
           body=RestoreBody, responses={200: "readable as it is", 202: "restoring"})
def create_restores():  # noqa: ANN201
    body: RestoreBody = g.body
    tier = resources().settings.storage_restore_tier
    session = db()
    user = current_user()
    if body.study_id is not None:
        study = _visible(Study, body.study_id, "study")
        requests = restore.request_for_study(session, study.id, purpose=body.purpose, tier=tier,
                                             requested_by=user.id)
    else:
        instance = _visible(Instance, body.instance_id, "instance")
        row = session.scalar(select(StoredObject).where(StoredObject.object_key == instance.object_key))
        requests = [] if row is None or restore.instance_readable(session, row, utcnow()) else [
            restore.request_restore(session, row, purpose=body.purpose, tier=tier, requested_by=user.id)]
    if requests:
        audit.record(session, actor(), "storage.restore_requested",
                     f"study:{body.study_id}" if body.study_id else f"instance:{body.instance_id}",
                     {"purpose": body.purpose, "requests": [r.id for r in requests][:1000]})
    session.commit()
    if requests:
        chains.enqueue_restores()
    described = [restore.describe(r) for r in requests]
    expected = [d["expected_ready_at"] for d in described if d["expected_ready_at"]]
    return jsonify({
        "state": "restoring" if requests else "readable",
        "expected_ready_at": max(expected, default=None),
        "restores": described,
    }), 202 if requests else 200


@blueprint.route("/restores/<id:request_id>", methods=["GET"])
@require(Role.ADMIN, Role.QA_MANAGER)
@operation("One restore request: state and expected time")
def get_restore(request_id: int):  # noqa: ANN201
    return jsonify(restore.describe(_visible(RestoreRequest, request_id, "restore request")))


@blueprint.route("/instances/<id:instance_id>/file", methods=["GET"])
@require(Role.ADMIN, Role.QA_MANAGER)
@operation("Download an instance's stored original; 202 with the restore when its bytes are cold",
           responses={200: "the Part-10 bytes", 202: "restoring"})
def instance_file(instance_id: int):  # noqa: ANN201
    session = db()
    instance = _visible(Instance, instance_id, "instance")
    user = current_user()
    try:
        request = restore.read_or_request(session, instance, tier=resources().settings.storage_restore_tier,
                                          requested_by=user.id)
    except ObjectMissing as exc:
        raise ApiError(404, f"instance {instance_id} is not in storage") from exc
    if request is not None:
        audit.record(session, actor(), "storage.restore_requested", f"instance:{instance_id}",
                     {"purpose": "read", "requests": [request.id]})
        session.commit()
        chains.enqueue_restores()
        described = restore.describe(request)
        return jsonify({"state": "restoring", "expected_ready_at": described["expected_ready_at"],
                        "restores": [described]}), 202
    try:
        body = resources().store.open(instance.object_key)
    except ObjectMissing as exc:  # ObjectArchived included: the catalogue lagged behind the bucket
        raise ApiError(404, f"instance {instance_id} cannot be read from storage now") from exc
    audit.record(session, actor(), "instance.downloaded", f"instance:{instance_id}", {})
    session.commit()

    def chunks():  # noqa: ANN202
        with body:
            while chunk := body.read(1024 * 1024):
                yield chunk

    return Response(stream_with_context(chunks()), mimetype="application/dicom",
                    headers={"Content-Disposition": f'attachment; filename="instance-{instance_id}.dcm"'})
