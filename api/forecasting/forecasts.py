"""Upload volume forecasts at /api/v1/forecasts: the newest per facility, with the daily
(``granularity=day``) or next-48-hour (``granularity=hour``) points, the 80%/95% intervals
and the backtest against seasonal naive.

Admins see every facility (and the total, ``facility=total``), QA managers their own.
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, g, jsonify
from pydantic import BaseModel, Field

from api.analytics.drilldown import VIEWERS
from api.forecasting.serializers import forecast_json
from api.http.auth import check_facility, current_user, require
from api.http.context import close_read_session, read_db
from api.http.errors import ApiError
from api.http.openapi import operation
from pipeline.forecasting import store as forecast_store
from pipeline.models import Role

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
