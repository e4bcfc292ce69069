"""Who hears about what, and the mail they get: per-user mail preferences (each, daily digest,
none), one notice per recipient per comment and none to its author, and the text of the
mails.

Mail is not a safe channel for patient data: a mail names no patient, no study, no report
text and no comment text, only what happened and a link to the page behind the sign-in, plus
a link that turns these mails off. Pure logic over plain values; rows and sending are the
caller's.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote


class MailMode(enum.StrEnum):
    EACH = "each"  # one mail per notice, at once
    DAILY = "daily"  # one digest a day with every notice not mailed yet
    NONE = "none"  # in-app notices only


DEFAULT_MODE = MailMode.EACH


class NoticeKind(enum.StrEnum):
    COMMENT = "comment"  # a new comment (or a corrected version) in a thread you are in
    CONSULT_REQUESTED = "consult_requested"  # asked of you, or of your pool
    CONSULT_CHANGED = "consult_changed"  # your consult was accepted, declined, completed...
    CONSULT_DUE = "consult_due"  # a consult you own is due soon
    REPORT_STATUS = "report_status"  # a report on your study became final, amended, appended


# The report statuses the sending clinician is told about.
STATUSES_NOTIFIED = frozenset({"final", "amended", "appended"})


def comment_recipients(author_id: int, named: Iterable[int], participants: Iterable[int],
                       sender_ids: Iterable[int]) -> list[int]:
    """Who is notified of a new comment: the users it names; with none named, everyone
    already in the thread and the clinicians who sent the study. Each at most once, never
    the author, in a stable order."""
    chosen = list(named)
    if not chosen:
        chosen = [*participants, *sender_ids]
    seen: set[int] = set()
    out: list[int] = []
    for user_id in chosen:
        if user_id != author_id and user_id not in seen:
            seen.add(user_id)
            out.append(user_id)
    return out


def mail_now(recipients: Sequence[int], modes: Mapping[int, str]) -> list[int]:
    """The recipients mailed at once (mode ``each``, the default for who never chose)."""
    return [r for r in recipients if MailMode(modes.get(r, DEFAULT_MODE)) == MailMode.EACH]


def in_digest(mode: str | None) -> bool:
    return MailMode(mode or DEFAULT_MODE) == MailMode.DAILY


@dataclass(frozen=True)
class Mail:
    subject: str
    body: str
    # RFC 2369 / RFC 8058 headers, so mail clients show their own unsubscribe button.
    headers: dict[str, str]


_SUBJECTS = {
    NoticeKind.COMMENT: "New comment on a report",
    NoticeKind.CONSULT_REQUESTED: "A consult was requested",
    NoticeKind.CONSULT_CHANGED: "A consult you follow changed",
    NoticeKind.CONSULT_DUE: "A consult is due soon",
    NoticeKind.REPORT_STATUS: "A report on your study changed",
}


def unsubscribe_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/api/v1/notifications/unsubscribe?token={quote(token)}"


def report_url(base_url: str, report_id: int) -> str:
    return f"{base_url.rstrip('/')}/reports/{report_id}"


def _footer(base_url: str, token: str) -> str:
    return ("\n\n--\nYou receive this because of your RelayPACS notification settings.\n"
            f"Stop these mails: {unsubscribe_url(base_url, token)}\n")


def _headers(base_url: str, token: str) -> dict[str, str]:
    return {"List-Unsubscribe": f"<{unsubscribe_url(base_url, token)}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def notice_mail(kind: str, report_id: int, *, base_url: str, unsubscribe_key: str) -> Mail:
    """One notice: what happened and a link, nothing about the patient or the content."""
    notice = NoticeKind(kind)
    body = (f"{_SUBJECTS[notice]}.\n\nSign in to read it:\n{report_url(base_url, report_id)}\n"
            "\nFor patient confidentiality this mail carries no patient details and no text.")
    return Mail(_SUBJECTS[notice], body + _footer(base_url, unsubscribe_key),
                _headers(base_url, unsubscribe_key))


def digest_mail(items: Sequence[tuple[str, int]], *, base_url: str, unsubscribe_key: str) -> Mail:
    """The daily digest: one line per notice (kind, report link), no patient details."""
    lines = [f"- {_SUBJECTS[NoticeKind(kind)]}: {report_url(base_url, report_id)}"
             for kind, report_id in items]
    body = (f"{len(items)} notification(s) since the last digest. Sign in to read them:\n\n"
            + "\n".join(lines)
            + "\n\nFor patient confidentiality this mail carries no patient details and no text.")
    return Mail(f"RelayPACS: {len(items)} new notification(s)",
                body + _footer(base_url, unsubscribe_key), _headers(base_url, unsubscribe_key))
