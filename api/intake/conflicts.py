"""A person resolves what the rules left to a person, from the batch: versions of one
SOPInstanceUID (choose the one that goes out, send it again) and quarantined files (check
one again).

Routes under /api/v1/batches/ID. Uploaders and admins act, on their facility's batches;
every action is audited; 409 when the state does not allow it.
"""

from __future__ import annotations

from flask import Blueprint, g, jsonify
from pydantic import BaseModel, ConfigDict, Field

from api.http.auth import actor, current_user, require
from api.http.context import db
from api.http.errors import ApiError
from api.http.openapi import operation
from api.intake.batches import _load  # the same facility check
from pipeline.accounts import audit
from pipeline.dicom import grouping, versions
from pipeline.intake.batches import reopen_for_replay
from pipeline.models import Batch, Role, SopInstance, Upload
from workers import chains

blueprint = Blueprint("conflicts", __name__)
WRITERS = (Role.UPLOADER, Role.ADMIN)
CONFLICT_ERRORS = (400, 401, 403, 404, 409, 429)


class ChooseVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    upload_id: str = Field(min_length=1, max_length=32, pattern=r"^[0-9a-f]+$",
                           description="the upload that brought the version to send")


def _conflict(batch: Batch, conflict_id: int) -> SopInstance:
    key = versions.key_of_batch(db(), batch, conflict_id)
    if key is None:
        raise ApiError(404, f"conflict {conflict_id} not found in batch {batch.id}")
    return key


def _batches_of(key: SopInstance) -> list[int]:
    return sorted({v.batch_id for v in versions.versions_of(db(), key.facility_id, key.sop_instance_uid)})


@blueprint.route("/<id:batch_id>/conflicts", methods=["GET"])
@require()
@operation("Versions of one SOPInstanceUID in this batch: every version, the chosen one, the rule")
def list_conflicts(batch_id: int):  # noqa: ANN201
    batch = _load(batch_id)
    return jsonify({"batch_id": batch.id, "rule": versions.RULE,
                    "conflicts": versions.conflicts_of_batch(db(), batch)})


@blueprint.route("/<id:batch_id>/conflicts/<id:conflict_id>/choose", methods=["POST"])
@require(*WRITERS)
@operation("Choose the version that goes out; the others are superseded", body=ChooseVersion,
           errors=CONFLICT_ERRORS)
def choose(batch_id: int, conflict_id: int):  # noqa: ANN201
    batch = _load(batch_id)
    session = db()
    key = _conflict(batch, conflict_id)
    try:
        pairs = versions.choose(session, key, g.body.upload_id, current_user())
    except LookupError as exc:
        raise ApiError(404, str(exc)) from exc
    except versions.ResolutionConflict as exc:
        raise ApiError(409, str(exc)) from exc
    if pairs:
        reopen_for_replay(session, set(_batches_of(key)))
    audit.record(session, actor(), "instance.version_chosen", f"sop_instance:{key.id}",
                 {"batch_id": batch.id, "upload_id": g.body.upload_id})
    session.commit()
    # The chosen version is planned by its batch's dispatch if that batch already forwards;
    # the other versions' batches may be done now.
    chains.enqueue_forwarding(pairs)
    chains.enqueue_dispatch_if_completed(_batches_of(key))
    return jsonify(versions.describe(session, key))


@blueprint.route("/<id:batch_id>/conflicts/<id:conflict_id>/send", methods=["POST"])
@require(*WRITERS)
@operation("Send the chosen version again to every destination it went to", errors=CONFLICT_ERRORS)
def send(batch_id: int, conflict_id: int):  # noqa: ANN201
    batch = _load(batch_id)
    session = db()
    key = _conflict(batch, conflict_id)
    try:
        pairs = versions.send_again(session, key, current_user())
    except versions.ResolutionConflict as exc:
        raise ApiError(409, str(exc)) from exc
    reopen_for_replay(session, set(_batches_of(key)))
    audit.record(session, actor(), "instance.version_sent_again", f"sop_instance:{key.id}",
                 {"batch_id": batch.id, "destinations": len({d for _, d in pairs})})
    session.commit()
    chains.enqueue_forwarding(pairs)
    chains.enqueue_dispatch_if_completed(_batches_of(key))
    return jsonify(versions.describe(session, key))


@blueprint.route("/<id:batch_id>/files/<upload_id>/release", methods=["POST"])
@require(*WRITERS)
@operation("Check a quarantined file again (its bytes are kept); it goes out if it passes",
           errors=CONFLICT_ERRORS)
def release(batch_id: int, upload_id: str):  # noqa: ANN201
    batch = _load(batch_id)
    session = db()
    upload = session.get(Upload, upload_id)
    if upload is None or upload.batch_id != batch.id:
        raise ApiError(404, f"file {upload_id} not found in batch {batch.id}")
    if not grouping.releasable(upload):
        raise ApiError(409, "only a quarantined file whose bytes were stored whole can be released"
                            f" (this one is {upload.state})")
    reason = upload.quarantine_reason
    grouping.release(session, upload)
    audit.record(session, actor(), "upload.released", f"upload:{upload.id}",
                 {"batch_id": batch.id, "was": reason})
    session.commit()
    chains.enqueue_parse(upload.id)
    return jsonify({"upload_id": upload.id, "state": upload.state})
