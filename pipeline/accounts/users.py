"""Facilities, users and their API tokens; disabling a user (token, sign-in and sessions).

A token is 32 random bytes shown once; only its sha256 is stored. A fast hash is the right
tool here: the token has 256 bits of entropy, so there is nothing for a slow hash to protect.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, make_transient_to_detached

from pipeline.accounts.sessions import revoke_user_sessions
from pipeline.models import READER_ROLES, Facility, ReaderAssignment, Role, User, primary_role, utcnow

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


def parse_roles(roles: str | Iterable[str]) -> list[str]:
    """Role names, checked and de-duplicated in the order given (ValueError naming a bad one)."""
    names = [roles] if isinstance(roles, str) else list(roles)
    out: list[str] = []
    for name in names:
        try:
            role = Role(name)
        except ValueError as exc:
            allowed = ", ".join(r.value for r in Role)
            raise ValueError(f"unknown role {name!r}; use one of: {allowed}") from exc
        if role.value not in out:
            out.append(role.value)
    if not out:
        raise ValueError("a user needs at least one role")
    return out


def set_roles(user: User, roles: str | Iterable[str]) -> list[str]:
    """Give ``user`` exactly these roles; ``users.role`` follows as the primary one."""
    checked = parse_roles(roles)
    user.roles = checked
    user.role = primary_role(checked)
    if user.id is not None:  # a cached copy elsewhere must not keep the old roles
        _forget_user(user.id)
    return checked


def create_user(session: Session, email: str, facility_name: str, role: str | Iterable[str],
                expires_in: timedelta | None = DEFAULT_TOKEN_LIFETIME) -> tuple[User, str]:
    """Create a user with one or more roles and return it with its new token (the only time
    the token exists)."""
    roles = parse_roles(role)
    if session.scalar(select(User).where(User.email == email)) is not None:
        raise ValueError(f"a user with email {email!r} already exists")
    facility = get_or_create_facility(session, facility_name)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    user = User(email=email, role=primary_role(roles), roles=roles, facility_id=facility.id,
                token_hash=hash_token(token),
                token_expires_at=utcnow() + expires_in if expires_in else None)
    session.add(user)
    session.flush()
    return user, token


def change_roles(session: Session, email: str, roles: Iterable[str]) -> User:
    """An admin's change of a user's roles (the CLI's ``users roles``)."""
    user = _existing_user(session, email)
    set_roles(user, roles)
    session.flush()
    return user


def assign_reader(session: Session, email: str, facility_name: str,
                  subspecialties: Iterable[str] = ()) -> ReaderAssignment:
    """Let a radiologist or consultant read a facility's delivered studies and reports (and
    join its consult pools by ``subspecialties``); again for the same pair replaces them."""
    user = _existing_user(session, email)
    facility = session.scalar(select(Facility).where(Facility.name == facility_name))
    if facility is None:
        raise ValueError(f"no facility named {facility_name!r}")
    return set_assignment(session, user, facility.id, subspecialties)[0]


def set_assignment(session: Session, user: User, facility_id: int, subspecialties: Iterable[str] = (),
                   by_user_id: int | None = None) -> tuple[ReaderAssignment, bool]:
    """The one way an assignment is made or changed (CLI and admin API): (row, created?).
    ValueError when ``user`` is neither a radiologist nor a consultant."""
    if not user.has_role(*READER_ROLES):
        raise ValueError(f"user {user.id} is neither a radiologist nor a consultant")
    wanted = sorted({s.strip().lower() for s in subspecialties if s.strip()})
    row = session.scalar(select(ReaderAssignment).where(ReaderAssignment.user_id == user.id,
                                                        ReaderAssignment.facility_id == facility_id))
    created = row is None
    if row is None:
        row = ReaderAssignment(user_id=user.id, facility_id=facility_id, subspecialties=wanted,
                               created_by=by_user_id)
        session.add(row)
    else:
        row.subspecialties = wanted
    session.flush()
    return row, created


def unassign_reader(session: Session, email: str, facility_name: str) -> bool:
    user = _existing_user(session, email)
    row = session.scalar(select(ReaderAssignment).join(Facility, Facility.id == ReaderAssignment.facility_id)
                         .where(ReaderAssignment.user_id == user.id, Facility.name == facility_name))
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def user_for_token(session: Session, token: str, *, fresh: bool = False) -> User | None:
    """The token's user, or None. ``fresh``: overwrite a copy already in the session (a
    cached one may be stale) with what the database says now."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    digest = hash_token(token)
    user = session.scalar(select(User).where(User.token_hash == digest)
                          .execution_options(populate_existing=fresh))
    # compare_digest keeps the final check constant-time even though lookup was by index.
    if user is None or user.revoked_at is not None or user.disabled_at is not None or not hmac.compare_digest(
        user.token_hash, digest
    ):
        return None
    if user.token_expires_at is not None and user.token_expires_at <= utcnow():
        return None
    return user


@dataclass(frozen=True, slots=True)
class Caller:
    """Who an authenticated request is, as authorisation needs it: an immutable snapshot
    of a user's id, facility and roles (with ``User``'s role checks, so the facility
    scoping rule takes either). Built once per token lookup and shared by every request
    with that token, where a ``User`` would have to be merged into each request's session."""

    id: int
    facility_id: int
    role: str
    roles: frozenset[str]

    @classmethod
    def of(cls, user: User) -> Caller:
        return cls(user.id, user.facility_id, user.role, user.role_set())

    def role_set(self) -> frozenset[str]:
        return self.roles

    def has_role(self, *roles: str) -> bool:
        return not self.roles.isdisjoint(str(r) for r in roles)

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN.value in self.roles


class _Entry(NamedTuple):
    at: float
    caller: Caller
    # A detached copy of the user's columns: for the routes that need the ORM user, and what
    # every hit checks (disabled, token expiry).
    row: User


class TokenCache:
    """Per-process memory of recent token lookups, so an authenticated request does not
    pay a database round trip for its token on every call.

    Keyed by the token's sha256 (the token itself is never kept). An entry is good for
    ``ttl_seconds`` and holds the user twice: a :class:`Caller` (``caller``: what
    authorisation reads, no ORM work at all on a hit) and a detached copy of the user's
    columns (``user``: attached to the request's session with ``merge(load=False)``, no
    query, for a route that needs a ``User``). Revocation and rotation are honoured within
    ``ttl_seconds`` on every process (the entry is then looked up again and the database
    says no); disabling and expiry are checked on every hit. Unknown tokens are not cached,
    so a new user's token works at once. ``revoke`` and ``rotate_token`` drop the user's
    entries in this process at once.
    """

    def __init__(self, ttl_seconds: float = 5.0, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        _CACHES.add(self)

    def caller(self, token: str, session: Callable[[], Session]) -> Caller | None:
        """The token's caller, or None. ``session`` gives the session to look the token up
        in, called only when this process has no fresh entry for it."""
        if self.ttl_seconds <= 0:
            user = user_for_token(session(), token)
            return Caller.of(user) if user is not None else None
        found = self._lookup(token, session)
        return None if found is None else found[0].caller

    def user(self, session: Session, token: str) -> User | None:
        """The token's user in ``session`` (a hit is merged without a query), or None."""
        if self.ttl_seconds <= 0:
            return user_for_token(session, token)
        found = self._lookup(token, lambda: session)
        if found is None:
            return None
        entry, loaded = found
        return loaded if loaded is not None else session.merge(entry.row, load=False)

    def _lookup(self, token: str, session: Callable[[], Session]) -> tuple[_Entry, User | None] | None:
        """(the token's entry, the user just loaded into ``session`` on a miss, else None),
        or None when the token does not work."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = hash_token(token)
        now = self.clock()
        entry = self._entries.get(digest)
        if entry is not None and now - entry.at < self.ttl_seconds:
            if entry.row.disabled_at is not None:
                return None
            expires_at = entry.row.token_expires_at
            if expires_at is not None and expires_at <= utcnow():
                return None
            return entry, None
        user = user_for_token(session(), token, fresh=True)
        if user is None:
            with self._lock:
                self._entries.pop(digest, None)
            return None
        columns = {attr.key: getattr(user, attr.key) for attr in inspect(User).column_attrs}
        detached = User(**columns)
        make_transient_to_detached(detached)
        entry = _Entry(now, Caller.of(user), detached)
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[digest] = entry
        return entry, user

    def forget_user(self, user_id: int) -> None:
        with self._lock:
            for digest in [d for d, entry in self._entries.items() if entry.caller.id == user_id]:
                del self._entries[digest]


_CACHES: weakref.WeakSet[TokenCache] = weakref.WeakSet()


def _forget_user(user_id: int) -> None:
    for cache in list(_CACHES):
        cache.forget_user(user_id)


def revoke(session: Session, email: str) -> User:
    user = _existing_user(session, email)
    user.revoked_at = user.revoked_at or utcnow()
    session.flush()
    _forget_user(user.id)
    return user


def _existing_user(session: Session, email: str) -> User:
    """The user with exactly this email (as the CLI was given it), or ValueError naming it."""
    user = session.scalar(select(User).where(User.email == email))
    if user is None:
        raise ValueError(f"no user with email {email!r}")
    return user


def disable_user(session: Session, email: str) -> tuple[User, int]:
    """Lock a user out: no sign-in, no token, every session ended at once (the token within
    ``TokenCache.ttl_seconds`` in other API processes). Returns the user and sessions ended."""
    user = _existing_user(session, email)
    user.disabled_at = user.disabled_at or utcnow()
    ended = revoke_user_sessions(session, user.id, "user_disabled")
    session.flush()
    _forget_user(user.id)
    return user, ended


def enable_user(session: Session, email: str) -> User:
    user = _existing_user(session, email)
    user.disabled_at = None
    session.flush()
    _forget_user(user.id)
    return user


def rotate_token(session: Session, email: str,
                 expires_in: timedelta | None = DEFAULT_TOKEN_LIFETIME) -> tuple[User, str]:
    """A new token for an existing user; the old one stops working at once in this process
    and within ``TokenCache.ttl_seconds`` in every other API process."""
    user = _existing_user(session, email)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    user.token_hash = hash_token(token)
    user.revoked_at = None
    user.token_expires_at = utcnow() + expires_in if expires_in else None
    session.flush()
    _forget_user(user.id)
    return user, token
