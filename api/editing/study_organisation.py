"""Before a batch goes out: its studies with detected problems, per-patient overrides,
moves of instances or series between studies, and the log of every change.

Routes under /api/v1/batches/ID. Uploaders and admins change; QA managers read.
"""

from __future__ import annotations

from collections import Counter

from flask import Blueprint, jsonify
from sqlalchemy import func, select

from api.editing import errors as metadata_errors
from api.http.auth import actor, current_user, require
from api.http.context import db, resources
from api.http.errors import ApiError
from api.http.openapi import json_object_body as _json_body
from api.intake.batches import _load  # the same facility check
from pipeline.accounts import audit
from pipeline.delivery import renditions
from pipeline.editing import batch_edits, study_organisation
from pipeline.models import Instance, InstanceOrigin, Role
from workers import chains

blueprint = Blueprint("study_organisation", __name__)
metadata_errors.register(blueprint)
WRITERS = (Role.UPLOADER, Role.ADMIN)


@blueprint.route("/<id:batch_id>/studies", methods=["GET"])
@require()
def studies(batch_id: int):  # noqa: ANN201
    batch = _load(batch_id)
    rows = study_organisation.batch_studies(db(), batch)
    return jsonify({"batch_id": batch.id, "studies": rows,
                    "problems": study_organisation.problems_of(rows)})


@blueprint.route("/<id:batch_id>/series/<series_uid>/instances", methods=["GET"])
@require()
def series_instances(batch_id: int, series_uid: str):  # noqa: ANN201
    """On demand (the board opening a series): the batch's instances in that series, so
    single instances can be moved from any session, not only the one that read the files."""
    batch = _load(batch_id)
    return jsonify({"batch_id": batch.id, "series_instance_uid": series_uid,
                    "instances": study_organisation.series_instances(db(), batch, series_uid)})


@blueprint.route("/<id:batch_id>/moves", methods=["POST"])
@require(*WRITERS)
def move(batch_id: int):  # noqa: ANN201
    batch = _load(batch_id)
    session = db()
    body = _json_body()
    dry_run = body.pop("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ApiError(400, "dry_run must be true or false")
    if dry_run:
        # The board's preview: what the moved instances would go out with, nothing changed.
        return jsonify(renditions.move_preview(session, resources().store, batch, current_user(), body))
    result = study_organisation.move(session, batch, current_user(), body)
    target_uid = result.target.study_instance_uid
    audit.record(session, actor(), "batch.instances_moved", f"batch:{batch.id}",
                 {"instances": result.moved, "change_id": result.change_id})
    session.commit()
    # Deliveries already planned now wait under the target study: send them from there.
    chains.enqueue_forwarding(result.pending)
    rows = study_organisation.batch_studies(session, batch)
    return jsonify({"change_id": result.change_id, "target_study_instance_uid": target_uid,
                    "moved_instances": result.moved, "studies": rows,
                    "problems": study_organisation.problems_of(rows)})


@blueprint.route("/<id:batch_id>/patients", methods=["GET"])
@require()
def patients(batch_id: int):  # noqa: ANN201
    """PatientIDs as the batch's files say, with their instance counts and overrides."""
    batch = _load(batch_id)
    counts: Counter[str] = Counter()
    for patient_id, count in db().execute(
        select(InstanceOrigin.patient_id, func.count())
        .join(Instance, Instance.id == InstanceOrigin.instance_id)
        .where(Instance.batch_id == batch.id)
        .group_by(InstanceOrigin.patient_id)
    ):
        counts[patient_id or ""] += count  # no PatientID: the override keyed "" applies
    overrides = batch.overrides or {}
    return jsonify({"patients": [
        {"patient_id": p, "instances": counts.get(p, 0), "override": overrides.get(p, {})}
        for p in sorted(set(counts) | set(overrides))
    ]})


@blueprint.route("/<id:batch_id>/patients/<path:patient_id>", methods=["GET"])
@require()
def patient(batch_id: int, patient_id: str):  # noqa: ANN201
    batch = _load(batch_id)
    return jsonify({"patient_id": patient_id, "override": (batch.overrides or {}).get(patient_id, {})})


@blueprint.route("/<id:batch_id>/patients/<path:patient_id>", methods=["PATCH"])
@require(*WRITERS)
def override(batch_id: int, patient_id: str):  # noqa: ANN201
    """Merge attribute values into the patient's override; ``null`` removes one."""
    batch = _load(batch_id)
    body = _json_body()
    current = batch_edits.set_override(db(), batch, current_user(), patient_id, body)
    # Keywords only: the trail is shown to any admin and never holds patient data.
    audit.record(db(), actor(), "batch.override_changed", f"batch:{batch.id}",
                 {"attributes": sorted(body)})
    db().commit()
    return jsonify({"patient_id": patient_id, "override": current})


@blueprint.route("/<id:batch_id>/changes", methods=["GET"])
@require()
def changes(batch_id: int):  # noqa: ANN201
    batch = _load(batch_id)
    return jsonify({"batch_id": batch.id, "changes": batch_edits.change_log(db(), batch.id)})
