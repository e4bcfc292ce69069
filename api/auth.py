"""Bearer-token authentication, roles, and facility scoping."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from flask import g, request

from api.context import db, resources
from api.errors import ApiError
from api.observability import check_request_bounds
from pipeline import audit
from pipeline.accounts import user_for_token
from pipeline.models import Role, User

F = TypeVar("F", bound=Callable)

ALL_ROLES = tuple(Role)


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
            if audit.record_token_use(db(), actor()):
                db().commit()
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
