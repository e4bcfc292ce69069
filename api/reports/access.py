"""Loading a report for the conversation routes: 404 when it does not exist or the caller
may not read its facility (the same answer, so ids of other facilities' reports leak nothing)."""

from __future__ import annotations

from api.http.auth import current_user
from api.http.context import db
from api.http.errors import ApiError
from pipeline.models import RadiologyReport
from pipeline.reports.access import can_read_facility


def load_report(report_id: int) -> RadiologyReport:
    report = db().get(RadiologyReport, report_id)
    if report is None or not can_read_facility(db(), current_user(), report.facility_id):
        raise ApiError(404, f"report {report_id} not found")
    return report
