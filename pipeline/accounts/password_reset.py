"""Password reset by a mailed one-time link: issuing the link's token, the mail's text, and
redeeming the token with a new password.

The token is 32 random bytes shown only in the mail; the row stores its sha256. It works
once, until it expires, and setting any new password voids every other unused link of the
user. Issuing answers nothing about whether the email exists: the caller says the same
thing either way and only the mail (to the owner of the address) carries the link.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.accounts import passwords
from pipeline.models import PasswordReset, User, utcnow

# Outstanding links per user: a flood of requests for one address cannot grow the table
# (or the person's inbox) without bound.
MAX_OPEN_PER_USER = 5


class ResetRefused(ValueError):
    """The link is unknown, used or expired, or the new password is refused."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_reset(session: Session, email: str, ttl_seconds: int,
                now: datetime | None = None) -> tuple[User | None, str | None]:
    """A new link token for the account ``email`` names, or (user-or-None, None) when there
    is none to send: unknown email, disabled user, or too many open links."""
    now = now or utcnow()
    user = passwords.user_by_email(session, email) if email and len(email) <= 320 else None
    if user is None or user.disabled_at is not None:
        return user, None
    open_links = session.scalar(select(func.count()).select_from(PasswordReset).where(
        PasswordReset.user_id == user.id, PasswordReset.used_at.is_(None),
        PasswordReset.expires_at > now))
    if open_links >= MAX_OPEN_PER_USER:
        return user, None
    token = secrets.token_urlsafe(32)
    session.add(PasswordReset(user_id=user.id, token_hash=_digest(token), created_at=now,
                              expires_at=now + timedelta(seconds=ttl_seconds)))
    session.flush()
    return user, token


def find_reset(session: Session, token: str, now: datetime | None = None) -> PasswordReset | None:
    """The unused, unexpired link ``token`` names, or None."""
    if not token or len(token) > 100:
        return None
    row = session.scalar(select(PasswordReset).where(PasswordReset.token_hash == _digest(token)))
    if row is None or row.used_at is not None or row.expires_at <= (now or utcnow()):
        return None
    return row


def redeem_reset(session: Session, token: str, new_password: str, now: datetime | None = None) -> User:
    """Set the new password through the link; the link (and every other open one of the
    user) is then used, and every session of the user ends."""
    now = now or utcnow()
    row = find_reset(session, token, now)
    if row is None:
        raise ResetRefused("this link is unknown, already used or expired: ask for a new one")
    user = session.get(User, row.user_id)
    if user is None or user.disabled_at is not None:
        raise ResetRefused("this link is unknown, already used or expired: ask for a new one")
    try:
        passwords.set_password(session, user, new_password, now)
    except passwords.PasswordRefused as exc:
        raise ResetRefused(str(exc)) from exc
    row.used_at = now
    session.flush()
    return user


def reset_mail_text(link: str, ttl_seconds: int) -> tuple[str, str]:
    """(subject, body) of the mail: the link and how long it works; no patient data, and
    nothing but the address it was sent to identifies the account."""
    minutes = max(1, ttl_seconds // 60)
    body = (
        "Someone asked to set a new password for your RelayPACS account.\n\n"
        f"Open this link within {minutes} minutes to choose it (it works once):\n\n{link}\n\n"
        "If it was not you, ignore this mail: your password stays as it is.\n")
    return "RelayPACS: set a new password", body
