"""Scheduled report definitions at /api/v1/reports (QA managers and admins).

A QA manager sees and writes their facility's reports and may only filter on it; an admin
sees every facility's and may name others in ``filters.facility_ids``.

``GET  /catalogue``                       metrics, groupings, periods, formats, presets
``GET|POST /``                            list / create (body: ReportSpec)
``GET|PUT|DELETE /ID``                    read / replace / delete
``POST /ID/run``                          run now (202, the run's row)
``GET  /ID/runs``                         run history, newest first
``POST /ID/runs/RUN/replay``              queue a failed run again
``GET  /ID/runs/RUN/files/NAME``          download an artifact (audited)
"""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, stream_with_context
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.events.publish import report_run_changed
from api.exports.serializers import definition_json, run_json
from api.http.auth import actor, check_facility, current_user, require
from api.http.context import db, resources
from api.http.errors import ApiError
from api.http.openapi import operation
from pipeline.accounts import audit
from pipeline.exports import definitions as report_definitions
from pipeline.exports import runs as report_runs
from pipeline.exports import schedule as report_schedule
from pipeline.models import Facility, ReportDefinition, ReportRun, ReportRunState, Role, utcnow
from pipeline.storage import ObjectMissing
from workers import chains

blueprint = Blueprint("reports", __name__)
MANAGERS = (Role.QA_MANAGER, Role.ADMIN)


MAX_ID = 2**31 - 1  # PostgreSQL integer ids: a larger path id is simply not found


def _load(report_id: int) -> ReportDefinition:
    definition = db().get(ReportDefinition, report_id) if report_id <= MAX_ID else None
    if definition is None:
        raise ApiError(404, f"report {report_id} not found")
    check_facility(definition.facility_id)
    return definition


def _owner_facility(spec: report_definitions.ReportSpec) -> int:
    """The facility a report belongs to; QA managers can only report on their own."""
    user = current_user()
    wanted = spec.filters.facility_ids or [user.facility_id]
    for facility_id in wanted:
        if db().get(Facility, facility_id) is None:
            raise ApiError(400, f"filters.facility_ids: no facility {facility_id}")
        check_facility(facility_id)
    return user.facility_id if user.facility_id in wanted else wanted[0]


def _save(definition: ReportDefinition, spec: report_definitions.ReportSpec, action: str) -> None:
    try:
        report_runs.save_definition(db(), definition, spec, utcnow())
        audit.record(db(), actor(), action, target=f"report:{definition.id}",
                     detail={"name": spec.name, "schedule": spec.cron, "timezone": spec.timezone,
                             "enabled": spec.enabled, "recipients": len(spec.recipients)})
        db().commit()
    except IntegrityError as exc:
        db().rollback()
        raise ApiError(409, f"a report named {spec.name!r} exists in this facility") from exc


@blueprint.route("/catalogue", methods=["GET"])
@require(*MANAGERS)
@operation("What a report may contain: metrics, groupings, periods, formats, schedule presets")
def catalogue():  # noqa: ANN201
    return jsonify({
        "metrics": [{"name": k, "label": v[0], "section": v[1]}
                    for k, v in report_definitions.METRICS.items()],
        "groupings": list(report_definitions.GROUPINGS),
        "periods": list(report_definitions.PERIODS),
        "formats": list(report_definitions.FORMATS),
        "schedule_presets": report_schedule.PRESETS,
    })


@blueprint.route("", methods=["GET"])
@require(*MANAGERS)
@operation("List report definitions (own facility; admins: all)")
def list_reports():  # noqa: ANN201
    user = current_user()
    stmt = select(ReportDefinition).order_by(ReportDefinition.id)
    if user.role != Role.ADMIN:
        stmt = stmt.where(ReportDefinition.facility_id == user.facility_id)
    return jsonify({"reports": [definition_json(d) for d in db().scalars(stmt)]})


@blueprint.route("", methods=["POST"])
@require(*MANAGERS)
@operation("Create a report definition", body=report_definitions.ReportSpec,
           responses={201: "created"}, errors=(400, 401, 403, 409, 429))
def create():  # noqa: ANN201
    spec: report_definitions.ReportSpec = g.body
    definition = ReportDefinition(facility_id=_owner_facility(spec), created_by=current_user().id,
                                  created_at=utcnow())
    _save(definition, spec, "report.created")
    response = jsonify(definition_json(definition))
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/reports/{definition.id}"
    return response


@blueprint.route("/<int:report_id>", methods=["GET"])
@require(*MANAGERS)
@operation("A report definition and its latest runs")
def show(report_id: int):  # noqa: ANN201
    definition = _load(report_id)
    body = definition_json(definition)
    body["runs"] = [run_json(r) for r in report_runs.latest_runs(db(), report_id, 10)]
    return jsonify(body)


@blueprint.route("/<int:report_id>", methods=["PUT"])
@require(*MANAGERS)
@operation("Replace a report definition (reschedules from now)", body=report_definitions.ReportSpec,
           errors=(400, 401, 403, 404, 409, 429))
def replace(report_id: int):  # noqa: ANN201
    definition = _load(report_id)
    spec: report_definitions.ReportSpec = g.body
    definition.facility_id = _owner_facility(spec)
    _save(definition, spec, "report.updated")
    return jsonify(definition_json(definition))


@blueprint.route("/<int:report_id>", methods=["DELETE"])
@require(*MANAGERS)
@operation("Delete a report definition and its run history", responses={204: "deleted"})
def delete(report_id: int):  # noqa: ANN201
    definition = _load(report_id)
    audit.record(db(), actor(), "report.deleted", target=f"report:{report_id}",
                 detail={"name": definition.name})
    for run in db().scalars(select(ReportRun).where(ReportRun.report_id == report_id)):
        db().delete(run)
    db().delete(definition)
    db().commit()
    return "", 204


@blueprint.route("/<int:report_id>/run", methods=["POST"])
@require(*MANAGERS)
@operation("Run a report now (for the period it would cover if due now)", responses={202: "queued"})
def run_now(report_id: int):  # noqa: ANN201
    definition = _load(report_id)
    run = report_runs.run_now(db(), definition, utcnow())
    audit.record(db(), actor(), "report.run_requested", target=f"report:{report_id}",
                 detail={"run_id": run.id})
    report_run_changed(db(), definition, run)  # committed with the run (the outbox)
    db().commit()
    chains.enqueue_export_run(run.id)  # after the commit: the worker must find the row
    response = jsonify(run_json(run))
    response.status_code = 202
    return response


@blueprint.route("/<int:report_id>/runs", methods=["GET"])
@require(*MANAGERS)
@operation("Run history of a report, newest first")
def runs(report_id: int):  # noqa: ANN201
    _load(report_id)
    return jsonify({"runs": [run_json(r) for r in report_runs.latest_runs(db(), report_id)]})


def _run(report_id: int, run_id: int) -> ReportRun:
    _load(report_id)
    run = db().get(ReportRun, run_id) if run_id <= MAX_ID else None
    if run is None or run.report_id != report_id:
        raise ApiError(404, f"run {run_id} of report {report_id} not found")
    return run


@blueprint.route("/<int:report_id>/runs/<int:run_id>/replay", methods=["POST"])
@require(*MANAGERS)
@operation("Queue a failed run again", responses={202: "queued"}, errors=(400, 401, 403, 404, 409, 429))
def replay(report_id: int, run_id: int):  # noqa: ANN201
    run = _run(report_id, run_id)
    if run.state != ReportRunState.FAILED:
        raise ApiError(409, f"run {run_id} is {run.state}; only failed runs are replayed")
    report_runs.replay(db(), run, utcnow())
    audit.record(db(), actor(), "report.run_replayed", target=f"report:{report_id}",
                 detail={"run_id": run_id})
    report_run_changed(db(), db().get_one(ReportDefinition, report_id), run)  # committed with the run
    db().commit()
    chains.enqueue_export_run(run_id)
    response = jsonify(run_json(run))
    response.status_code = 202
    return response


@blueprint.route("/<int:report_id>/runs/<int:run_id>/files/<name>", methods=["GET"])
@require(*MANAGERS)
@operation("Download one file of a past run")
def download(report_id: int, run_id: int, name: str):  # noqa: ANN201
    run = _run(report_id, run_id)
    key = (run.artifacts or {}).get(name)
    if key is None:
        raise ApiError(404, f"run {run_id} has no file {name!r}", files=sorted(run.artifacts or {}))
    try:
        body = resources().store.open(key)
    except ObjectMissing as exc:
        raise ApiError(404, f"file {name!r} is no longer stored") from exc
    audit.record(db(), actor(), "report.downloaded", target=f"report:{report_id}",
                 detail={"run_id": run_id, "file": name})
    db().commit()

    def chunks():  # noqa: ANN202
        with body:
            while chunk := body.read(1024 * 1024):
                yield chunk

    kind = {"xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "pdf": "application/pdf", "csv": "text/csv"}.get(name.rsplit(".", 1)[-1],
                                                             "application/octet-stream")
    return Response(stream_with_context(chunks()), mimetype=kind,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
