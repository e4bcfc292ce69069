"""A report's comment thread: who may read and write it, adding a comment, correcting one
(a new version; the old one stays), and who is notified.

Visible only to the report's facility and the reporting side (radiologists and consultants
assigned to that facility; admins): every query here starts from a report the caller may
read, and every comment row carries the report's facility. The caller commits, audits,
publishes the events and enqueues the mail.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.models import Batch, Instance, Notification, RadiologyReport, ReportComment, User, utcnow
from pipeline.models.comments import MAX_TEXT
from pipeline.reports import listing, notifications
from pipeline.reports.access import can_read_facility, roles_of
from pipeline.reports.notices import NoticeKind, comment_recipients

# Who may write in a thread: the sending side's clinicians and the reading side.
WRITERS = frozenset({"clinician", "radiologist", "consultant", "admin"})
MAX_RECIPIENTS = 50


class ThreadError(ValueError):
    """Bad input (answered 400)."""


class ThreadForbidden(PermissionError):
    """Not this person's to do (answered 403)."""


def checked_text(text: object) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ThreadError("text: a non-empty string is required")
    if len(text) > MAX_TEXT:
        raise ThreadError(f"text: at most {MAX_TEXT} characters ({len(text)} given)")
    if "\x00" in text:  # PostgreSQL text cannot hold NUL
        raise ThreadError("text: NUL characters are not allowed")
    return text


def check_writer(user: User) -> None:
    if not roles_of(user) & WRITERS:
        raise ThreadForbidden("commenting needs the clinician, radiologist or consultant role")


def senders_of_study(session: Session, study_id: int) -> list[int]:
    """The users who sent the study (the batches its instances came in with)."""
    return list(session.scalars(
        select(Batch.user_id).join(Instance, Instance.batch_id == Batch.id)
        .where(Instance.study_id == study_id).distinct().order_by(Batch.user_id)))


def _participants(session: Session, report_id: int) -> list[int]:
    return list(session.scalars(
        select(ReportComment.author_id).where(ReportComment.report_id == report_id)
        .group_by(ReportComment.author_id).order_by(func.min(ReportComment.id))))


def _checked_recipients(session: Session, facility_id: int, recipients: object) -> list[int]:
    if recipients is None:
        return []
    if not isinstance(recipients, list) or not all(
            isinstance(r, int) and not isinstance(r, bool) for r in recipients):
        raise ThreadError("recipients: a list of user ids")
    if len(recipients) > MAX_RECIPIENTS:
        raise ThreadError(f"recipients: at most {MAX_RECIPIENTS}")
    wanted = list(dict.fromkeys(recipients))
    users = {u.id: u for u in session.scalars(select(User).where(User.id.in_(wanted)))}
    for user_id in wanted:
        user = users.get(user_id)
        # A recipient who could not read the thread would be told about it: refused, and
        # the same answer whether the user exists or not.
        if user is None or user.disabled_at is not None or not can_read_facility(session, user, facility_id):
            raise ThreadError(f"recipients: user {user_id} cannot read this report")
    return wanted


@dataclass
class Posted:
    comment: ReportComment
    notices: list[Notification]


def add_comment(session: Session, *, report_id: int, facility_id: int, study_id: int | None,
                author: User, text: object, recipients: object = None) -> Posted:
    """A new comment, and one notice per recipient (the named users; none named: the thread
    and the study's senders), never one to the author."""
    check_writer(author)
    body = checked_text(text)
    named = _checked_recipients(session, facility_id, recipients)
    participants = _participants(session, report_id)
    senders = senders_of_study(session, study_id) if study_id is not None else []
    comment = ReportComment(report_id=report_id, facility_id=facility_id,
                            thread_key=secrets.token_hex(16), version=1, author_id=author.id,
                            text=body, recipients=named, created_at=utcnow())
    session.add(comment)
    session.flush()
    targets = comment_recipients(author.id, named, participants, senders)
    # Only people who may read the thread hear about it (a sender may have left the facility).
    readable = [u for u in session.scalars(select(User).where(User.id.in_(targets)))
                if u.disabled_at is None and can_read_facility(session, u, facility_id)]
    allowed = {u.id for u in readable}
    notices = notifications.create(session, user_ids=[t for t in targets if t in allowed],
                                   facility_id=facility_id, kind=NoticeKind.COMMENT,
                                   report_id=report_id, comment_id=comment.id)
    return Posted(comment, notices)


def correct_comment(session: Session, *, report_id: int, thread_key: str, author: User,
                    text: object) -> ReportComment:
    """A correction: a new version of the author's comment; the old versions stay as they
    were. Nobody is mailed again (the first version already told them)."""
    check_writer(author)
    body = checked_text(text)
    latest = session.scalar(select(ReportComment).where(
        ReportComment.report_id == report_id, ReportComment.thread_key == thread_key)
        .order_by(ReportComment.version.desc()).limit(1).with_for_update())
    if latest is None:
        raise LookupError("no such comment on this report")
    if latest.author_id != author.id:
        raise ThreadForbidden("only its author corrects a comment")
    version = ReportComment(report_id=report_id, facility_id=latest.facility_id,
                            thread_key=thread_key, version=latest.version + 1,
                            author_id=author.id, text=body, recipients=latest.recipients,
                            created_at=utcnow())
    session.add(version)
    session.flush()
    return version


def thread(session: Session, report_id: int, *, history: bool = False) -> list[ReportComment]:
    """The thread in order of first posting: the newest version of each comment, or with
    ``history`` every version."""
    rows: Sequence[ReportComment] = session.scalars(
        select(ReportComment).where(ReportComment.report_id == report_id)
        .order_by(ReportComment.id)).all()
    if history:
        return list(rows)
    newest: dict[str, ReportComment] = {}
    first: dict[str, int] = {}
    for row in rows:
        first.setdefault(row.thread_key, row.id)
        if row.thread_key not in newest or row.version > newest[row.thread_key].version:
            newest[row.thread_key] = row
    return sorted(newest.values(), key=lambda c: first[c.thread_key])



# The report listing's comment count (comments, not their versions), in its one statement.
listing.register_count("comment_count", lambda: select(func.count(func.distinct(ReportComment.thread_key)))
                       .where(ReportComment.report_id == RadiologyReport.id).scalar_subquery())
