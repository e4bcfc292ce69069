"""Who uses the gateway: facilities, users with their roles, token and password, their
signed-in browser sessions and password resets, the facilities a radiologist or consultant
reads for (assignments kept by admins), and the append-only audit trail of what they did.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from pipeline.models.base import Base, utcnow


class Role(enum.StrEnum):
    UPLOADER = "uploader"
    QA_MANAGER = "qa_manager"
    ADMIN = "admin"
    CLINICIAN = "clinician"  # reads its facility's studies and reports, comments, asks for consults
    RADIOLOGIST = "radiologist"  # writes reports and addenda for the facilities assigned to them
    CONSULTANT = "consultant"  # answers consults for the facilities (and subspecialties) assigned
    # Teaching file: reads the published cases of every facility (residents).
    TEACHING = "teaching"
    # Teaching file: approves (publishes) and withdraws cases, sees every draft.
    TEACHING_PUBLISHER = "teaching_publisher"


# The primary role (``users.role``) is the most powerful one a user holds: what a single-role
# screen or query shows. Authorisation always looks at the whole set (``users.roles``).
ROLE_PRECEDENCE = (Role.ADMIN, Role.QA_MANAGER, Role.RADIOLOGIST, Role.CONSULTANT,
                   Role.TEACHING_PUBLISHER, Role.CLINICIAN, Role.TEACHING, Role.UPLOADER)
# Roles whose readers serve the facilities of their assignments as well as their own.
READER_ROLES = frozenset({Role.RADIOLOGIST, Role.CONSULTANT})


def primary_role(roles: Iterable[str]) -> str:
    held = {Role(r) for r in roles}
    return next(r.value for r in ROLE_PRECEDENCE if r in held)


def _roles_from_role(context) -> list[str]:  # noqa: ANN001 - SQLAlchemy's default context
    """A row inserted with only ``role`` (older callers) holds exactly that role."""
    return [context.get_current_parameters()["role"]]


class Facility(Base):
    __tablename__ = "facilities"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    # The primary role (ROLE_PRECEDENCE over ``roles``), kept with the set by
    # pipeline.accounts.users.set_roles, for single-role displays and queries.
    role: Mapped[str] = mapped_column(String(32))
    # Every role the user holds (a JSON list, the same on PostgreSQL and SQLite); ``require``
    # passes when any of them is allowed.
    roles: Mapped[list[str]] = mapped_column(JSON, default=_roles_from_role)
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

    def role_set(self) -> frozenset[str]:
        return frozenset(self.roles or [self.role])

    def has_role(self, *roles: str) -> bool:
        return not self.role_set().isdisjoint(str(r) for r in roles)

    @property
    def is_admin(self) -> bool:
        return self.has_role(Role.ADMIN)


class ReaderAssignment(Base):
    """A radiologist or consultant serves a facility (besides their own): they read its
    delivered studies and reports. ``subspecialties`` (e.g. ["neuro", "msk"]) form the consult
    pools. Kept by admins; every change audited."""

    __tablename__ = "reader_assignments"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    subspecialties: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    __table_args__ = (UniqueConstraint("user_id", "facility_id", name="uq_reader_assignments_user_facility"),)


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
