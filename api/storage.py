"""Object storage lifecycle over HTTP: the cost report (admins) and restores of cold studies.

``GET  /api/v1/storage/report[?facility=NAME]``  objects and bytes per tier and facility,
     monthly cost and the saving against all-STANDARD (admin).
``POST /api/v1/storage/restores`` ``{"study_id"|"instance_id": N, "purpose": "read"|"forward"}``
     asks for cold bytes back; answers 202 with each request's state and expected time.
``GET  /api/v1/storage/restores/ID``  one request's state.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from sqlalchemy import select

from api.auth import check_facility, current_user, require
from api.context import db, resources
from api.errors import ApiError
from pipeline import lifecycle, restore, storage_report
from pipeline.models import Facility, Instance, RestoreRequest, Role, StoredObject, Study, utcnow

blueprint = Blueprint("storage", __name__)


@blueprint.route("/report", methods=["GET"])
@require(Role.ADMIN)
def report():  # noqa: ANN201
    settings = resources().settings
    try:
        prices = lifecycle.parse_prices(settings.storage_prices)
    except lifecycle.PolicyError as exc:
        raise ApiError(500, f"storage prices misconfigured: {exc}") from exc
    session = db()
    facility_ids = None
    name = request.args.get("facility")
    if name is not None:
        facility = session.scalar(select(Facility).where(Facility.name == name))
        if facility is None:
            raise ApiError(404, f"no facility named {name!r}")
        facility_ids = [facility.id]
    dr_class = settings.dr_storage_class if settings.dr_storage_url else None
    built = storage_report.build(session, prices, facility_ids=facility_ids, dr_storage_class=dr_class)
    body = built.as_dict()
    try:
        body["policy"] = lifecycle.TierPolicy.of(settings.storage_tiers).describe()
    except lifecycle.PolicyError as exc:
        body["policy_error"] = str(exc)
    body["managed_by"] = settings.storage_managed_by
    return jsonify(body)


def _positive(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ApiError(400, f"{name} must be a positive integer")
    return value


@blueprint.route("/restores", methods=["POST"])
@require(Role.ADMIN, Role.QA_MANAGER)
def create_restores():  # noqa: ANN201
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, 'body must be a JSON object: {"study_id" or "instance_id", "purpose"}')
    unknown = set(body) - {"study_id", "instance_id", "purpose"}
    if unknown:
        raise ApiError(400, f"unknown fields: {', '.join(sorted(unknown))}")
    study_id, instance_id = _positive(body, "study_id"), _positive(body, "instance_id")
    if (study_id is None) == (instance_id is None):
        raise ApiError(400, "give exactly one of study_id and instance_id")
    purpose = body.get("purpose", "read")
    if purpose not in restore.PURPOSES:
        raise ApiError(400, f"purpose must be one of {', '.join(restore.PURPOSES)}")
    settings = resources().settings
    session = db()
    user = current_user()
    if study_id is not None:
        study = session.get(Study, study_id)
        if study is None:
            raise ApiError(404, f"no study {study_id}")
        check_facility(study.facility_id)
        requests = restore.request_for_study(session, study_id, purpose=purpose,
                                             tier=settings.storage_restore_tier, requested_by=user.id)
    else:
        instance = session.get(Instance, instance_id)
        if instance is None:
            raise ApiError(404, f"no instance {instance_id}")
        check_facility(instance.facility_id)
        row = session.scalar(select(StoredObject).where(StoredObject.object_key == instance.object_key))
        requests = [] if row is None or restore.instance_readable(session, row, utcnow()) else [
            restore.request_restore(session, row, purpose=purpose, tier=settings.storage_restore_tier,
                                    requested_by=user.id)]
    session.commit()
    if requests:
        from workers.storage_tasks import process_restores

        process_restores.delay()  # after the commit: start the restore now, not at the next poll
    described = [restore.describe(r) for r in requests]
    expected = [d["expected_ready_at"] for d in described if d["expected_ready_at"]]
    return jsonify({
        "state": "restoring" if requests else "readable",
        "expected_ready_at": max(expected, default=None),
        "restores": described,
    }), 202 if requests else 200


@blueprint.route("/restores/<int:request_id>", methods=["GET"])
@require(Role.ADMIN, Role.QA_MANAGER)
def get_restore(request_id: int):  # noqa: ANN201
    row = db().get(RestoreRequest, request_id)
    if row is None:
        raise ApiError(404, f"no restore request {request_id}")
    check_facility(row.facility_id)
    return jsonify(restore.describe(row))
