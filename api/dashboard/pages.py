"""The facility dashboard at /dashboard: server-rendered pages for admins and QA managers.

Each page is rendered with its data in one request (the same drill-down reads as
/api/v1/analytics) and a small script draws the charts as SVG from the JSON embedded in the
page: no second round trip, no chart library, no build step. The page then listens to the
event stream (``relaypacs events``, at RELAYPACS_DASHBOARD_EVENTS_URL) and updates its
numbers and charts as uploads arrive and studies are delivered.

A browser cannot send ``Authorization: Bearer`` on a navigation, so the dashboard signs in
once with an API token and keeps it in an HttpOnly, SameSite=Strict cookie (scoped to
/dashboard): the same token, the same roles and facility scoping as the API.
"""

from __future__ import annotations

from urllib.parse import urlparse

from flask import Blueprint, Response, g, jsonify, redirect, render_template, request, url_for

from api.analytics.drilldown import VIEWERS
from api.http.auth import actor, user_for_token
from api.http.context import close_read_session, db, read_db, resources
from api.http.errors import ApiError
from pipeline.accounts import audit
from pipeline.analytics import drilldown, stats
from pipeline.models import Role, User

COOKIE = "relaypacs_dashboard"
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
    token = request.cookies.get(COOKIE, "")
    user = user_for_token(db(), token) if token else None
    if user is None or Role(user.role) not in VIEWERS:
        return None
    g.user = user
    return user


def _page(template: str, data: dict, rng: drilldown.Range, user: User) -> str | Response:
    """The page, or with ``?format=json`` its data: what the live page fetches to reconcile
    its event-driven counts with the materialised stats (``as_of``: the stats job's watermark;
    events after it are not in the numbers yet)."""
    as_of = stats.as_of(read_db())
    data["as_of"] = as_of.isoformat() if as_of else None
    if request.args.get("format") == "json":
        return jsonify(data)
    query = {k: v for k, v in request.args.items() if k in ("from", "to", "granularity")}
    return render_template(template, data=data, rng=rng, user=user, query=query,
                           granularities=drilldown.GRANULARITIES,
                           events_url=resources().settings.dashboard_events_url)


def _range() -> drilldown.Range:
    try:
        return drilldown.parse_range(request.args.get("from"), request.args.get("to"),
                                     request.args.get("granularity"))
    except drilldown.RangeError as exc:
        raise ApiError(400, str(exc)) from exc


def _login_redirect() -> Response:
    return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))


@blueprint.route("/login", methods=["GET"])
def login_form() -> str:
    return render_template("dashboard/login.html", user=None, error=None,
                           next=request.args.get("next", ""))


@blueprint.route("/login", methods=["POST"])
def login():  # noqa: ANN201
    target = request.form.get("next") or url_for("dashboard.overview")
    # Only a local path: never bounce a fresh sign-in to another site.
    if urlparse(target).netloc or not target.startswith("/dashboard"):
        target = url_for("dashboard.overview")
    try:
        resources().limiter.check_login(request.remote_addr or "unknown")
    except ApiError as exc:
        page = render_template("dashboard/login.html", user=None, error=exc.message, next=target)
        return page, 429, {"Retry-After": str(exc.extra["retry_after"])}
    token = (request.form.get("token") or "").strip()
    user = user_for_token(db(), token) if token else None
    if user is None or Role(user.role) not in VIEWERS:
        message = ("unknown or revoked token" if user is None
                   else "the dashboard is for admins and QA managers")
        _audit_login(user, "auth.login_refused", {"reason": message})
        return render_template("dashboard/login.html", user=None, error=message, next=target), 401
    _audit_login(user, "auth.login", None)
    response = redirect(target)
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure,
                        path="/dashboard", max_age=12 * 3600)
    return response


def _audit_login(user: User | None, action: str, detail: dict | None) -> None:
    g.user = user  # the trail (and the access log line) name who signed in, when known
    session = db()
    audit.record(session, actor(), action, target=f"user:{user.id}" if user else None,
                 detail=detail)
    session.commit()


@blueprint.route("/logout", methods=["POST"])
def logout():  # noqa: ANN201
    response = redirect(url_for("dashboard.login_form"))
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


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


@blueprint.route("/facilities/<int:facility_id>", methods=["GET"])
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


@blueprint.route("/facilities/<int:facility_id>/users/<int:user_id>", methods=["GET"])
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
