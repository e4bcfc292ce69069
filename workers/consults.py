"""Tasks of the radiology reports' conversation, run by the ``exports`` pool (routed by
``consults.*``): it is the pool that mails, with the exports' SMTP path and settings.

- ``consults.mail_notices``: one mail per notice whose recipient wants each one, at most once
  (the notice is stamped in the transaction that sends it);
- ``consults.send_digests``: the daily digests (beat);
- ``consults.check_due``: reminders of consults due soon, re-offers of overdue ones, and the
  sweep that mails notices nobody enqueued a mail for (the report poll's status notices) (beat);
- ``consults.file_addendum``: the addendum PDF made into a DICOM instance of the study and put
  on the delivery ledger; the forwarding itself is the pacs queue's.
Thin adapters over pipeline/reports; events in the same transactions (the outbox).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from pipeline.exports import mail
from pipeline.models import Notification, utcnow
from pipeline.reports import consult_requests, new_addendum_uid, notifications
from pipeline.reports.addendum_filing import NotYetDeliverable, file_addendum
from pipeline.reports.notices import MailMode, digest_mail, notice_mail
from pipeline.reports.status_notices import report_text_for
from workers import chains, event_publishing, runtime
from workers.app import app

log = logging.getLogger(__name__)


def _smtp() -> mail.Smtp | None:
    settings = runtime.settings()
    if not (settings.smtp_url and settings.public_url):
        return None
    return mail.Smtp.from_url(settings.smtp_url)


def _send(to: str, rendered) -> None:  # noqa: ANN001 - a notices.Mail
    message = mail.compose(runtime.settings().mail_from, [to], rendered.subject, rendered.body)
    # The unsubscribe URL is one long word: at the default 78 columns the header would be
    # written as RFC 2047 encoded words, which mail clients do not read as a URL.
    message.policy = message.policy.clone(max_line_length=998)
    for name, value in rendered.headers.items():
        message[name] = value
    mail.send(_smtp(), message)


@app.task(name="consults.mail_notices", bind=True, max_retries=8, acks_late=True)
def mail_notices(self, notification_ids: list[int]) -> dict:  # noqa: ANN001
    """Mail each notice whose recipient's mode is ``each``; one transaction per notice, so a
    retry re-sends only what was not sent."""
    if _smtp() is None:
        return {"mailed": 0, "reason": "RELAYPACS_SMTP_URL and RELAYPACS_PUBLIC_URL are needed"}
    base_url = runtime.settings().public_url or ""
    mailed = 0
    for notification_id in notification_ids:
        with runtime.session_scope() as session:
            row = session.get(Notification, notification_id)
            if row is None or row.mailed_at is not None:
                continue
            pref = notifications.preference(session, row.user_id)
            address = notifications.email_of(session, row.user_id)
            if pref.mode != MailMode.EACH or address is None or row.report_id is None:
                session.commit()  # the preference row, if it was just made
                continue
            if notifications.claim_for_mail(session, notification_id, utcnow()) is None:
                continue
            try:
                _send(address, notice_mail(row.kind, row.report_id, base_url=base_url,
                                           unsubscribe_key=pref.unsubscribe_token))
            except mail.DeliveryFailed as exc:
                log.warning("notice %s not mailed: %s", notification_id, type(exc).__name__)
                continue  # stamped: a refused address is not retried for ever
            except mail.DeliveryRetryable as exc:
                session.rollback()
                raise self.retry(countdown=30, exc=exc) from exc
            mailed += 1
    return {"mailed": mailed}


@app.task(name="consults.send_digests", acks_late=True)
def send_digests(now: str | None = None) -> dict:
    """Every due daily digest, one mail per user; a failed send leaves the notices for the
    next run."""
    if _smtp() is None:
        return {"sent": 0}
    moment = datetime.fromisoformat(now).replace(tzinfo=UTC) if now else utcnow()
    base_url = runtime.settings().public_url or ""
    with runtime.session_scope() as session:
        users = notifications.due_digests(session, moment)
    sent = 0
    for user_id in users:
        with runtime.session_scope() as session:
            rows = notifications.claim_digest(session, user_id, moment)
            address = notifications.email_of(session, user_id)
            if not rows or address is None:
                continue
            pref = notifications.preference(session, user_id)
            try:
                _send(address, digest_mail([(r.kind, r.report_id or 0) for r in rows],
                                           base_url=base_url, unsubscribe_key=pref.unsubscribe_token))
            except (mail.DeliveryFailed, mail.DeliveryRetryable) as exc:
                session.rollback()
                log.warning("digest for a user not mailed: %s", type(exc).__name__)
                continue
            sent += 1
    return {"sent": sent}


@app.task(name="consults.check_due", acks_late=False)
def check_due(now: str | None = None) -> dict:
    """Reminders and re-offers (beat, every minute). Not acks_late: a lost tick is the next
    minute's work."""
    moment = datetime.fromisoformat(now).replace(tzinfo=UTC) if now else utcnow()
    with runtime.session_scope() as session:
        moved = consult_requests.remind_and_reoffer(session, moment)
        summary = [(m.from_state, m.to_state) for m in moved]
        event_publishing.notices(session, [n for m in moved for n in m.notices])  # same commit
        notice_ids = [n.id for m in moved for n in m.notices]
    with runtime.session_scope() as session:
        unmailed = notifications.unmailed_each(session, moment)
    chains.enqueue_notice_mail(notice_ids + [i for i in unmailed if i not in notice_ids])
    return {"reminded": sum(1 for a, b in summary if a == b),
            "reoffered": sum(1 for a, b in summary if a != b), "swept": len(unmailed)}


@app.task(name="consults.file_addendum", bind=True, max_retries=60, acks_late=True)
def file_addendum_task(self, addendum_id: int) -> dict:  # noqa: ANN001
    """Make the addendum instance and its deliveries, then forward (pacs queue). A study
    not delivered yet is waited for."""
    try:
        with runtime.session_scope() as session:
            pairs = file_addendum(session, runtime.store(), addendum_id,
                                  report_text_for(session, addendum_id),
                                  new_uid=new_addendum_uid)
    except NotYetDeliverable as exc:
        raise self.retry(countdown=60, exc=exc) from exc
    chains.enqueue_forwarding(pairs)
    return {"addendum": addendum_id, "forwards": len(pairs)}
