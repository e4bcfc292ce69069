"""The facility dashboard at /dashboard: server-rendered pages for admins and QA managers.

Each page is rendered with its data in one request (the same drill-down reads as
/api/v1/analytics) and a small script draws the charts as SVG from the JSON embedded in the
page: no second round trip, no chart library, no build step. The page then listens to the
event stream (``relaypacs events``, at RELAYPACS_DASHBOARD_EVENTS_URL) and updates its
numbers and charts as uploads arrive and studies are delivered.

People sign in once at /login (api/accounts/sign_in.py) with email and password; the pages
read the session cookie (api.http.auth), with the same roles and facility scoping as the API.
Someone signed in whose role is not a viewer gets 403.

/dashboard/readers (admins only) lists the reader assignments, and adds and ends them from
the page through /api/v1/reader-assignments (the API's checks and audit, the session's CSRF
token): read from the primary, so the list shown after a change has it.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, redirect, render_template, request, url_for
from sqlalchemy import select

from api.accounts.reader_assignments import assignments
from api.analytics.drilldown import VIEWERS
from api.http.auth import csrf_token, signed_in_user
from api.http.context import close_read_session, db, read_db, resources
from api.http.errors import ApiError
from pipeline.analytics import drilldown, stats
from pipeline.models import Facility, Role, User

blueprint = Blueprint("dashboard", __name__, template_folder="templates",
                      static_folder="static", static_url_path="/static")
blueprint.teardown_app_request(close_read_session)


@blueprint.app_template_filter("filesize")
def filesize(value: int | None) -> str:
    size = float(value or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


@blueprint.app_template_filter("duration")
def duration(ms: float | None) -> str:
    if ms is None:
        return "–"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.1f} min"


def _signed_in() -> User | None:
    user = signed_in_user()
    if user is not None and Role(user.role) not in VIEWERS:
        raise ApiError(403, "the dashboard is for admins and QA managers")
    return user


def _page(template: str, data: dict, rng: drilldown.Range, user: User) -> str | Response:
    """The page, or with ``?format=json`` its data: what the live page fetches to reconcile
    its event-driven counts with the materialised stats (``as_of``: the stats job's watermark;
    events after it are not in the numbers yet)."""
    as_of = stats.as_of(read_db())
    data["as_of"] = as_of.isoformat() if as_of else None
    if request.args.get("format") == "json":
        response = jsonify(data)
    else:
        query = {k: v for k, v in request.args.items() if k in ("from", "to", "granularity")}
        response = Response(render_template(
            template, data=data, rng=rng, user=user, query=query, csrf_token=csrf_token(),
            granularities=drilldown.GRANULARITIES, events_url=resources().settings.dashboard_events_url))
    # Never cached: after a sign-out, the back button asks the server (and gets the sign-in page).
    response.headers["Cache-Control"] = "no-store"
    return response


def _range() -> drilldown.Range:
    try:
        return drilldown.parse_range(request.args.get("from"), request.args.get("to"),
                                     request.args.get("granularity"))
    except drilldown.RangeError as exc:
        raise ApiError(400, str(exc)) from exc


def _login_redirect() -> Response:
    return redirect(url_for("accounts.login_form", next=request.full_path.rstrip("?")))


@blueprint.route("/login", methods=["GET"])
def login_form() -> Response:
    """The sign-in moved to /login (one for every page); old bookmarks land there."""
    return redirect(url_for("accounts.login_form", next=request.args.get("next") or "/dashboard"))


@blueprint.route("", methods=["GET"])
@blueprint.route("/", methods=["GET"])
def overview():  # noqa: ANN201
    user = _signed_in()
    if user is None:
        return _login_redirect()
    if user.role != Role.ADMIN:  # a QA manager's dashboard is their facility
        return redirect(url_for("dashboard.facility", facility_id=user.facility_id, **request.args))
    rng = _range()
    data = drilldown.facilities_overview(read_db(), rng, None)
    t = data["totals"]
    data["status_mix"] = {"accepted": t["uploads"] - t["quarantined"], "quarantined": t["quarantined"],
                          "delivered": t["delivered"], "pending delivery": t["pending_deliveries"],
                          "failed delivery": t["failed_deliveries"]}
    return _page("dashboard/overview.html", data, rng, user)


def _check_facility(user: User, facility_id: int) -> None:
    if user.role != Role.ADMIN and user.facility_id != facility_id:
        raise ApiError(403, "this belongs to another facility")


@blueprint.route("/facilities/<id:facility_id>", methods=["GET"])
def facility(facility_id: int):  # noqa: ANN201
    user = _signed_in()
    if user is None:
        return _login_redirect()
    _check_facility(user, facility_id)
    rng = _range()
    data = drilldown.facility_detail(read_db(), rng, facility_id)
    if data is None:
        raise ApiError(404, f"facility {facility_id} not found")
    return _page("dashboard/facility.html", data, rng, user)


@blueprint.route("/facilities/<id:facility_id>/users/<id:user_id>", methods=["GET"])
def user(facility_id: int, user_id: int):  # noqa: ANN201
    viewer = _signed_in()
    if viewer is None:
        return _login_redirect()
    _check_facility(viewer, facility_id)
    rng = _range()
    data = drilldown.user_detail(read_db(), rng, facility_id, user_id, limit=50)
    if data is None:
        raise ApiError(404, f"user {user_id} not found in facility {facility_id}")
    return _page("dashboard/user.html", data, rng, viewer)


@blueprint.route("/readers", methods=["GET"])
def readers():  # noqa: ANN201
    user = _signed_in()
    if user is None:
        return _login_redirect()
    if not user.is_admin:
        raise ApiError(403, "reader assignments are kept by admins")
    session = db()
    people = [u for u in session.scalars(select(User).where(User.disabled_at.is_(None)).order_by(User.email))
              if u.has_role(Role.RADIOLOGIST, Role.CONSULTANT)]
    facilities = session.execute(select(Facility.id, Facility.name).order_by(Facility.name)).all()
    response = Response(render_template(
        "dashboard/readers.html", user=user, csrf_token=csrf_token(), assignments=assignments(session),
        readers=[{"id": u.id, "email": u.email, "facility_id": u.facility_id} for u in people],
        facilities=[{"id": f.id, "name": f.name} for f in facilities]))
    response.headers["Cache-Control"] = "no-store"
    return response
