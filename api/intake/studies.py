"""Recent studies of the user's facility, for the phone's picker: a photo joins one of them."""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, g, jsonify
from pydantic import BaseModel, Field

from api.http.auth import current_user, require
from api.http.context import db
from api.http.openapi import operation
from pipeline.intake.photos import MAX_STUDIES_LISTED, recent_studies
from pipeline.models import Role

blueprint = Blueprint("studies", __name__)


class StudyListQuery(BaseModel):
    q: str = Field("", max_length=64, description="start of a PatientID or StudyInstanceUID, "
                                                  "or part of the description")
    limit: int = Field(50, ge=1, le=MAX_STUDIES_LISTED)


@blueprint.route("", methods=["GET"])
@require(Role.UPLOADER, Role.ADMIN)
@operation("Recent studies of your facility (newest first), to add a photo to one",
           query=StudyListQuery)
def list_studies():  # noqa: ANN201
    user = current_user()
    query: StudyListQuery = g.query
    facility = None if user.role == Role.ADMIN else user.facility_id
    found = recent_studies(db(), facility, query.q, query.limit)
    return jsonify({"studies": [asdict(s) for s in found]})
