"""Teaching cases over HTTP. Every route needs a teaching role (teaching, teaching_publisher)
or admin; what each may see and do is decided in pipeline/teaching/cases.py.

``POST  /cases``  add a draft case from a delivered study or a radiology report (authors:
      radiologists, publishers, admins, from studies they may read); 202, the worker copies.
``GET   /cases?q=&modality=&body_part=&difficulty=&diagnosis=&state=&page=&per_page=&unknown=``
      full-text search with facets, paginated; ``unknown=1`` hides the diagnosis.
``GET   /cases/ID[?unknown=1]``  one case; ``PATCH /cases/ID``  edit (author, publishers).
``POST  /cases/ID/publish`` ``POST /cases/ID/withdraw``  publishers.
``GET   /cases/ID/key-image``  the PNG; ``GET /cases/ID/download``  zip with a rebuilt DICOMDIR.
``POST  /cases/ID/instances/IID/confirm``  the pixels are clean; ``.../mask`` black out regions.
``GET   /cases/ID/mapping``  original -> de-identified identifiers: admins only, audited.
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, Response, g, jsonify, stream_with_context
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.http.auth import actor, current_user, require
from api.http.context import db, resources
from api.http.errors import ApiError
from api.http.openapi import operation
from pipeline.accounts import audit
from pipeline.models import Role, TeachingInstance, TeachingInstanceState
from pipeline.storage import ObjectMissing
from pipeline.teaching import cases
from pipeline.teaching.profile import DeidOptions
from workers import chains

blueprint = Blueprint("teaching", __name__)

READERS = (Role.TEACHING, Role.TEACHING_PUBLISHER, Role.RADIOLOGIST, Role.ADMIN)


class OptionsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    retain_modified_dates: bool = True
    retain_patient_characteristics: bool = True
    clean_descriptors: bool = True
    retain_safe_private: bool = False


class FieldsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str | None = Field(None, max_length=200)
    history: str | None = Field(None, max_length=20000)
    findings: str | None = Field(None, max_length=20000)
    diagnosis: str | None = Field(None, max_length=300)
    differential: str | None = Field(None, max_length=20000)
    discussion: str | None = Field(None, max_length=50000)
    difficulty: Literal["primary", "intermediate", "advanced"] | None = None
    modality: str | None = Field(None, max_length=16)
    body_part: str | None = Field(None, max_length=64)
    keywords: list[str] | None = Field(None, max_length=50)
    show_author_facility: bool | None = None


class AddBody(FieldsBody):
    study_id: int | None = Field(None, ge=1, description="a delivered study")
    report_id: int | None = Field(None, ge=1, description="a radiology report (its study)")
    title: str = Field(min_length=1, max_length=200)
    options: OptionsBody = OptionsBody()

    @model_validator(mode="after")
    def _one_source(self) -> AddBody:
        if (self.study_id is None) == (self.report_id is None):
            raise ValueError("give exactly one of study_id and report_id")
        return self


class SearchArgs(BaseModel):
    q: str | None = Field(None, max_length=200)
    modality: str | None = Field(None, max_length=16)
    body_part: str | None = Field(None, max_length=64)
    difficulty: Literal["primary", "intermediate", "advanced"] | None = None
    diagnosis: str | None = Field(None, max_length=300)
    state: Literal["draft", "published", "withdrawn"] | None = None
    page: int = Field(1, ge=1, le=10000)
    per_page: int = Field(20, ge=1, le=100)
    unknown: bool = False


class CaseArgs(BaseModel):
    unknown: bool = False


class MaskBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    regions: list[list[int]] = Field(min_length=1, max_length=50)


def _fail(exc: cases.CaseError) -> ApiError:
    return ApiError(exc.status, str(exc))


def _fields(body: FieldsBody, *, skip: tuple[str, ...] = ()) -> dict:
    return {k: v for k, v in body.model_dump(exclude_unset=True).items()
            if v is not None and k not in skip}


@blueprint.route("/cases", methods=["POST"])
@require(*READERS)
@operation("Add a draft teaching case from a delivered study; its instances are copied "
           "through de-identification by the teaching worker", body=AddBody,
           responses={202: "added; being filled"})
def add_case():  # noqa: ANN201
    body: AddBody = g.body
    session = db()
    user = current_user()
    fields = _fields(body, skip=("study_id", "report_id", "options"))
    options = DeidOptions(**body.options.model_dump())
    try:
        if body.report_id is not None:
            case = cases.add_from_report(session, user, body.report_id, fields, options)
        else:
            case = cases.add_from_study(session, user, body.study_id, fields, options)
    except cases.CaseError as exc:
        raise _fail(exc) from exc
    audit.record(session, actor(), "teaching.case_added", f"teaching_case:{case.id}",
                 {"options": case.options})
    session.commit()
    chains.enqueue_teaching_case(case.id)
    answer = cases.describe(session, user, case)
    return jsonify(answer), 202


@blueprint.route("/cases", methods=["GET"])
@require(*READERS)
@operation("Search teaching cases: full text plus facets, paginated", query=SearchArgs)
def search_cases():  # noqa: ANN201
    args: SearchArgs = g.query
    query = cases.SearchQuery(text=args.q, modality=args.modality, body_part=args.body_part,
                              difficulty=args.difficulty, diagnosis=args.diagnosis, state=args.state,
                              page=args.page, per_page=args.per_page, unknown=args.unknown)
    return jsonify(cases.search(db(), current_user(), query))


def _case(case_id: int):  # noqa: ANN202
    try:
        return cases.get_visible(db(), current_user(), case_id)
    except cases.CaseError as exc:
        raise _fail(exc) from exc


@blueprint.route("/cases/<id:case_id>", methods=["GET"])
@require(*READERS)
@operation("One teaching case (unknown=1 hides the diagnosis)", query=CaseArgs)
def get_case(case_id: int):  # noqa: ANN201
    return jsonify(cases.describe(db(), current_user(), _case(case_id), unknown=g.query.unknown))


@blueprint.route("/cases/<id:case_id>", methods=["PATCH"])
@require(*READERS)
@operation("Edit a case (author, publishers); answers with free-text warnings", body=FieldsBody)
def edit_case(case_id: int):  # noqa: ANN201
    session = db()
    case = _case(case_id)
    fields = _fields(g.body)
    try:
        cases.edit(session, current_user(), case, fields)
    except cases.CaseError as exc:
        raise _fail(exc) from exc
    audit.record(session, actor(), "teaching.case_edited", f"teaching_case:{case.id}",
                 {"fields": sorted(fields)})
    session.commit()
    return jsonify(cases.describe(session, current_user(), case))


def _transition(case_id: int, change, action: str):  # noqa: ANN001, ANN202
    session = db()
    case = _case(case_id)
    try:
        change(session, current_user(), case)
    except cases.CaseError as exc:
        raise _fail(exc) from exc
    audit.record(session, actor(), action, f"teaching_case:{case.id}", {"state": case.state})
    session.commit()
    return jsonify(cases.describe(session, current_user(), case))


@blueprint.route("/cases/<id:case_id>/publish", methods=["POST"])
@require(*READERS)
@operation("Publish a case (publishers)")
def publish_case(case_id: int):  # noqa: ANN201
    return _transition(case_id, cases.publish, "teaching.case_published")


@blueprint.route("/cases/<id:case_id>/withdraw", methods=["POST"])
@require(*READERS)
@operation("Withdraw a case (publishers)")
def withdraw_case(case_id: int):  # noqa: ANN201
    return _transition(case_id, cases.withdraw, "teaching.case_withdrawn")


def _stream(key: str, mimetype: str, filename: str) -> Response:
    try:
        body = resources().store.open(key)
    except ObjectMissing as exc:
        raise ApiError(404, "not in storage") from exc

    def chunks():  # noqa: ANN202
        with body:
            while chunk := body.read(1024 * 1024):
                yield chunk

    return Response(stream_with_context(chunks()), mimetype=mimetype,
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@blueprint.route("/cases/<id:case_id>/key-image", methods=["GET"])
@require(*READERS)
@operation("The case's key image (PNG, with the instance's window)")
def key_image(case_id: int):  # noqa: ANN201
    case = _case(case_id)
    if case.key_image_key is None:
        raise ApiError(404, "this case has no key image yet")
    return _stream(case.key_image_key, "image/png", f"case-{case.id}.png")


@blueprint.route("/cases/<id:case_id>/download", methods=["GET"])
@require(*READERS)
@operation("The case as a zip of DICOM files with a rebuilt DICOMDIR")
def download(case_id: int):  # noqa: ANN201
    session = db()
    case = _case(case_id)
    if case.package_key is None:
        raise ApiError(409, "the case's files are still being prepared", hint="try again shortly")
    audit.record(session, actor(), "teaching.case_downloaded", f"teaching_case:{case.id}", {})
    session.commit()
    return _stream(case.package_key, "application/zip", f"teaching-case-{case.id}.zip")


def _held(case_id: int, instance_id: int) -> TeachingInstance:
    session = db()
    case = _case(case_id)
    user = current_user()
    if case.author_id != user.id and not cases.is_publisher(user):
        raise ApiError(403, "only the author or a publisher reviews pixels")
    row = session.get(TeachingInstance, instance_id)
    if row is None or row.case_id != case.id:
        raise ApiError(404, f"no instance {instance_id} in case {case_id}")
    if row.state != TeachingInstanceState.HELD:
        raise ApiError(409, "this instance is not held")
    return row


@blueprint.route("/cases/<id:case_id>/instances/<id:instance_id>/confirm", methods=["POST"])
@require(*READERS)
@operation("Confirm a held instance's pixels carry no identifying text")
def confirm_instance(case_id: int, instance_id: int):  # noqa: ANN201
    session = db()
    row = _held(case_id, instance_id)
    row.state = TeachingInstanceState.READY
    row.hold_reason = None
    audit.record(session, actor(), "teaching.pixels_confirmed", f"teaching_instance:{row.id}",
                 {"case": case_id})
    session.commit()
    chains.enqueue_teaching_package(case_id)
    return jsonify({"id": row.id, "state": row.state})


@blueprint.route("/cases/<id:case_id>/instances/<id:instance_id>/mask", methods=["POST"])
@require(*READERS)
@operation("Black out regions [x, y, width, height] of a held instance (Clean Pixel Data)",
           body=MaskBody, responses={202: "masking"})
def mask_instance(case_id: int, instance_id: int):  # noqa: ANN201
    session = db()
    row = _held(case_id, instance_id)
    regions = g.body.regions
    for region in regions:
        if len(region) != 4 or region[2] <= 0 or region[3] <= 0 or min(region) < 0:
            raise ApiError(400, "each region is [x, y, width, height] with positive width and height")
        if row.rows is not None and row.columns is not None and (
                region[0] >= row.columns or region[1] >= row.rows):
            raise ApiError(400, f"region {region} starts outside the {row.columns}x{row.rows} image")
    audit.record(session, actor(), "teaching.pixels_masked", f"teaching_instance:{row.id}",
                 {"case": case_id, "regions": len(regions)})
    session.commit()
    chains.enqueue_teaching_mask(row.id, regions)
    return jsonify({"id": row.id, "state": "masking"}), 202


@blueprint.route("/cases/<id:case_id>/mapping", methods=["GET"])
@require(Role.ADMIN)
@operation("Governance: the source study and original -> de-identified identifiers (admins; audited)")
def mapping(case_id: int):  # noqa: ANN201
    session = db()
    try:
        body = cases.mapping(session, case_id)
    except cases.CaseError as exc:
        raise _fail(exc) from exc
    audit.record(session, actor(), "teaching.mapping_read", f"teaching_case:{case_id}",
                 {"instances": len(body["instances"])})
    session.commit()
    return jsonify(body)
