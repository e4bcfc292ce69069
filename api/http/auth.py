"""Who is calling, one path for every route: a bearer token (programs) or the sign-in
session cookie (people, from the pages); roles, facility scoping, and CSRF protection of
cookie-authenticated writes.

A browser sends the cookie with any request to this site, including one a hostile page
triggers; so a write (POST, PATCH, PUT, DELETE) authenticated by the cookie must also carry
the session's CSRF token (``X-CSRF-Token`` header, or the ``csrf_token`` form field) that
only our own pages can read. A bearer token is never sent by a browser on its own, so
token requests need no CSRF token.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import TypeVar
from urllib.parse import urlparse

from flask import current_app, g, request

from api.http.context import db, resources
from api.http.errors import ApiError
from api.http.observability import check_request_bounds
from pipeline.accounts import audit
from pipeline.accounts.scoping import may_read, needs_assignments
from pipeline.accounts.sessions import SessionPolicy, find_session
from pipeline.accounts.users import Caller, TokenCache
from pipeline.models import Role, User, UserSession, utcnow

F = TypeVar("F", bound=Callable)

# What a bare ``require()`` admits: the upload side's roles, as before there were others.
# The reading roles (clinician, radiologist, consultant) get a route only where it names them.
DEFAULT_ROLES = (Role.UPLOADER, Role.QA_MANAGER, Role.ADMIN)
# Path=/: one sign-in for every page and the API (the events process reads it too).
SESSION_COOKIE = "relaypacs_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

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


def _record_token_use() -> None:
    memory = _memory()
    user = g.caller
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


def caller() -> Caller:
    """Who the request is (id, facility, roles): what authorisation and scoping read. No
    ORM work: a token's caller comes from the token cache as it is."""
    return g.caller


def current_user() -> User:
    """The caller as a ``User`` in the request's session, for routes that need the ORM
    object (relationships, pipeline functions that take a ``User``): attached on first use,
    without a query when the token cache has it."""
    if "user" not in g:
        user = _memory().tokens.user(db(), g.bearer)
        if user is None:  # revoked between authentication and now (the cache entry expired)
            raise ApiError(401, "invalid or revoked token")
        g.user = user
    return g.user


def session_policy() -> SessionPolicy:
    settings = resources().settings
    return SessionPolicy(idle_seconds=settings.session_idle_seconds,
                         lifetime_seconds=settings.session_lifetime_seconds)


def web_session() -> UserSession | None:
    """The live sign-in session the request's cookie names (counted as activity), or None.
    Looked up once per request."""
    if "web_session" not in g:
        raw = request.cookies.get(SESSION_COOKIE, "")
        found = find_session(db(), raw, session_policy()) if raw else None
        if found is not None:
            db().commit()  # the touch of last_seen_at, if any, whatever the view does next
        g.web_session = found[0] if found else None
        if found:
            g.session_user = found[1]
    return g.web_session


def signed_in_user() -> User | None:
    """For pages: the session's user (and ``g.user``), or None when not signed in."""
    if web_session() is None:
        return None
    g.user = g.session_user
    g.caller = Caller.of(g.user)
    return g.user


def csrf_token() -> str | None:
    row = web_session()
    return row.csrf_token if row is not None else None


def check_csrf() -> None:
    """403 unless a cookie-authenticated write carries its session's CSRF token."""
    if request.method in SAFE_METHODS:
        return
    expected = csrf_token() or ""
    sent = request.headers.get(CSRF_HEADER) or ""
    if not sent and request.mimetype in _FORM_TYPES:  # never touch a tus body's stream
        sent = request.form.get(CSRF_FIELD) or ""
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise ApiError(403, "missing or wrong CSRF token",
                       hint=f"send the page's token in {CSRF_HEADER} (or the {CSRF_FIELD} form field)")


# What a browser says of who made a request (Fetch Metadata): only this site's own pages, or
# a person typing the address, may post the forms that have no session yet.
_OWN_SITE = frozenset({"same-origin", "none"})


def from_another_site() -> bool:
    """True when a browser says another site's page made this request: its ``Sec-Fetch-Site``
    (every current browser sends it) names another site, or, from an older browser, its
    ``Origin`` is not this host (``null`` included: sandboxed frames, data: pages). A request
    with neither header is not from a browser page (a script, the CLI) and no third party's
    page can be behind it. Used where no session, so no CSRF token, exists yet: the sign-in
    and password-reset forms (login CSRF)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site not in _OWN_SITE
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    # request.host is the proxy's Host when RELAYPACS_TRUSTED_PROXIES says to believe it.
    return origin == "null" or urlparse(origin).netloc.lower() != request.host.lower()


def authenticate() -> Caller:
    """The caller: bearer token if the request has an Authorization header, else the
    session cookie; 401 with neither, or when the one sent no longer works."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing bearer token", hint="Authorization: Bearer TOKEN")
        token = token.strip()
        found = _memory().tokens.caller(token, db)
        if found is None:
            raise ApiError(401, "invalid or revoked token")
        g.caller = found
        g.bearer = token
        g.auth = "token"
        return found
    if request.cookies.get(SESSION_COOKIE):
        if signed_in_user() is None:
            raise ApiError(401, "session ended: sign in again", hint="/login")
        g.auth = "session"
        check_csrf()
        return g.caller
    raise ApiError(401, "missing bearer token",
                   hint="Authorization: Bearer TOKEN, or sign in at /login")


def require(*roles: Role) -> Callable[[F], F]:
    """401 without a valid token or session, 403 when none of the user's roles is in ``roles``
    (or a cookie-authenticated write lacks its CSRF token)."""
    allowed = set(roles or DEFAULT_ROLES)

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            user = authenticate()
            resources().limiter.check(user.id)
            if g.auth == "token":
                _record_token_use()
            if not user.has_role(*allowed):  # any one of the user's roles will do
                raise ApiError(403, f"role {'/'.join(sorted(user.role_set()))} may not do this")
            check_request_bounds()
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def actor() -> audit.Actor:
    """The current user as the audit trail names them."""
    user = g.get("caller")
    return audit.Actor(
        user_id=user.id if user else None,
        facility_id=user.facility_id if user else None,
        remote_addr=(request.remote_addr or "")[:64] or None,
        request_id=g.get("request_id"),
    )


def check_facility(facility_id: int) -> None:
    """403 unless the current user may read the facility: their own, a reader's assigned
    ones, every one for admins (pipeline.accounts.scoping)."""
    user = caller()
    # Only a reader's assigned facilities take a query (and so a session).
    if not may_read(db() if needs_assignments(user) else None, user, facility_id):
        raise ApiError(403, "this belongs to another facility")
