"""Upload templates, per facility: create, list, read, update, delete.

Uploaders and admins write; QA managers read. A user sees their facility's templates; an
admin sees every facility's and may create one for another facility (``facility_id``).
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from api.editing import errors as metadata_errors
from api.http.auth import actor, check_facility, current_user, require
from api.http.context import db
from api.http.errors import ApiError
from api.http.openapi import json_object_body as _json_body
from pipeline.accounts import audit
from pipeline.editing import templates
from pipeline.models import Facility, Role, UploadTemplate

blueprint = Blueprint("templates", __name__)
metadata_errors.register(blueprint)
WRITERS = (Role.UPLOADER, Role.ADMIN)


def _load(template_id: int) -> UploadTemplate:
    template = db().get(UploadTemplate, template_id)
    if template is None:
        raise ApiError(404, f"template {template_id} not found")
    check_facility(template.facility_id)
    return template


@blueprint.route("", methods=["POST"])
@require(*WRITERS)
def create():  # noqa: ANN201
    body = _json_body()
    user = current_user()
    facility_id = body.pop("facility_id", user.facility_id)
    if not isinstance(facility_id, int) or db().get(Facility, facility_id) is None:
        raise ApiError(400, "facility_id must name an existing facility")
    check_facility(facility_id)
    template = templates.create_template(db(), user, facility_id, body)
    audit.record(db(), actor(), "template.created", f"template:{template.id}",
                 {"attributes": sorted(template.attributes)})
    db().commit()
    response = jsonify(templates.describe(template))
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/templates/{template.id}"
    return response


@blueprint.route("", methods=["GET"])
@require()
def list_templates():  # noqa: ANN201
    user = current_user()
    facility_id = None if user.role == Role.ADMIN else user.facility_id
    return jsonify({"templates": [templates.describe(t)
                                  for t in templates.list_templates(db(), facility_id)]})


@blueprint.route("/<id:template_id>", methods=["GET"])
@require()
def show(template_id: int):  # noqa: ANN201
    return jsonify(templates.describe(_load(template_id)))


@blueprint.route("/<id:template_id>", methods=["PUT", "PATCH"])
@require(*WRITERS)
def update(template_id: int):  # noqa: ANN201
    template = _load(template_id)
    templates.update_template(db(), current_user(), template, _json_body())
    audit.record(db(), actor(), "template.updated", f"template:{template.id}",
                 {"attributes": sorted(template.attributes)})
    db().commit()
    return jsonify(templates.describe(template))


@blueprint.route("/<id:template_id>", methods=["DELETE"])
@require(*WRITERS)
def delete(template_id: int):  # noqa: ANN201
    # Batches keep the values they applied (in their change log): deleting is always safe.
    template = _load(template_id)
    db().delete(template)
    audit.record(db(), actor(), "template.deleted", f"template:{template_id}")
    db().commit()
    return "", 204
