"""Facilities, users and their API tokens.

A token is 32 random bytes shown once; only its sha256 is stored. A fast hash is the right
tool here: the token has 256 bits of entropy, so there is nothing for a slow hash to protect.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.models import Facility, Role, User, utcnow

# Tokens expire; an admin rotates them (relaypacs users rotate) before they do.
DEFAULT_TOKEN_LIFETIME = timedelta(days=365)
TOKEN_PREFIX = "rp_"  # noqa: S105 - a marker, not a secret


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def get_or_create_facility(session: Session, name: str) -> Facility:
    facility = session.scalar(select(Facility).where(Facility.name == name))
    if facility is None:
        facility = Facility(name=name)
        session.add(facility)
        session.flush()
    return facility


def create_user(session: Session, email: str, facility_name: str, role: str,
                expires_in: timedelta | None = DEFAULT_TOKEN_LIFETIME) -> tuple[User, str]:
    """Create a user and return it with its new token (the only time the token exists)."""
    try:
        role = Role(role)
    except ValueError as exc:
        allowed = ", ".join(r.value for r in Role)
        raise ValueError(f"unknown role {role!r}; use one of: {allowed}") from exc
    if session.scalar(select(User).where(User.email == email)) is not None:
        raise ValueError(f"a user with email {email!r} already exists")
    facility = get_or_create_facility(session, facility_name)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    user = User(email=email, role=role.value, facility_id=facility.id, token_hash=hash_token(token),
                token_expires_at=utcnow() + expires_in if expires_in else None)
    session.add(user)
    session.flush()
    return user, token


def user_for_token(session: Session, token: str) -> User | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    digest = hash_token(token)
    user = session.scalar(select(User).where(User.token_hash == digest))
    # compare_digest keeps the final check constant-time even though lookup was by index.
    if user is None or user.revoked_at is not None or not hmac.compare_digest(
        user.token_hash, digest
    ):
        return None
    if user.token_expires_at is not None and user.token_expires_at <= utcnow():
        return None
    return user


def revoke(session: Session, email: str) -> User:
    user = session.scalar(select(User).where(User.email == email))
    if user is None:
        raise ValueError(f"no user with email {email!r}")
    user.revoked_at = user.revoked_at or utcnow()
    session.flush()
    return user


def rotate_token(session: Session, email: str,
                 expires_in: timedelta | None = DEFAULT_TOKEN_LIFETIME) -> tuple[User, str]:
    """A new token for an existing user; the old one stops working at once."""
    user = session.scalar(select(User).where(User.email == email))
    if user is None:
        raise ValueError(f"no user with email {email!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    user.token_hash = hash_token(token)
    user.revoked_at = None
    user.token_expires_at = utcnow() + expires_in if expires_in else None
    session.flush()
    return user, token
