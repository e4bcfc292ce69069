"""The facility dashboard's forecast panel: the newest stored daily and next-48-hour
upload forecasts of the facility on the page, for the ``_forecast.html`` partial.

A template global rather than a field of the page's data, so the panel stays a partial and a
script of its own beside the dashboard's. The facility page has already checked that the
signed-in user may see this facility before the template asks.
"""

from __future__ import annotations

from api.forecasting.serializers import forecast_json
from api.http.context import read_db
from pipeline.forecasting import store as forecast_store
from pipeline.forecasting.daily import CANDIDATES
from pipeline.models import FacilityCalendar


def facility_forecast(facility_id: int) -> dict:
    """{"day": the newest 28-day forecast or None, "hour": the newest 48-hour one or None,
    "names": what each daily model is, "calendar": the facility's forecast calendar (the
    panel's closures form starts from it)}."""
    rows = forecast_store.latest_for_facility_all_granularities(read_db(), facility_id, "uploads")
    found: dict = {granularity: forecast_json(row) if row else None for granularity, row in rows.items()}
    found["names"] = CANDIDATES
    calendar = read_db().get(FacilityCalendar, facility_id)
    found["calendar"] = forecast_store.calendar_json(calendar, facility_id)
    return found
