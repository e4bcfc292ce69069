"""Bearer-token authentication, roles, and facility scoping."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import TypeVar

from flask import current_app, g, request

from api.http.context import db, resources
from api.http.errors import ApiError
from api.http.observability import check_request_bounds
from pipeline.accounts import audit
from pipeline.accounts.users import TokenCache
from pipeline.models import Role, User, utcnow

F = TypeVar("F", bound=Callable)

ALL_ROLES = tuple(Role)

# Token lookups remembered for 5 s per app (process): a revoked or rotated token is refused
# by every API process at most 5 s later (pipeline.accounts.users.TokenCache).
TOKEN_CACHE_SECONDS = 5.0


class _AuthMemory:
    """Per app: the token cache, and for each user id when this process must next look at
    the token.used audit row (one check per user per audit window, not one per request)."""

    def __init__(self) -> None:
        self.tokens = TokenCache(ttl_seconds=TOKEN_CACHE_SECONDS)
        self.token_use_due: dict[int, datetime] = {}
        self.lock = threading.Lock()


def _memory() -> _AuthMemory:
    memory = current_app.extensions.get("relaypacs.auth")
    if memory is None:
        memory = current_app.extensions.setdefault("relaypacs.auth", _AuthMemory())
    return memory


def user_for_token(session, token: str) -> User | None:  # noqa: ANN001
    """The token's user through the app's token cache (the API and the dashboard)."""
    return _memory().tokens.user(session, token)


def _record_token_use() -> None:
    memory = _memory()
    user = g.user
    now = utcnow()
    due = memory.token_use_due.get(user.id)
    if due is not None and now < due:
        return
    recorded, next_due = audit.token_use_due_after(db(), actor(), now)
    if recorded:
        db().commit()
    with memory.lock:
        if len(memory.token_use_due) > 100_000:
            memory.token_use_due.clear()
        memory.token_use_due[user.id] = next_due


def current_user() -> User:
    return g.user


def require(*roles: Role) -> Callable[[F], F]:
    """401 without a valid token, 403 when the user's role is not in ``roles``."""
    allowed = set(roles or ALL_ROLES)

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(401, "missing bearer token", hint="Authorization: Bearer TOKEN")
            user = user_for_token(db(), token.strip())
            if user is None:
                raise ApiError(401, "invalid or revoked token")
            g.user = user
            resources().limiter.check(user.id)
            _record_token_use()
            if Role(user.role) not in allowed:
                raise ApiError(403, f"role {user.role} may not do this")
            check_request_bounds()
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def actor() -> audit.Actor:
    """The current user as the audit trail names them."""
    user = g.get("user")
    return audit.Actor(
        user_id=user.id if user else None,
        facility_id=user.facility_id if user else None,
        remote_addr=(request.remote_addr or "")[:64] or None,
        request_id=g.get("request_id"),
    )


def check_facility(facility_id: int) -> None:
    """403 unless the current user belongs to the facility (admins see every facility)."""
    user = current_user()
    if user.role != Role.ADMIN and user.facility_id != facility_id:
        raise ApiError(403, "this belongs to another facility")
