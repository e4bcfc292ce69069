"""Reader assignments at /api/v1/reader-assignments (admins only): which facilities a
radiologist or consultant serves besides their own, and in which subspecialties (the consult
pools). What an assignment grants is decided in one place, ``readable_facility_ids``; this
module only keeps the list, the same way ``relaypacs users assign`` does, and audits every
change (``reader.assigned``, ``reader.unassigned``) with who made it.

``GET    /[?user_id=&facility_id=]``       the assignments, by user then facility
``PUT    /USER_ID/FACILITY_ID``           ``{"subspecialties": [...]}``: assign (201) or replace (200)
``DELETE /USER_ID/FACILITY_ID``           end it (204; 404 when there was none)
"""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint, g, jsonify
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.http.auth import actor, current_user, require
from api.http.context import db
from api.http.errors import ApiError
from api.http.openapi import operation
from pipeline.accounts import audit
from pipeline.accounts.users import set_assignment
from pipeline.models import MAX_ROW_ID, Facility, ReaderAssignment, Role, User

blueprint = Blueprint("reader_assignments", __name__)
# Stored lower-case (pipeline.accounts.users.set_assignment): "Neuro" and "neuro" are one pool.
Subspecialty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40,
                                                pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]


class AssignmentQuery(BaseModel):
    user_id: int | None = Field(None, ge=1, le=MAX_ROW_ID)
    facility_id: int | None = Field(None, ge=1, le=MAX_ROW_ID)


class AssignmentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subspecialties: list[Subspecialty] = Field(default_factory=list, max_length=20,
                                               description="consult pools, e.g. neuro, msk")


def _json(row: ReaderAssignment, email: str, facility: str) -> dict:
    return {"user_id": row.user_id, "email": email, "facility_id": row.facility_id, "facility": facility,
            "subspecialties": list(row.subspecialties or []), "created_at": row.created_at.isoformat(),
            "created_by": row.created_by}


def assignments(session: Session, user_id: int | None = None, facility_id: int | None = None) -> list[dict]:
    """The assignments as the API lists them, by user then facility (also the admin page's)."""
    stmt = (select(ReaderAssignment, User.email, Facility.name)
            .join(User, User.id == ReaderAssignment.user_id)
            .join(Facility, Facility.id == ReaderAssignment.facility_id)
            .order_by(ReaderAssignment.user_id, ReaderAssignment.facility_id))
    if user_id is not None:
        stmt = stmt.where(ReaderAssignment.user_id == user_id)
    if facility_id is not None:
        stmt = stmt.where(ReaderAssignment.facility_id == facility_id)
    return [_json(row, email, name) for row, email, name in session.execute(stmt)]


@blueprint.route("", methods=["GET"])
@require(Role.ADMIN)
@operation("Reader assignments: the facilities each radiologist or consultant serves", query=AssignmentQuery)
def list_assignments():  # noqa: ANN201
    q: AssignmentQuery = g.query
    return jsonify({"assignments": assignments(db(), q.user_id, q.facility_id)})


def _user_and_facility(user_id: int, facility_id: int) -> tuple[User, Facility]:
    user = db().get(User, user_id)
    if user is None:
        raise ApiError(404, f"user {user_id} not found")
    facility = db().get(Facility, facility_id)
    if facility is None:
        raise ApiError(404, f"facility {facility_id} not found")
    return user, facility


@blueprint.route("/<id:user_id>/<id:facility_id>", methods=["PUT"])
@require(Role.ADMIN)
@operation("Assign a radiologist or consultant to a facility (or replace the subspecialties)",
           body=AssignmentBody, responses={200: "replaced", 201: "assigned"},
           errors=(400, 401, 403, 404, 429))
def put_assignment(user_id: int, facility_id: int):  # noqa: ANN201
    user, facility = _user_and_facility(user_id, facility_id)
    if user.facility_id == facility.id:
        raise ApiError(400, "a user reads their own facility already: assign another one")
    try:
        row, created = set_assignment(db(), user, facility.id, g.body.subspecialties,
                                      by_user_id=current_user().id)
    except ValueError as exc:
        db().rollback()
        raise ApiError(400, str(exc)) from exc
    audit.record(db(), actor(), "reader.assigned", f"user:{user.id}",
                 {"facility_id": facility.id, "subspecialties": row.subspecialties, "created": created})
    db().commit()
    return jsonify(_json(row, user.email, facility.name)), 201 if created else 200


@blueprint.route("/<id:user_id>/<id:facility_id>", methods=["DELETE"])
@require(Role.ADMIN)
@operation("End a reader's assignment to a facility", responses={204: "ended"}, errors=(401, 403, 404, 429))
def delete_assignment(user_id: int, facility_id: int):  # noqa: ANN201
    row = db().scalar(select(ReaderAssignment).where(ReaderAssignment.user_id == user_id,
                                                     ReaderAssignment.facility_id == facility_id))
    if row is None:
        raise ApiError(404, f"user {user_id} is not assigned to facility {facility_id}")
    db().delete(row)
    audit.record(db(), actor(), "reader.unassigned", f"user:{user_id}", {"facility_id": facility_id})
    db().commit()
    return "", 204
