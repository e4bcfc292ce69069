"""Who hears of a report's status: the clinicians who sent the study are notified when a report
becomes final, amended or appended, whoever or whatever moved it (the PACS poll, a
radiologist, an addendum): pipeline.reports.status calls ``status_notices`` for every move.

The notices a session made are also kept in ``session.info[MADE]``, so the caller that
commits can publish their ``notification.created`` and enqueue their mail; notices whose
caller does not (the poll) are mailed by the beat's sweep (``consults.check_due``).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.models import Notification, RadiologyReport, ReportAddendum, User
from pipeline.reports import notifications
from pipeline.reports.access import can_read_facility
from pipeline.reports.addendum_filing import ReportText
from pipeline.reports.notices import STATUSES_NOTIFIED, NoticeKind
from pipeline.reports.threads import senders_of_study

MADE = "relaypacs.status_notices"


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
    made = notifications.create(session, user_ids=targets, facility_id=report.facility_id,
                                kind=NoticeKind.REPORT_STATUS, report_id=report.id)
    session.info.setdefault(MADE, []).extend(made)
    return made


def take_made(session: Session) -> list[Notification]:
    """The status notices this session made since the last call (the committing caller's)."""
    return session.info.pop(MADE, [])


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
