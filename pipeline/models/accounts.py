"""Who uses the gateway: facilities, users with their role, token and password, their
signed-in browser sessions and password resets, and the append-only audit trail of what they did.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from pipeline.models.base import Base, utcnow


class Role(enum.StrEnum):
    UPLOADER = "uploader"
    QA_MANAGER = "qa_manager"
    ADMIN = "admin"
    # Teaching file: reads published cases; adds cases from the studies of their facility.
    TEACHING = "teaching"
    # Teaching file: approves (publishes) and withdraws cases, sees every draft.
    TEACHING_PUBLISHER = "teaching_publisher"


class Facility(Base):
    __tablename__ = "facilities"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"))
    # sha256 of a 256-bit random token: the token itself is shown once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    token_expires_at: Mapped[datetime | None]
    # argon2id hash (PHC string) of the sign-in password; None: this user cannot sign in
    # to the pages (a program with only a token).
    password_hash: Mapped[str | None] = mapped_column(String(255))
    password_changed_at: Mapped[datetime | None]
    # A disabled user can neither sign in nor use the token; their sessions end.
    disabled_at: Mapped[datetime | None]
    facility: Mapped[Facility] = relationship()


class UserSession(Base):
    """A signed-in browser. The cookie holds 32 random bytes; only their sha256 is stored, so
    a copy of this table signs nobody in. Ends when idle too long (``last_seen_at``), at
    ``expires_at`` whatever the activity, or when revoked (logout, password change, user
    disabled)."""

    __tablename__ = "user_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    id_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    # Sent back by the pages on every cookie-authenticated write (header or form field).
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(32))
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(200))


class PasswordReset(Base):
    """A mailed one-time link to set a new password: only the sha256 of its token is stored;
    it works once, until ``expires_at``."""

    __tablename__ = "password_resets"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class AuditEvent(Base):
    """Who did what, when, from where. Append-only: the database refuses UPDATE and DELETE
    (triggers in the migration), so not even the application can rewrite history."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    facility_id: Mapped[int | None] = mapped_column(ForeignKey("facilities.id"), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[dict | None] = mapped_column(JSON)
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
