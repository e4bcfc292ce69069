"""Notification rows and mail preferences: creating notices (one per recipient and comment),
listing a user's unread ones, marking them read, and choosing what is mailed now, what waits
for the daily digest, and what is never mailed.

A notice belongs to its recipient: every read and write here is by ``user_id``, so nobody
reads or marks another person's notices. The caller commits, then publishes
``notification.created`` and enqueues the mail.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pipeline.models import MailPreference, Notification, User, utcnow
from pipeline.ops import events
from pipeline.reports.notices import DEFAULT_MODE, MailMode, NoticeKind

DIGEST_EVERY = timedelta(days=1)


def create(session: Session, *, user_ids: Iterable[int], facility_id: int, kind: str,
           report_id: int | None, comment_id: int | None = None,
           consult_id: int | None = None, now: datetime | None = None) -> list[Notification]:
    """One notice per user (each user once, whatever the list holds)."""
    NoticeKind(kind)
    made: list[Notification] = []
    for user_id in dict.fromkeys(user_ids):
        row = Notification(user_id=user_id, facility_id=facility_id, kind=kind, report_id=report_id,
                           comment_id=comment_id, consult_id=consult_id, created_at=now or utcnow())
        session.add(row)
        made.append(row)
    session.flush()
    return made


def unread(session: Session, user_id: int, limit: int = 200) -> list[Notification]:
    return list(session.scalars(
        select(Notification).where(Notification.user_id == user_id, Notification.read_at.is_(None))
        .order_by(Notification.id.desc()).limit(limit)))


def listing(session: Session, user_id: int, *, only_unread: bool, limit: int = 200) -> list[Notification]:
    if only_unread:
        return unread(session, user_id, limit)
    return list(session.scalars(select(Notification).where(Notification.user_id == user_id)
                                .order_by(Notification.id.desc()).limit(limit)))


def mark_read(session: Session, user_id: int, ids: Sequence[int] | None,
              now: datetime | None = None) -> int:
    """Mark the user's own notices read (``ids`` None: all of them); returns how many changed.
    Ids of other people's notices are simply not matched."""
    query = update(Notification).where(Notification.user_id == user_id,
                                       Notification.read_at.is_(None))
    if ids is not None:
        query = query.where(Notification.id.in_(list(ids)))
    return session.execute(query.values(read_at=now or utcnow())).rowcount or 0


def preference(session: Session, user_id: int) -> MailPreference:
    """The user's preference row, made with the default mode and a fresh unsubscribe key the
    first time it is needed."""
    row = session.get(MailPreference, user_id)
    if row is None:
        row = MailPreference(user_id=user_id, mode=DEFAULT_MODE.value,
                             unsubscribe_token=secrets.token_urlsafe(32))
        session.add(row)
        session.flush()
    return row


def modes(session: Session, user_ids: Iterable[int]) -> dict[int, str]:
    ids = list(user_ids)
    if not ids:
        return {}
    return dict(session.execute(select(MailPreference.user_id, MailPreference.mode)
                                .where(MailPreference.user_id.in_(ids))).all())


def set_mode(session: Session, user_id: int, mode: str) -> MailPreference:
    row = preference(session, user_id)
    row.mode = MailMode(mode).value
    row.updated_at = utcnow()
    return row


def unsubscribe(session: Session, key: str) -> MailPreference | None:
    """The unsubscribe link: mail off for the key's owner; None for an unknown key."""
    row = session.scalar(select(MailPreference).where(MailPreference.unsubscribe_token == key))
    if row is not None:
        row.mode = MailMode.NONE.value
        row.updated_at = utcnow()
    return row


def claim_for_mail(session: Session, notification_id: int, now: datetime) -> Notification | None:
    """Take a notice for its single mail: stamps ``mailed_at`` only if nobody did, so a
    redelivered task never mails twice."""
    claimed = session.execute(
        update(Notification).where(Notification.id == notification_id,
                                   Notification.mailed_at.is_(None))
        .values(mailed_at=now)).rowcount
    return session.get(Notification, notification_id) if claimed else None


def due_digests(session: Session, now: datetime) -> list[int]:
    """Users on the daily digest with notices not mailed yet, whose last digest is a day old."""
    rows = session.execute(
        select(MailPreference.user_id).where(
            MailPreference.mode == MailMode.DAILY.value,
            (MailPreference.digest_sent_at.is_(None))
            | (MailPreference.digest_sent_at <= now - DIGEST_EVERY),
            select(Notification.id).where(Notification.user_id == MailPreference.user_id,
                                          Notification.mailed_at.is_(None)).exists())).scalars()
    return list(rows)


def claim_digest(session: Session, user_id: int, now: datetime) -> list[Notification]:
    """The notices of one digest, stamped as mailed (the caller commits only after the send
    succeeded, so a failed send leaves them for the next try)."""
    pref = session.get(MailPreference, user_id, with_for_update=True)
    if pref is None or pref.mode != MailMode.DAILY.value:
        return []
    rows = list(session.scalars(select(Notification).where(
        Notification.user_id == user_id, Notification.mailed_at.is_(None))
        .order_by(Notification.id).with_for_update()))
    for row in rows:
        row.mailed_at = now
    pref.digest_sent_at = now
    return rows


def email_of(session: Session, user_id: int) -> str | None:
    user = session.get(User, user_id)
    if user is None or user.disabled_at is not None:
        return None
    return user.email


def unmailed_each(session: Session, now: datetime, *, settle: timedelta = timedelta(seconds=30),
                  window: timedelta = timedelta(days=2), limit: int = 500) -> list[int]:
    """Notices of recipients who want each one mailed that no mail went out for yet (made
    where nobody enqueued their mail, e.g. by the report poll, or whose enqueue was lost):
    the beat's sweep mails them. ``settle`` leaves the API's own enqueues time to act."""
    wants_each = (MailPreference.mode.is_(None)) | (MailPreference.mode == MailMode.EACH.value)
    return list(session.scalars(
        select(Notification.id).outerjoin(MailPreference, MailPreference.user_id == Notification.user_id)
        .where(Notification.mailed_at.is_(None), wants_each,
               Notification.created_at <= now - settle, Notification.created_at > now - window)
        .order_by(Notification.id).limit(limit)))


def notice_event(notice: Notification) -> events.Event:
    """notification.created for one notice (ids only: what it is about, never its text)."""
    ids = {k: v for k, v in (("report_id", notice.report_id), ("comment_id", notice.comment_id),
                             ("consult_id", notice.consult_id)) if v is not None}
    return events.notification(notice.facility_id, notice.kind, notification_id=notice.id,
                               user_id=notice.user_id, **ids)
