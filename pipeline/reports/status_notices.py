"""What the conversation does to a report's status, and who hears of status changes.

An addendum makes a report ``appended`` (never ``amended``: its text is not changed), through
the one status function (pipeline.reports.status). The clinicians who sent the study are
notified when a report becomes final, amended or appended, whoever or whatever moved it (the
PACS poll calls ``status_notices`` too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.models import Notification, RadiologyReport, ReportAddendum, ReportStatus, User, utcnow
from pipeline.ops import events
from pipeline.reports import notifications
from pipeline.reports.access import can_read_facility
from pipeline.reports.addendum_filing import ReportText
from pipeline.reports.notices import STATUSES_NOTIFIED, NoticeKind
from pipeline.reports.status import change_status
from pipeline.reports.threads import senders_of_study


@dataclass
class StatusChange:
    event: events.Event | None
    notices: list[Notification] = field(default_factory=list)


def status_notices(session: Session, report: RadiologyReport, to_status: str,
                   actor_id: int | None = None) -> list[Notification]:
    """Notify the study's senders (who can still read it) of a final/amended/appended report."""
    if to_status not in STATUSES_NOTIFIED:
        return []
    targets = []
    for user_id in senders_of_study(session, report.study_id):
        user = session.get(User, user_id)
        if (user is not None and user.id != actor_id and user.disabled_at is None
                and can_read_facility(session, user, report.facility_id)):
            targets.append(user_id)
    return notifications.create(session, user_ids=targets, facility_id=report.facility_id,
                                kind=NoticeKind.REPORT_STATUS, report_id=report.id)


def appended_by_addendum(session: Session, report: RadiologyReport, actor_id: int,
                         now: datetime | None = None) -> StatusChange:
    """The report is ``appended`` after an addendum (a second addendum leaves it so, with no
    new history row); the senders are told."""
    if report.status == ReportStatus.APPENDED:
        return StatusChange(None)
    event = change_status(session, report, ReportStatus.APPENDED, by_user_id=actor_id,
                          reason="addendum (consult answer)", now=now or utcnow())
    session.flush()
    return StatusChange(event, status_notices(session, report, ReportStatus.APPENDED, actor_id))


def report_text_for(session: Session, addendum_id: int) -> ReportText:
    """What the addendum PDF quotes of the report the addendum belongs to."""
    report = session.scalar(select(RadiologyReport).join(
        ReportAddendum, ReportAddendum.report_id == RadiologyReport.id).where(
        ReportAddendum.id == addendum_id))
    if report is None:
        raise LookupError(f"addendum {addendum_id} not found")
    author = report.document_author
    if author is None and report.author_id is not None:
        user = session.get(User, report.author_id)
        author = user.email if user else None
    return ReportText(report_id=report.id, facility_id=report.facility_id, study_id=report.study_id,
                      text=report.text, author=author or "the reporting radiologist",
                      at=report.document_at or report.created_at, status=report.status)
