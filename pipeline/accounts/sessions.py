"""Server-side sign-in sessions: opening one, finding the one a cookie names (and keeping it
alive), and ending them (logout, password change, a disabled user).

The cookie carries 32 random bytes (URL-safe); the row stores only their sha256, so the
table signs nobody in. A session ends when idle longer than the policy's ``idle_seconds``,
at its absolute ``expires_at`` whatever the activity, or when revoked. Activity writes
``last_seen_at`` at most once per ``touch_every_seconds``, so a tus upload of thousands of
chunks keeps its session alive with a write a minute, not one per chunk.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pipeline.models import User, UserSession, utcnow

# Longer than any id we hand out, short enough to refuse junk before hashing it.
MAX_ID_LENGTH = 100


@dataclass(frozen=True)
class SessionPolicy:
    idle_seconds: int = 30 * 60
    lifetime_seconds: int = 12 * 3600

    @property
    def touch_every_seconds(self) -> float:
        # A tenth of the idle timeout, at most a minute: a session is never more than 10%
        # closer to its idle end than the activity says.
        return min(60.0, self.idle_seconds / 10)


def _digest(raw_id: str) -> str:
    return hashlib.sha256(raw_id.encode()).hexdigest()


def start_session(session: Session, user: User, policy: SessionPolicy, *, now: datetime | None = None,
                  remote_addr: str | None = None, user_agent: str | None = None) -> tuple[str, UserSession]:
    """A new session for ``user``: returns the cookie value (shown only here) and the row."""
    now = now or utcnow()
    raw_id = secrets.token_urlsafe(32)
    row = UserSession(id_hash=_digest(raw_id), user_id=user.id, csrf_token=secrets.token_urlsafe(32),
                      created_at=now, last_seen_at=now,
                      expires_at=now + timedelta(seconds=policy.lifetime_seconds),
                      remote_addr=(remote_addr or "")[:64] or None,
                      user_agent=(user_agent or "")[:200] or None)
    session.add(row)
    session.flush()
    return raw_id, row


def why_not_alive(row: UserSession, user: User, policy: SessionPolicy, now: datetime) -> str | None:
    """Why this session no longer signs anyone in, or None while it does."""
    if row.revoked_at is not None:
        return row.revoked_reason or "revoked"
    if user.disabled_at is not None:
        return "user_disabled"
    if now >= row.expires_at:
        return "expired"
    if now - row.last_seen_at >= timedelta(seconds=policy.idle_seconds):
        return "idle"
    return None


def find_session(session: Session, raw_id: str, policy: SessionPolicy, *, now: datetime | None = None,
                 touch: bool = True) -> tuple[UserSession, User] | None:
    """The live session the cookie value names, and its user; None for an unknown, revoked,
    idle or expired one. ``touch``: count this as activity (``last_seen_at``)."""
    if not raw_id or len(raw_id) > MAX_ID_LENGTH:
        return None
    now = now or utcnow()
    found = session.execute(
        select(UserSession, User).join(User, User.id == UserSession.user_id)
        .where(UserSession.id_hash == _digest(raw_id))
        .execution_options(populate_existing=True)
    ).first()
    if found is None:
        return None
    row, user = found
    if why_not_alive(row, user, policy, now) is not None:
        return None
    if touch and (now - row.last_seen_at).total_seconds() >= policy.touch_every_seconds:
        row.last_seen_at = now
        session.flush()
    return row, user


def session_is_alive(session: Session, raw_id: str, policy: SessionPolicy,
                     now: datetime | None = None) -> bool:
    """For a long-lived reader (an open event stream): the session still signs its user in.
    Not activity: a page left open all night does not keep its session alive."""
    return find_session(session, raw_id, policy, now=now, touch=False) is not None


def end_session(session: Session, row: UserSession, reason: str, now: datetime | None = None) -> None:
    if row.revoked_at is None:
        row.revoked_at = now or utcnow()
        row.revoked_reason = reason[:32]
        session.flush()


def revoke_user_sessions(session: Session, user_id: int, reason: str, now: datetime | None = None) -> int:
    """End every live session of the user; returns how many."""
    result = session.execute(
        update(UserSession).where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None))
        .values(revoked_at=now or utcnow(), revoked_reason=reason[:32]))
    return result.rowcount or 0
