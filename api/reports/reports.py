"""Radiology reports at /api/v1/reports (not the QA managers' exports: /api/v1/exports).

Who reads: clinicians, radiologists, consultants, QA managers and admins, each the facilities
``pipeline.accounts.scoping.readable_facility_ids`` gives them (their own; a reader's assigned
ones; admins every one). Who writes: radiologists (and admins) for the studies they may read.

``GET  /``                    reports, newest first (``limit``, ``before``, ``status``,
                              ``study_id``, ``facility_id``): study, uploader, status, counts
``POST /``                    a radiologist's report for a delivered study: JSON
                              ``{"study_id", "text", "status"}`` or multipart with ``study_id``,
                              ``status`` and one PDF ``file``
``GET  /ID``                  one report, its text and status history
``POST /ID/status``           ``{"status", "reason"}``: a legal move, else 409
``GET  /ID/original``         the original document (DICOM or PDF), audited
``GET  /pacs``                the report poll per destination (ok / unreachable, backoff)
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, Response, g, jsonify, request
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select

from api.events.publish import notices, report_events
from api.http.auth import actor, current_user, require
from api.http.context import db, resources
from api.http.errors import ApiError
from api.http.openapi import operation
from pipeline.accounts import audit
from pipeline.accounts.scoping import readable_facility_ids
from pipeline.models import MAX_ROW_ID, Destination, RadiologyReport, ReportPollState, Role, Study, utcnow
from pipeline.ops.events import Event
from pipeline.reports import listing, manual, status
from pipeline.reports.status_notices import take_made
from pipeline.storage import ObjectMissing
from workers import chains

blueprint = Blueprint("reports", __name__)
READERS = (Role.CLINICIAN, Role.RADIOLOGIST, Role.CONSULTANT, Role.QA_MANAGER, Role.ADMIN)
WRITERS = (Role.RADIOLOGIST, Role.ADMIN)


class ReportListQuery(BaseModel):
    limit: int = Field(50, ge=1, le=listing.MAX_LIMIT)
    before: int | None = Field(None, ge=1, le=MAX_ROW_ID, description="reports with a smaller id (paging)")
    status: Literal["registered", "preliminary", "final", "amended", "appended", "cancelled"] | None = None
    study_id: int | None = Field(None, ge=1, le=MAX_ROW_ID)
    facility_id: int | None = Field(None, ge=1, le=MAX_ROW_ID)
    include_superseded: bool = False


class ManualReport(BaseModel):
    study_id: int = Field(ge=1, le=MAX_ROW_ID)
    text: str = Field(min_length=1, max_length=manual.MAX_TEXT_CHARS)
    status: Literal["registered", "preliminary", "final"] = "final"


class StatusMove(BaseModel):
    status: Literal["registered", "preliminary", "final", "amended", "appended", "cancelled"]
    reason: str | None = Field(None, max_length=2000)


def _scope() -> frozenset[int] | None:
    return readable_facility_ids(db(), current_user())


def _readable_report(report_id: int) -> RadiologyReport:
    report = db().get(RadiologyReport, report_id)
    if report is None:
        raise ApiError(404, f"report {report_id} not found")
    scope = _scope()
    if scope is not None and report.facility_id not in scope:
        raise ApiError(403, "this belongs to another facility")
    return report


def _publish(event: Event) -> list[int]:
    """The move's event and the senders' notices (final, amended, appended) into the outbox,
    committed with the move; returns the notices' ids, to mail once it is committed."""
    made = take_made(db())
    report_events(db(), [event])
    notices(db(), made)
    return [n.id for n in made]


@blueprint.route("", methods=["GET"])
@require(*READERS)
@operation("Radiology reports of the facilities you may read, newest first", query=ReportListQuery)
def list_reports():  # noqa: ANN201
    q: ReportListQuery = g.query
    scope = _scope()
    if q.facility_id is not None and scope is not None and q.facility_id not in scope:
        raise ApiError(403, "this belongs to another facility")
    rows = listing.list_reports(db(), listing.ReportQuery(
        facility_ids=scope, limit=q.limit, before_id=q.before, status=q.status, study_id=q.study_id,
        facility_id=q.facility_id, include_superseded=q.include_superseded))
    next_before = rows[-1]["id"] if len(rows) == q.limit else None
    return jsonify({"reports": rows, "next_before": next_before})


def _manual_input() -> tuple[int, str | None, bytes | None, str]:
    """(study_id, text, pdf, status) from a JSON body or a multipart form with a PDF."""
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        raw_study = request.form.get("study_id", "")
        wanted = request.form.get("status", "final")
        if upload is None:
            raise ApiError(400, "multipart: a PDF in the 'file' field is required")
        if not (raw_study.isascii() and raw_study.isdigit() and 0 < int(raw_study) <= MAX_ROW_ID):
            raise ApiError(400, "study_id must be a study id")
        if wanted not in {s.value for s in manual.INITIAL_STATUSES}:
            raise ApiError(400, "status must be registered, preliminary or final")
        data = upload.stream.read(manual.MAX_PDF_BYTES + 1)
        return int(raw_study), None, data, wanted
    payload = request.get_json(silent=True)
    if payload is None:
        raise ApiError(400, "request body must be JSON (or multipart/form-data with a PDF file)")
    try:
        body = ManualReport.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(400, f"{where}: {first['msg']}") from exc
    return body.study_id, body.text, None, body.status


@blueprint.route("", methods=["POST"])
@require(*WRITERS)
@operation("Write or upload a report for a delivered study (JSON text, or multipart with a PDF)",
           responses={201: "created"}, errors=(400, 401, 403, 404, 409, 413, 429))
def create():  # noqa: ANN201
    study_id, text, pdf, wanted = _manual_input()
    study = db().get(Study, study_id)
    if study is None:
        raise ApiError(404, f"study {study_id} not found")
    scope = _scope()
    if scope is not None and study.facility_id not in scope:
        raise ApiError(403, "this belongs to another facility")
    try:
        report, event = manual.create_manual(db(), resources().store, study, current_user().id, text=text,
                                             pdf=pdf, initial_status=wanted, now=utcnow())
    except manual.ReportRefused as exc:
        db().rollback()
        raise ApiError(exc.status_code, str(exc)) from exc
    audit.record(db(), actor(), "report.created", target=f"report:{report.id}",
                 detail={"study_id": study.id, "status": report.status, "content_type": report.content_type})
    told = _publish(event)
    db().commit()
    chains.enqueue_notice_mail(told)
    body = listing.report_detail(db(), report.id, None)
    response = jsonify(body)
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/reports/{report.id}"
    return response


@blueprint.route("/<id:report_id>", methods=["GET"])
@require(*READERS)
@operation("One report: text, study, uploader, counts and status history")
def show(report_id: int):  # noqa: ANN201
    scope = _scope()
    body = listing.report_detail(db(), report_id, scope)
    if body is None:
        _readable_report(report_id)  # 404 or 403, whichever is true
        raise ApiError(404, f"report {report_id} not found")
    return jsonify(body)


@blueprint.route("/<id:report_id>/status", methods=["POST"])
@require(*WRITERS)
@operation("Move a report's status (FHIR DiagnosticReport); an illegal move answers 409", body=StatusMove,
           errors=(400, 401, 403, 404, 409, 429))
def move(report_id: int):  # noqa: ANN201
    wanted: StatusMove = g.body
    report = _readable_report(report_id)
    before = report.status
    try:
        event = status.change_status(db(), report, wanted.status, by_user_id=current_user().id,
                                     reason=wanted.reason, now=utcnow())
    except status.IllegalTransition as exc:
        db().rollback()
        raise ApiError(409, str(exc), allowed=exc.allowed) from exc
    audit.record(db(), actor(), "report.status_changed", target=f"report:{report.id}",
                 detail={"from": before, "to": report.status})
    told = _publish(event)
    db().commit()
    chains.enqueue_notice_mail(told)
    return jsonify(listing.report_detail(db(), report.id, None))


@blueprint.route("/<id:report_id>/original", methods=["GET"])
@require(*READERS)
@operation("The original document as received (DICOM Part-10) or uploaded (PDF); audited")
def original(report_id: int):  # noqa: ANN201
    report = _readable_report(report_id)
    if report.object_key is None:
        raise ApiError(404, f"report {report_id} was written as text: no original file")
    try:
        with resources().store.open(report.object_key) as stream:
            data = stream.read()
    except ObjectMissing as exc:
        raise ApiError(404, "the original is no longer stored") from exc
    audit.record(db(), actor(), "report.original_downloaded", target=f"report:{report.id}")
    db().commit()
    pdf = report.content_type == "application/pdf" and report.source == "manual"
    name = f"report-{report.id}.{'pdf' if pdf else 'dcm'}"
    return Response(data, mimetype="application/pdf" if pdf else "application/dicom",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@blueprint.route("/pacs", methods=["GET"])
@require(Role.ADMIN, Role.QA_MANAGER, Role.RADIOLOGIST)
@operation("The report poll per DICOMweb destination: ok, or unreachable with the reason and next try")
def poll_states():  # noqa: ANN201
    rows = db().execute(select(Destination.id, Destination.name, ReportPollState)
                        .outerjoin(ReportPollState, ReportPollState.destination_id == Destination.id)
                        .where(Destination.kind == "stowrs").order_by(Destination.id)).all()

    def iso(value):  # noqa: ANN001, ANN202
        return value.isoformat() if value else None

    return jsonify({"destinations": [{
        "destination_id": dest_id, "name": name,
        "state": state.state if state else "not_polled_yet",
        "consecutive_failures": state.consecutive_failures if state else 0,
        "next_poll_at": iso(state.next_poll_at) if state else None,
        "last_polled_at": iso(state.last_polled_at) if state else None,
        "last_success_at": iso(state.last_success_at) if state else None,
        "last_error": state.last_error if state else None,
        "studies_checked_last_round": state.studies_checked if state else 0,
    } for dest_id, name, state in rows]})
