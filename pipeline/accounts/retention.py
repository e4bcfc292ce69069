"""How long the records of sign-ins outlive their use: ended sessions (their row holds the
browser's address and user agent: personal data) and spent password-reset links leave the
tables ``KEEP_DAYS`` after they ended. The audit trail keeps the sign-ins themselves
(``auth.login``, ``auth.logout``...), so nothing an investigation needs goes with them.

Bounded deletes: the caller commits each chunk and calls again, so a backlog never holds one
long lock on the tables every request reads.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from pipeline.models import PasswordReset, UserSession, utcnow

# Long past any idle or absolute lifetime a session policy allows, and long enough that a
# support question about last week's sign-in still finds its row.
KEEP_DAYS = 30


def cutoff(now: datetime | None = None, keep_days: int = KEEP_DAYS) -> datetime:
    return (now or utcnow()) - timedelta(days=keep_days)


def prune_sessions_chunk(session: Session, *, before: datetime, chunk: int = 10_000) -> int:
    """Delete up to ``chunk`` sessions that ended before ``before``: revoked, past their
    absolute end, or not seen since (idle far beyond any idle timeout)."""
    ids = (select(UserSession.id)
           .where(or_(UserSession.revoked_at < before, UserSession.expires_at < before,
                      UserSession.last_seen_at < before))
           .limit(chunk).scalar_subquery())
    return session.execute(delete(UserSession).where(UserSession.id.in_(ids))).rowcount or 0


def prune_resets_chunk(session: Session, *, before: datetime, chunk: int = 10_000) -> int:
    """Delete up to ``chunk`` reset links used or expired before ``before``."""
    ids = (select(PasswordReset.id)
           .where(or_(PasswordReset.expires_at < before, PasswordReset.used_at < before))
           .limit(chunk).scalar_subquery())
    return session.execute(delete(PasswordReset).where(PasswordReset.id.in_(ids))).rowcount or 0
