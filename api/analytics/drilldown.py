"""Drill-down analytics at /api/v1/analytics: facilities -> users -> uploads.

Admins see every facility, QA managers their own (403 for another's), uploaders none.
Reads go to a read replica when one is configured and healthy (``read_db``).
Query parameters: ``from``, ``to`` (ISO 8601 dates or datetimes, UTC by default) and
``granularity`` (hour, day, week); the upload listing also takes ``limit`` (1-200).
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from api.http.auth import check_facility, current_user, require
from api.http.context import close_read_session, read_db
from api.http.errors import ApiError
from pipeline.analytics import drilldown
from pipeline.models import Role

blueprint = Blueprint("analytics", __name__)
VIEWERS = (Role.ADMIN, Role.QA_MANAGER)
blueprint.teardown_app_request(close_read_session)


def request_range() -> drilldown.Range:
    try:
        return drilldown.parse_range(request.args.get("from"), request.args.get("to"),
                                     request.args.get("granularity"))
    except drilldown.RangeError as exc:
        raise ApiError(400, str(exc)) from exc


def visible_facilities() -> list[int] | None:
    """None for admins (every facility), else the caller's own."""
    user = current_user()
    return None if user.role == Role.ADMIN else [user.facility_id]


def facility_or_404(facility_id: int, rng: drilldown.Range) -> dict:
    check_facility(facility_id)
    detail = drilldown.facility_detail(read_db(), rng, facility_id)
    if detail is None:
        raise ApiError(404, f"facility {facility_id} not found")
    return detail


def user_or_404(facility_id: int, user_id: int, rng: drilldown.Range) -> dict:
    check_facility(facility_id)
    try:
        limit = min(max(int(request.args.get("limit", 50)), 1), 200)
    except ValueError as exc:
        raise ApiError(400, "limit must be an integer") from exc
    detail = drilldown.user_detail(read_db(), rng, facility_id, user_id, limit=limit)
    if detail is None:
        raise ApiError(404, f"user {user_id} not found in facility {facility_id}")
    return detail


@blueprint.route("/facilities", methods=["GET"])
@require(*VIEWERS)
def facilities():  # noqa: ANN201
    return jsonify(drilldown.facilities_overview(read_db(), request_range(), visible_facilities()))


@blueprint.route("/facilities/<id:facility_id>", methods=["GET"])
@require(*VIEWERS)
def facility(facility_id: int):  # noqa: ANN201
    return jsonify(facility_or_404(facility_id, request_range()))


@blueprint.route("/facilities/<id:facility_id>/users/<id:user_id>", methods=["GET"])
@require(*VIEWERS)
def user(facility_id: int, user_id: int):  # noqa: ANN201
    return jsonify(user_or_404(facility_id, user_id, request_range()))
