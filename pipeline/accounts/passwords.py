"""Sign-in passwords: the policy, argon2id hashing, checking a sign-in, and setting a
password (which ends every session of that user and every reset link not yet used).

People sign in to the pages with email and password; programs keep their API tokens.
A password is low-entropy, unlike a token, so it is stored as an argon2id hash (memory-hard,
salted, parameters in the PHC string) and checked in constant time against a dummy hash
when the email is unknown, so the answer's timing does not tell which emails exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from pipeline.accounts import sessions
from pipeline.models import PasswordReset, User, utcnow

MIN_LENGTH = 10
# argon2 hashes any length, but a megabyte "password" would be a cheap way to burn CPU.
MAX_LENGTH = 256

# argon2-cffi's defaults: RFC 9106's low-memory profile (t=3, m=64 MiB, p=4).
_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("relaypacs: no such user, same cost")


class PasswordRefused(ValueError):
    """The new password does not meet the policy; the message says why."""


def check_policy(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordRefused(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordRefused(f"a password has at most {MAX_LENGTH} characters")
    if not password.strip():
        raise PasswordRefused("a password cannot be only spaces")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def user_by_email(session: Session, email: str) -> User | None:
    """Emails are matched without regard to case: people type them as they like."""
    return session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))


@dataclass(frozen=True)
class SignIn:
    user: User | None  # the account, when the email named one (for the audit trail only)
    ok: bool
    reason: str | None  # for the audit trail; the person is only told "wrong email or password"


def check_sign_in(session: Session, email: str, password: str) -> SignIn:
    """Whether ``password`` signs in ``email``; rehashes a correct password stored with old
    parameters. Every path costs one argon2 verification."""
    user = user_by_email(session, email) if email and len(email) <= 320 else None
    stored = user.password_hash if user is not None else None
    try:
        _hasher.verify(stored or _DUMMY_HASH, password[:MAX_LENGTH + 1])
        matched = stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        matched = False
    if user is None:
        return SignIn(None, False, "unknown email")
    if stored is None:
        return SignIn(user, False, "no password set")
    if not matched or len(password) > MAX_LENGTH:
        return SignIn(user, False, "wrong password")
    if user.disabled_at is not None:
        return SignIn(user, False, "user disabled")
    if _hasher.check_needs_rehash(stored):
        user.password_hash = _hasher.hash(password)
        session.flush()
    return SignIn(user, True, None)


def set_password(session: Session, user: User, password: str, now: datetime | None = None) -> int:
    """Store a new password; every session of the user and every unused reset link end
    (whoever knew the old password or held a link is out). Returns the sessions ended."""
    check_policy(password)
    now = now or utcnow()
    user.password_hash = hash_password(password)
    user.password_changed_at = now
    session.execute(update(PasswordReset)
                    .where(PasswordReset.user_id == user.id, PasswordReset.used_at.is_(None))
                    .values(used_at=now))
    ended = sessions.revoke_user_sessions(session, user.id, "password_changed", now)
    session.flush()
    return ended
