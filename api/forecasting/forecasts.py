"""Upload volume forecasts at /api/v1/forecasts: the newest per facility, with the daily
(``granularity=day``) or next-48-hour (``granularity=hour``) points, the 80%/95% intervals
and the backtest against seasonal naive.

Admins see every facility (and the total, ``facility=total``), QA managers their own.

``/api/v1/forecasts/calendars/<facility>``: the facility's forecast calendar (country for the
public holidays, its own closed days, whether it closes on public holidays), read and
replaced by admins and that facility's QA managers; every change is audited.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from flask import Blueprint, g, jsonify
from pydantic import BaseModel, Field

from api.analytics.drilldown import VIEWERS
from api.forecasting.serializers import forecast_json
from api.http.auth import actor, check_facility, current_user, require
from api.http.context import close_read_session, db, read_db
from api.http.errors import ApiError
from api.http.openapi import operation
from pipeline.accounts import audit
from pipeline.forecasting import store as forecast_store
from pipeline.models import Facility, FacilityCalendar, Role

blueprint = Blueprint("forecasts", __name__)
blueprint.teardown_app_request(close_read_session)


class ForecastQuery(BaseModel):
    facility: str | None = Field(None, max_length=16,
                                 description="facility id, or 'total'; default: admins all, others their own")
    metric: Literal["uploads", "bytes"] = "uploads"
    granularity: Literal["day", "hour"] = Field(
        "day", description="day: the next 28 days (weekly job); hour: the next 48 hours (hourly job)")


@blueprint.route("", methods=["GET"])
@require(*VIEWERS)
@operation("Upload volume forecasts with intervals and backtest figures", query=ForecastQuery)
def list_forecasts():  # noqa: ANN201
    q: ForecastQuery = g.query
    user = current_user()
    wanted: list[int | None] | None
    if q.facility is None:
        wanted = None if user.role == Role.ADMIN else [user.facility_id]
    elif q.facility == "total":
        if user.role != Role.ADMIN:
            raise ApiError(403, "the all-facility total is for admins")
        wanted = [None]
    elif q.facility.isascii() and q.facility.isdigit() and len(q.facility) <= 18:
        check_facility(int(q.facility))
        wanted = [int(q.facility)]
    else:
        raise ApiError(400, "facility must be a facility id or 'total'")
    rows = forecast_store.latest(read_db(), wanted, q.metric, q.granularity)
    return jsonify({"forecasts": [forecast_json(r) for r in rows]})


class CalendarSpec(BaseModel):
    country: str | None = Field(None, min_length=2, max_length=8,
                                description="ISO country code for the public holidays (holidays package)")
    subdivision: str | None = Field(None, min_length=1, max_length=16)
    closed_days: list[date] = Field(default_factory=list, max_length=2000,
                                    description="days the facility is shut: forecast zero")
    closes_on_public_holidays: bool = Field(
        False, description="true: every public holiday is a closed day; false: a holiday's effect "
                           "is learnt from the history (neutral without one)")


def _calendar_facility(facility_id: int) -> None:
    check_facility(facility_id)
    if db().get(Facility, facility_id) is None:
        raise ApiError(404, "no such facility")


@blueprint.route("/calendars/<id:facility_id>", methods=["GET"])
@require(*VIEWERS)
@operation("A facility's forecast calendar: public holidays, closed days, holiday closing")
def show_calendar(facility_id: int):  # noqa: ANN201
    _calendar_facility(facility_id)
    return jsonify(forecast_store.calendar_json(db().get(FacilityCalendar, facility_id), facility_id))


@blueprint.route("/calendars/<id:facility_id>", methods=["PUT"])
@require(*VIEWERS)
@operation("Replace a facility's forecast calendar (used from the next forecast run)", body=CalendarSpec,
           errors=(400, 401, 403, 404, 429))
def replace_calendar(facility_id: int):  # noqa: ANN201
    _calendar_facility(facility_id)
    spec: CalendarSpec = g.body
    try:
        calendar = forecast_store.save_calendar(
            db(), facility_id, country=spec.country.upper() if spec.country else None,
            subdivision=spec.subdivision, closed_days=spec.closed_days,
            closes_on_public_holidays=spec.closes_on_public_holidays)
    except ValueError as exc:
        db().rollback()
        raise ApiError(400, str(exc)) from exc
    audit.record(db(), actor(), "forecast.calendar_replaced", target=f"facility:{facility_id}",
                 detail={"country": calendar.country, "closed_days": len(calendar.closed_days),
                         "closes_on_public_holidays": calendar.closes_on_public_holidays})
    db().commit()
    return jsonify(forecast_store.calendar_json(calendar, facility_id))
