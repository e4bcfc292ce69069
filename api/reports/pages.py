"""The radiology report pages, same sign-in as the dashboard (/login, the session cookie):
``/reports`` lists the reports of the facilities the signed-in user may read, ``/reports/ID``
shows one with its text and status history. Server-rendered from the same queries as
/api/v1/reports (pipeline/reports/listing.py); the consults and comment thread hang below the
report on the same page."""

from __future__ import annotations

from flask import Blueprint, Response, redirect, render_template, request, url_for

from api.http.auth import csrf_token, signed_in_user
from api.http.context import db
from api.http.errors import ApiError
from api.reports import conversation
from api.reports.reports import READERS
from pipeline.accounts.scoping import readable_facility_ids
from pipeline.models import User
from pipeline.reports import listing

blueprint = Blueprint("report_pages", __name__, template_folder="templates")


def _viewer() -> User | Response:
    user = signed_in_user()
    if user is None:
        return redirect(url_for("accounts.login_form", next=request.full_path.rstrip("?")))
    if not user.has_role(*READERS):
        raise ApiError(403, "the report pages are for clinicians, radiologists, consultants, "
                            "QA managers and admins")
    return user


def _page(template: str, **context: object) -> Response:
    response = Response(render_template(template, csrf_token=csrf_token(), **context))
    response.headers["Cache-Control"] = "no-store"  # PHI: never kept by the browser
    return response


@blueprint.route("", methods=["GET"])
def index():  # noqa: ANN201
    user = _viewer()
    if isinstance(user, Response):
        return user
    before = request.args.get("before", "")
    query = listing.ReportQuery(facility_ids=readable_facility_ids(db(), user), limit=50,
                                before_id=int(before) if before.isascii() and before.isdigit() else None)
    rows = listing.list_reports(db(), query)
    return _page("reports/index.html", user=user, reports=rows,
                 next_before=rows[-1]["id"] if len(rows) == 50 else None)


@blueprint.route("/<id:report_id>", methods=["GET"])
def show(report_id: int):  # noqa: ANN201
    user = _viewer()
    if isinstance(user, Response):
        return user
    scope = readable_facility_ids(db(), user)
    report = listing.report_detail(db(), report_id, scope)
    if report is None:
        raise ApiError(404, f"report {report_id} not found")
    # The thread and consults below the report (api/reports/conversation.py).
    return _page("reports/conversation.html", user=user, report=report,
                 **conversation.page_context(db(), report_id))
