"""Scheduled export definitions at /api/v1/exports (QA managers and admins): the QA
managers' report builder. It lived at /api/v1/reports until that path was given to radiology
reports (api/reports/).

A QA manager sees and writes their facility's exports and may only filter on it; an admin
sees every facility's and may name others in ``filters.facility_ids``.

``GET  /catalogue``                       metrics, groupings, periods, formats, presets
``GET|POST /``                            list / create (body: ExportSpec)
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

from api.events.publish import export_run_changed
from api.exports.serializers import definition_json, run_json
from api.http.auth import actor, check_facility, current_user, require
from api.http.context import db, resources
from api.http.errors import ApiError
from api.http.openapi import operation
from pipeline.accounts import audit
from pipeline.exports import definitions as export_definitions
from pipeline.exports import runs as export_runs
from pipeline.exports import schedule as export_schedule
from pipeline.models import ExportDefinition, ExportRun, ExportRunState, Facility, Role, utcnow
from pipeline.storage import ObjectMissing
from workers import chains

blueprint = Blueprint("exports", __name__)
MANAGERS = (Role.QA_MANAGER, Role.ADMIN)


def _load(export_id: int) -> ExportDefinition:
    definition = db().get(ExportDefinition, export_id)
    if definition is None:
        raise ApiError(404, f"export {export_id} not found")
    check_facility(definition.facility_id)
    return definition


def _owner_facility(spec: export_definitions.ExportSpec) -> int:
    """The facility a report belongs to; QA managers can only report on their own."""
    user = current_user()
    wanted = spec.filters.facility_ids or [user.facility_id]
    for facility_id in wanted:
        if db().get(Facility, facility_id) is None:
            raise ApiError(400, f"filters.facility_ids: no facility {facility_id}")
        check_facility(facility_id)
    return user.facility_id if user.facility_id in wanted else wanted[0]


def _save(definition: ExportDefinition, spec: export_definitions.ExportSpec, action: str) -> None:
    try:
        export_runs.save_definition(db(), definition, spec, utcnow())
        audit.record(db(), actor(), action, target=f"export:{definition.id}",
                     detail={"name": spec.name, "schedule": spec.cron, "timezone": spec.timezone,
                             "enabled": spec.enabled, "recipients": len(spec.recipients)})
        db().commit()
    except IntegrityError as exc:
        db().rollback()
        raise ApiError(409, f"an export named {spec.name!r} exists in this facility") from exc


@blueprint.route("/catalogue", methods=["GET"])
@require(*MANAGERS)
@operation("What an export may contain: metrics, groupings, periods, formats, schedule presets")
def catalogue():  # noqa: ANN201
    return jsonify({
        "metrics": [{"name": k, "label": v[0], "section": v[1]}
                    for k, v in export_definitions.METRICS.items()],
        "groupings": list(export_definitions.GROUPINGS),
        "periods": list(export_definitions.PERIODS),
        "formats": list(export_definitions.FORMATS),
        "schedule_presets": export_schedule.PRESETS,
    })


@blueprint.route("", methods=["GET"])
@require(*MANAGERS)
@operation("List export definitions (own facility; admins: all)")
def list_exports():  # noqa: ANN201
    user = current_user()
    stmt = select(ExportDefinition).order_by(ExportDefinition.id)
    if user.role != Role.ADMIN:
        stmt = stmt.where(ExportDefinition.facility_id == user.facility_id)
    return jsonify({"exports": [definition_json(d) for d in db().scalars(stmt)]})


@blueprint.route("", methods=["POST"])
@require(*MANAGERS)
@operation("Create an export definition", body=export_definitions.ExportSpec,
           responses={201: "created"}, errors=(400, 401, 403, 409, 429))
def create():  # noqa: ANN201
    spec: export_definitions.ExportSpec = g.body
    definition = ExportDefinition(facility_id=_owner_facility(spec), created_by=current_user().id,
                                  created_at=utcnow())
    _save(definition, spec, "export.created")
    response = jsonify(definition_json(definition))
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/exports/{definition.id}"
    return response


@blueprint.route("/<id:export_id>", methods=["GET"])
@require(*MANAGERS)
@operation("An export definition and its latest runs")
def show(export_id: int):  # noqa: ANN201
    definition = _load(export_id)
    body = definition_json(definition)
    body["runs"] = [run_json(r) for r in export_runs.latest_runs(db(), export_id, 10)]
    return jsonify(body)


@blueprint.route("/<id:export_id>", methods=["PUT"])
@require(*MANAGERS)
@operation("Replace an export definition (reschedules from now)", body=export_definitions.ExportSpec,
           errors=(400, 401, 403, 404, 409, 429))
def replace(export_id: int):  # noqa: ANN201
    definition = _load(export_id)
    spec: export_definitions.ExportSpec = g.body
    definition.facility_id = _owner_facility(spec)
    _save(definition, spec, "export.updated")
    return jsonify(definition_json(definition))


@blueprint.route("/<id:export_id>", methods=["DELETE"])
@require(*MANAGERS)
@operation("Delete an export definition and its run history", responses={204: "deleted"})
def delete(export_id: int):  # noqa: ANN201
    definition = _load(export_id)
    audit.record(db(), actor(), "export.deleted", target=f"export:{export_id}",
                 detail={"name": definition.name})
    for run in db().scalars(select(ExportRun).where(ExportRun.export_id == export_id)):
        db().delete(run)
    db().delete(definition)
    db().commit()
    return "", 204


@blueprint.route("/<id:export_id>/run", methods=["POST"])
@require(*MANAGERS)
@operation("Run an export now (for the period it would cover if due now)", responses={202: "queued"})
def run_now(export_id: int):  # noqa: ANN201
    definition = _load(export_id)
    run = export_runs.run_now(db(), definition, utcnow())
    audit.record(db(), actor(), "export.run_requested", target=f"export:{export_id}",
                 detail={"run_id": run.id})
    export_run_changed(db(), definition, run)  # committed with the run (the outbox)
    db().commit()
    chains.enqueue_export_run(run.id)  # after the commit: the worker must find the row
    response = jsonify(run_json(run))
    response.status_code = 202
    return response


@blueprint.route("/<id:export_id>/runs", methods=["GET"])
@require(*MANAGERS)
@operation("Run history of an export, newest first")
def runs(export_id: int):  # noqa: ANN201
    _load(export_id)
    return jsonify({"runs": [run_json(r) for r in export_runs.latest_runs(db(), export_id)]})


def _run(export_id: int, run_id: int) -> ExportRun:
    _load(export_id)
    run = db().get(ExportRun, run_id)
    if run is None or run.export_id != export_id:
        raise ApiError(404, f"run {run_id} of export {export_id} not found")
    return run


@blueprint.route("/<id:export_id>/runs/<id:run_id>/replay", methods=["POST"])
@require(*MANAGERS)
@operation("Queue a failed run again", responses={202: "queued"}, errors=(400, 401, 403, 404, 409, 429))
def replay(export_id: int, run_id: int):  # noqa: ANN201
    run = _run(export_id, run_id)
    if run.state != ExportRunState.FAILED:
        raise ApiError(409, f"run {run_id} is {run.state}; only failed runs are replayed")
    export_runs.replay(db(), run, utcnow())
    audit.record(db(), actor(), "export.run_replayed", target=f"export:{export_id}",
                 detail={"run_id": run_id})
    export_run_changed(db(), db().get_one(ExportDefinition, export_id), run)  # committed with the run
    db().commit()
    chains.enqueue_export_run(run_id)
    response = jsonify(run_json(run))
    response.status_code = 202
    return response


@blueprint.route("/<id:export_id>/runs/<id:run_id>/files/<name>", methods=["GET"])
@require(*MANAGERS)
@operation("Download one file of a past run")
def download(export_id: int, run_id: int, name: str):  # noqa: ANN201
    run = _run(export_id, run_id)
    key = (run.artifacts or {}).get(name)
    if key is None:
        raise ApiError(404, f"run {run_id} has no file {name!r}", files=sorted(run.artifacts or {}))
    try:
        body = resources().store.open(key)
    except ObjectMissing as exc:
        raise ApiError(404, f"file {name!r} is no longer stored") from exc
    audit.record(db(), actor(), "export.downloaded", target=f"export:{export_id}",
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
