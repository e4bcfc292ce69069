"""Consult requests as rows: asking one, moving it through its states (every move a
``ConsultStateChange`` row), answering it with an addendum, and the beat job's reminders
and re-offers of overdue consults to the pool.

The rules are pipeline.reports.consults' (pure); this module loads, checks, records and
says who is to be notified. The caller commits, audits, publishes and enqueues.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.models import (
    ConsultRequest,
    ConsultStateChange,
    Notification,
    RadiologyReport,
    ReportAddendum,
    ReportStatus,
    User,
    utcnow,
)
from pipeline.models.comments import MAX_TEXT
from pipeline.ops import events
from pipeline.reports import consults, listing, notifications
from pipeline.reports.access import can_read_facility, pool_members, roles_of, subspecialties_of
from pipeline.reports.consults import ActorView, ConsultAction, ConsultState, ConsultView
from pipeline.reports.notices import NoticeKind
from pipeline.reports.status import change_status
from pipeline.reports.threads import ThreadError

REQUESTERS = frozenset({"clinician", "radiologist", "admin"})
READERS = frozenset({"consultant", "radiologist"})
MAX_DUE = timedelta(days=30)


@dataclass
class Moved:
    consult: ConsultRequest
    from_state: str | None
    to_state: str
    notices: list[Notification] = field(default_factory=list)
    addendum: ReportAddendum | None = None


def _record(session: Session, consult: ConsultRequest, before: str | None, after: str, action: str,
            actor_id: int | None, now: datetime) -> None:
    session.add(ConsultStateChange(consult_id=consult.id, from_state=before, to_state=after,
                                   action=action, actor_id=actor_id, at=now))


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ThreadError(f"{name}: a non-empty string is required")
    if len(value) > MAX_TEXT:
        raise ThreadError(f"{name}: at most {MAX_TEXT} characters ({len(value)} given)")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL
        raise ThreadError(f"{name}: NUL characters are not allowed")
    return value


def request(session: Session, *, report_id: int, facility_id: int, requester: User,
            consultant_id: object = None, subspecialty: object = None, question: object,
            due_at: datetime | None = None, now: datetime | None = None) -> Moved:
    """A new consult, of a named consultant or of a subspecialty pool, due at ``due_at``
    (default: a day). Notifies the consultant, or every member of the pool."""
    now = now or utcnow()
    if not roles_of(requester) & REQUESTERS:
        raise PermissionError("requesting a consult needs the clinician or radiologist role")
    body = _text(question, "question")
    if (consultant_id is None) == (subspecialty is None):
        raise ThreadError("name either consultant_id or subspecialty (a pool), not both")
    if due_at is None:
        due_at = now + consults.DEFAULT_DUE
    if not now < due_at <= now + MAX_DUE:
        raise ThreadError("due_at: in the future, at most 30 days ahead")
    targets: list[int]
    if consultant_id is not None:
        if not isinstance(consultant_id, int) or isinstance(consultant_id, bool):
            raise ThreadError("consultant_id: a user id")
        consultant = session.get(User, consultant_id)
        if (consultant is None or consultant.disabled_at is not None
                or not roles_of(consultant) & READERS
                or not can_read_facility(session, consultant, facility_id)):
            raise ThreadError(f"consultant_id: user {consultant_id} is not a consultant for this facility")
        targets = [consultant_id]
    else:
        if not isinstance(subspecialty, str) or not 0 < len(subspecialty) <= 64 or "\x00" in subspecialty:
            raise ThreadError("subspecialty: a name of at most 64 characters")
        targets = pool_members(session, facility_id, subspecialty)
        if not targets:
            raise ThreadError(f"subspecialty: nobody serves the {subspecialty} pool for this facility")
    consult = ConsultRequest(report_id=report_id, facility_id=facility_id, requester_id=requester.id,
                             consultant_id=consultant_id, subspecialty=subspecialty,
                             question=body, state=ConsultState.REQUESTED.value, due_at=due_at,
                             created_at=now, updated_at=now)
    session.add(consult)
    session.flush()
    _record(session, consult, None, consult.state, "request", requester.id, now)
    notices = notifications.create(session, user_ids=[t for t in targets if t != requester.id],
                                   facility_id=facility_id, kind=NoticeKind.CONSULT_REQUESTED,
                                   report_id=report_id, consult_id=consult.id, now=now)
    return Moved(consult, None, consult.state, notices)


def _view(consult: ConsultRequest) -> ConsultView:
    return ConsultView(consult.state, consult.requester_id, consult.consultant_id, consult.subspecialty)


def move(session: Session, consult: ConsultRequest, action: str, actor: User, *,
         addendum_text: object = None, now: datetime | None = None) -> Moved:
    """One move by a person. Raises ``consults.IllegalTransition`` (409),
    ``consults.NotAllowed`` (403) or ``ThreadError`` (400). Completing needs the answer,
    which becomes the report's addendum."""
    now = now or utcnow()
    before = consult.state
    after = consults.next_state(before, action)
    consults.check_actor(_view(consult), action, ActorView(
        actor.id, roles_of(actor), subspecialties_of(session, actor, consult.facility_id)))
    addendum = None
    if action == ConsultAction.COMPLETE:
        addendum = ReportAddendum(report_id=consult.report_id, facility_id=consult.facility_id,
                                  consult_id=consult.id, author_id=actor.id,
                                  text=_text(addendum_text, "addendum"), created_at=now)
        session.add(addendum)
    consult.consultant_id = consults.owner_after(_view(consult), action, actor.id)
    consult.state = after.value
    consult.updated_at = now
    session.flush()
    _record(session, consult, before, after.value, str(action), actor.id, now)
    # The requester hears of every answer; the consultant of a cancellation.
    told = [consult.consultant_id] if action == ConsultAction.CANCEL else [consult.requester_id]
    notices = notifications.create(session, user_ids=[u for u in told if u and u != actor.id],
                                   facility_id=consult.facility_id, kind=NoticeKind.CONSULT_CHANGED,
                                   report_id=consult.report_id, consult_id=consult.id, now=now)
    return Moved(consult, before, after.value, notices, addendum)


def remind_and_reoffer(session: Session, now: datetime | None = None, *,
                       remind_before: timedelta = consults.REMIND_BEFORE,
                       pool_window: timedelta = consults.POOL_WINDOW) -> list[Moved]:
    """The beat job: a reminder to the owner (or the pool) of a consult due soon, once per
    due time; an overdue consult goes back to the pool with a new due time."""
    now = now or utcnow()
    done: list[Moved] = []
    open_states = [s.value for s in ConsultState if s not in consults.TERMINAL]
    rows = session.scalars(select(ConsultRequest).where(
        ConsultRequest.state.in_(open_states),
        ConsultRequest.due_at <= now + remind_before).order_by(ConsultRequest.id)
        .with_for_update(skip_locked=True)).all()
    for consult in rows:
        if consults.overdue(consult.state, consult.due_at, now):
            before = consult.state
            consult.state = consults.next_state(before, ConsultAction.REOFFER).value
            consult.consultant_id = None
            consult.due_at = now + pool_window
            consult.reminded_at = None
            consult.reoffers += 1
            consult.updated_at = now
            session.flush()
            _record(session, consult, before, consult.state, ConsultAction.REOFFER, None, now)
            pool = _pool(session, consult)
            notices = notifications.create(session, user_ids=pool, facility_id=consult.facility_id,
                                           kind=NoticeKind.CONSULT_REQUESTED,
                                           report_id=consult.report_id, consult_id=consult.id, now=now)
            done.append(Moved(consult, before, consult.state, notices))
        elif consults.reminder_due(consult.state, consult.due_at, consult.reminded_at, now, remind_before):
            consult.reminded_at = now
            owners = [consult.consultant_id] if consult.consultant_id else _pool(session, consult)
            notices = notifications.create(session, user_ids=owners, facility_id=consult.facility_id,
                                           kind=NoticeKind.CONSULT_DUE, report_id=consult.report_id,
                                           consult_id=consult.id, now=now)
            done.append(Moved(consult, consult.state, consult.state, notices))
    session.flush()
    return done


def _pool(session: Session, consult: ConsultRequest) -> list[int]:
    return [u for u in pool_members(session, consult.facility_id, consult.subspecialty)
            if u != consult.requester_id]


def for_report(session: Session, report_id: int) -> list[ConsultRequest]:
    return list(session.scalars(select(ConsultRequest).where(ConsultRequest.report_id == report_id)
                                .order_by(ConsultRequest.id)))


def history(session: Session, consult_id: int) -> list[ConsultStateChange]:
    return list(session.scalars(select(ConsultStateChange).where(
        ConsultStateChange.consult_id == consult_id).order_by(ConsultStateChange.id)))


def addendum_of(session: Session, consult_id: int) -> ReportAddendum | None:
    return session.scalar(select(ReportAddendum).where(ReportAddendum.consult_id == consult_id)
                          .order_by(ReportAddendum.id).limit(1))



def appended_by_addendum(session: Session, report: RadiologyReport, actor_id: int,
                         now: datetime | None = None) -> events.Event | None:
    """The report becomes ``appended`` after an addendum (never ``amended``: its text is not
    changed); a second addendum leaves it so, with no new history row. Raises the status
    module's IllegalTransition for a report that takes no addendum (cancelled)."""
    if report.status == ReportStatus.APPENDED:
        return None
    event = change_status(session, report, ReportStatus.APPENDED, by_user_id=actor_id,
                          reason="addendum (consult answer)", now=now or utcnow())
    session.flush()
    return event


# The report listing's consult count, in its one statement.
listing.register_count("consult_count", lambda: select(func.count(ConsultRequest.id))
                       .where(ConsultRequest.report_id == RadiologyReport.id).scalar_subquery())
