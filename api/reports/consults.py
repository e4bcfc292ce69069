"""Consults on a report at /api/v1/reports/ID/consults.

``GET  /ID/consults``                      the report's consults with their state history
``POST /ID/consults``                      request one (consultant_id or subspecialty, question, due_at)
``POST /ID/consults/CID/ACTION``           accept, decline, start, complete (body: addendum), cancel

An illegal move answers 409, a move that is not the caller's 403. Completing adds the
answer as an addendum: the report becomes ``appended`` (its own text untouched) and the
addendum PDF is filed with the PACS through the delivery ledger by a worker.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, g, jsonify
from pydantic import BaseModel, ConfigDict, Field

from api.events import publish
from api.http.auth import actor, current_user, require
from api.http.context import db
from api.http.errors import ApiError
from api.http.openapi import operation
from api.reports.access import load_report
from pipeline.accounts import audit
from pipeline.models import MAX_ROW_ID, ConsultRequest, Role
from pipeline.reports import consult_requests, consults, notifications
from pipeline.reports import status as report_status
from pipeline.reports.status_notices import take_made
from pipeline.reports.threads import ThreadError
from workers import chains

blueprint = Blueprint("report_consults", __name__)
# Clinicians ask, readers answer, admins see and cancel; the rules per move are pipeline's.
PARTIES = (Role.CLINICIAN, Role.RADIOLOGIST, Role.CONSULTANT, Role.ADMIN)


class ConsultBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=4000)
    consultant_id: int | None = Field(None, strict=True, ge=1, le=MAX_ROW_ID)
    subspecialty: str | None = Field(None, min_length=1, max_length=64)
    due_at: datetime | None = None


class MoveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    addendum: str | None = Field(None, min_length=1, max_length=4000)


def consult_json(consult: ConsultRequest, with_history: bool = False) -> dict:
    out = {"id": consult.id, "report_id": consult.report_id, "state": consult.state,
           "requester_id": consult.requester_id, "consultant_id": consult.consultant_id,
           "subspecialty": consult.subspecialty, "question": consult.question,
           "due_at": consult.due_at.isoformat(), "reoffers": consult.reoffers,
           "actions": consults.legal_actions(consult.state)}
    addendum = consult_requests.addendum_of(db(), consult.id)
    if addendum is not None:
        out["addendum"] = {"id": addendum.id, "author_id": addendum.author_id, "text": addendum.text,
                           "created_at": addendum.created_at.isoformat(),
                           "sop_instance_uid": addendum.sop_instance_uid}
    if with_history:
        out["history"] = [{"from": c.from_state, "to": c.to_state, "action": c.action,
                           "actor_id": c.actor_id, "at": c.at.isoformat()}
                          for c in consult_requests.history(db(), consult.id)]
    return out


@blueprint.route("/<id:report_id>/consults", methods=["GET"])
@require(*PARTIES)
@operation("A report's consults and their state history")
def list_consults(report_id: int):  # noqa: ANN201
    report = load_report(report_id)
    return jsonify({"report_id": report.id, "consults": [
        consult_json(c, with_history=True) for c in consult_requests.for_report(db(), report.id)]})


@blueprint.route("/<id:report_id>/consults", methods=["POST"])
@require(*PARTIES)
@operation("Request a consult: of a named consultant or a subspecialty pool", body=ConsultBody,
           responses={201: "the consult"})
def request_consult(report_id: int):  # noqa: ANN201
    report = load_report(report_id)
    body: ConsultBody = g.body
    due = body.due_at
    if due is not None and due.tzinfo is None:
        due = due.replace(tzinfo=UTC)
    session = db()
    try:
        made = consult_requests.request(
            session, report_id=report.id, facility_id=report.facility_id, requester=current_user(),
            consultant_id=body.consultant_id, subspecialty=body.subspecialty,
            question=body.question, due_at=due)
    except ThreadError as exc:
        session.rollback()
        raise ApiError(400, str(exc)) from exc
    except PermissionError as exc:
        session.rollback()
        raise ApiError(403, str(exc)) from exc
    audit.record(session, actor(), "consult.requested", target=f"consult:{made.consult.id}",
                 detail={"report_id": report.id, "pool": made.consult.consultant_id is None})
    publish.notices(session, made.notices)  # committed with the consult
    session.commit()
    chains.enqueue_notice_mail([n.id for n in made.notices])
    return jsonify(consult_json(made.consult)), 201


@blueprint.route("/<id:report_id>/consults/<id:consult_id>/<action>", methods=["POST"])
@require(*PARTIES)
@operation("Move a consult: accept, decline, start, complete (with the addendum) or cancel",
           body=MoveBody, errors=(400, 401, 403, 404, 409, 429))
def move_consult(report_id: int, consult_id: int, action: str):  # noqa: ANN201
    report = load_report(report_id)
    session = db()
    consult = session.get(ConsultRequest, consult_id, with_for_update=True)
    if consult is None or consult.report_id != report.id:
        raise ApiError(404, f"consult {consult_id} not found")
    if action not in {a.value for a in consults.ConsultAction} - {"reoffer"}:
        raise ApiError(404, f"no consult action {action!r}")
    body: MoveBody = g.body
    try:
        moved = consult_requests.move(session, consult, action, current_user(),
                                      addendum_text=body.addendum)
        status_event = consult_requests.appended_by_addendum(session, report, current_user().id) \
            if moved.addendum is not None else None
    except consults.IllegalTransition as exc:
        session.rollback()
        raise ApiError(409, str(exc), state=exc.state) from exc
    except report_status.IllegalTransition as exc:  # e.g. a cancelled report takes no addendum
        session.rollback()
        raise ApiError(409, str(exc)) from exc
    except consults.NotAllowed as exc:
        session.rollback()
        raise ApiError(403, str(exc)) from exc
    except ThreadError as exc:
        session.rollback()
        raise ApiError(400, str(exc)) from exc
    audit.record(session, actor(), f"consult.{action}", target=f"consult:{consult.id}",
                 detail={"report_id": report.id, "from": moved.from_state, "to": moved.to_state,
                         "addendum_id": moved.addendum.id if moved.addendum else None})
    session.flush()  # the notices' ids
    told = moved.notices + take_made(session)
    publish.report_events(session, ([status_event] if status_event is not None else [])
                          + [notifications.notice_event(n) for n in told])
    session.commit()  # the move and its events together (the outbox)
    chains.enqueue_notice_mail([n.id for n in told])
    if moved.addendum is not None:
        chains.enqueue_addendum_filing(moved.addendum.id)
    return jsonify(consult_json(consult, with_history=True))
