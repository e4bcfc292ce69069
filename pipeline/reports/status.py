"""A radiology report's status (FHIR DiagnosticReport codes) and its history: which moves are
legal, and the one way to make one (a ``ReportStatusChange`` row plus the
``report.status_changed`` event the caller publishes after its commit).

Legal moves for a person (the API; anything else answers 409):

    registered  -> preliminary, final, cancelled
    preliminary -> final, cancelled
    final       -> amended, appended, cancelled
    amended     -> appended, cancelled
    appended    -> amended, cancelled
    cancelled   -> (none)

The report poll follows what documents say (pipeline/reports/documents.py) and uses the same
function, so its moves are history rows and events too.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from pipeline.models import RadiologyReport, ReportStatus, ReportStatusChange
from pipeline.ops import events
from pipeline.reports.status_notices import status_notices

S = ReportStatus
TRANSITIONS: dict[str, frozenset[str]] = {
    S.REGISTERED: frozenset({S.PRELIMINARY, S.FINAL, S.CANCELLED}),
    S.PRELIMINARY: frozenset({S.FINAL, S.CANCELLED}),
    S.FINAL: frozenset({S.AMENDED, S.APPENDED, S.CANCELLED}),
    S.AMENDED: frozenset({S.APPENDED, S.CANCELLED}),
    S.APPENDED: frozenset({S.AMENDED, S.CANCELLED}),
    S.CANCELLED: frozenset(),
}


class IllegalTransition(ValueError):
    """The move is not in ``TRANSITIONS`` (the API answers 409)."""

    def __init__(self, from_status: str, to_status: str) -> None:
        allowed = sorted(TRANSITIONS.get(from_status, ()))
        super().__init__(f"a {from_status} report cannot become {to_status}"
                         f" (allowed: {', '.join(allowed) or 'none'})")
        self.from_status = from_status
        self.to_status = to_status
        self.allowed = allowed


def check_transition(from_status: str, to_status: str) -> None:
    if ReportStatus(to_status) not in TRANSITIONS[ReportStatus(from_status)]:
        raise IllegalTransition(from_status, to_status)


def record_initial(session: Session, report: RadiologyReport, *, by_user_id: int | None,
                   reason: str | None, now: datetime) -> events.Event:
    """The first history row of a new (flushed) report: from nothing to its status."""
    session.add(ReportStatusChange(report_id=report.id, from_status=None, to_status=report.status,
                                   at=now, by_user_id=by_user_id, reason=reason))
    status_notices(session, report, report.status, by_user_id)  # the senders hear of a final one
    return events.report_status_changed(report.facility_id, report.id, None, report.status)


def change_status(session: Session, report: RadiologyReport, to_status: str, *,
                  by_user_id: int | None, reason: str | None, now: datetime,
                  check: bool = True) -> events.Event:
    """Move ``report`` to ``to_status`` (IllegalTransition unless legal, when ``check``),
    record the history row, and return the event to publish once the caller committed."""
    from_status = report.status
    if check:
        check_transition(from_status, to_status)
    report.status = ReportStatus(to_status).value
    report.updated_at = now
    session.add(ReportStatusChange(report_id=report.id, from_status=from_status, to_status=report.status,
                                   at=now, by_user_id=by_user_id, reason=reason))
    status_notices(session, report, report.status, by_user_id)  # final, amended, appended
    return events.report_status_changed(report.facility_id, report.id, from_status, report.status)
