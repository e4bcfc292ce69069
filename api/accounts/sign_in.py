"""One sign-in for every page: ``/login`` (email and password) opens a server-side session
(api.http.auth reads its cookie on every page and /api/v1 route, and ``relaypacs events``
on its streams), ``/logout`` ends it, and a forgotten password is reset through a mailed
one-time link (``POST /api/v1/auth/password-reset``, or the form at ``/password-reset``;
the link opens ``/password-reset/new``).

The cookie: HttpOnly (no script reads it), SameSite=Lax (not sent on another site's
sub-requests and form posts), Path=/ (every page, the API and the events process), Secure
whenever the request came over https (directly, or as a trusted proxy says: see
RELAYPACS_TRUSTED_PROXIES). Every sign-in, refused sign-in, logout, reset request and reset
use is audited; the person is only ever told "wrong email or password", and a reset request
always answers the same, so neither says which emails have accounts. The forms posted before
any session exists (sign-in, reset) refuse a post that the browser says another site's page
made (``from_another_site``: Fetch Metadata, else Origin), so no page elsewhere can sign a
person into someone else's account (login CSRF).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

from flask import Blueprint, Response, current_app, g, jsonify, redirect, render_template, request, url_for
from pydantic import BaseModel, ConfigDict, Field

from api.http.auth import (
    SESSION_COOKIE,
    actor,
    check_csrf,
    from_another_site,
    session_policy,
    signed_in_user,
    web_session,
)
from api.http.context import db, resources
from api.http.errors import ApiError
from api.http.openapi import operation
from config import Settings
from pipeline.accounts import audit, password_reset, passwords, sessions
from pipeline.accounts.users import Caller
from pipeline.exports import mail
from pipeline.models import User

log = logging.getLogger(__name__)
blueprint = Blueprint("accounts", __name__, template_folder="templates")
api_blueprint = Blueprint("auth", __name__)

WRONG = "wrong email or password"
LINK_REFUSED = "this link is unknown, already used or expired: ask for a new one"
CROSS_SITE = "this form was sent from another site's page: open the sign-in page here and try again"
RESET_SENT = ("if that address has an account, a link to set a new password is on its way; "
              "it works once, for a limited time")


def _local_target(target: str | None) -> str:
    """Only a path on this site: a sign-in never bounces to another one."""
    parsed = urlparse(target or "")
    if not target or parsed.scheme or parsed.netloc or not target.startswith("/") or target.startswith("//"):
        return "/dashboard"
    return target


def _no_store(response: Response) -> Response:
    # Sign-in pages and signed-in pages are never cached: the back button after a logout
    # asks the server again (and gets the sign-in page).
    response.headers["Cache-Control"] = "no-store"
    return response


def _audit(user: User | None, action: str, detail: dict | None = None) -> None:
    # The trail and the access log name who it was, when known.
    g.caller = Caller.of(user) if user is not None else None
    session = db()
    audit.record(session, actor(), action, target=f"user:{user.id}" if user else None, detail=detail)
    session.commit()


def _form(template: str, status: int = 200, **context: object) -> Response:
    context.setdefault("error", None)
    context.setdefault("notice", None)
    response = current_app.make_response((render_template(template, user=None, **context), status))
    return _no_store(response)


def _cross_site(template: str, **context: object) -> Response | None:
    """403 with the form again when another site's page posted it (login CSRF); logged without
    the email, which is the victim's or the attacker's."""
    if not from_another_site():
        return None
    log.warning("refused a cross-site post to %s", request.path)
    return _form(template, 403, error=CROSS_SITE, **context)


def _throttled(template: str, **context: object) -> Response | None:
    """The sign-in limit, per real client address (the proxy's X-Forwarded-For when trusted)."""
    try:
        resources().limiter.check_login(request.remote_addr or "unknown")
    except ApiError as exc:
        response = _form(template, 429, error=exc.message, **context)
        response.headers["Retry-After"] = str(exc.extra["retry_after"])
        return response
    return None


@blueprint.route("/login", methods=["GET"])
def login_form():  # noqa: ANN201
    target = _local_target(request.args.get("next"))
    if signed_in_user() is not None:
        return redirect(target)
    return _form("accounts/login.html", next=target, email="",
                 notice=request.args.get("notice") and "password set: sign in with it")


@blueprint.route("/login", methods=["POST"])
def login():  # noqa: ANN201
    target = _local_target(request.form.get("next"))
    if (refused := _cross_site("accounts/login.html", next=target, email="")) is not None:
        return refused
    email = (request.form.get("email") or "").strip()
    if (refused := _throttled("accounts/login.html", next=target, email=email)) is not None:
        return refused
    result = passwords.check_sign_in(db(), email, request.form.get("password") or "")
    if not result.ok:
        _audit(result.user, "auth.login_refused", {"reason": result.reason})
        return _form("accounts/login.html", 401, error=WRONG, next=target, email=email)
    user = result.user
    assert user is not None
    raw_id, row = sessions.start_session(db(), user, session_policy(), remote_addr=request.remote_addr,
                                         user_agent=request.headers.get("User-Agent"))
    _audit(user, "auth.login", {"session": row.id})
    response = redirect(target)
    settings = resources().settings
    # Kept across a browser restart (phones end browsers often) until the absolute lifetime;
    # the server ends it sooner when idle or revoked.
    response.set_cookie(SESSION_COOKIE, raw_id, httponly=True, samesite="Lax", path="/",
                        secure=request.is_secure,
                        max_age=settings.session_lifetime_seconds)
    return _no_store(response)


@blueprint.route("/logout", methods=["POST"])
def logout():  # noqa: ANN201
    row = web_session()
    response = redirect(url_for("accounts.login_form"))
    if row is not None:
        check_csrf()  # a hostile page cannot sign people out either
        user = signed_in_user()
        sessions.end_session(db(), row, "logout")
        _audit(user, "auth.logout", {"session": row.id})
    response.delete_cookie(SESSION_COOKIE, path="/", secure=request.is_secure, httponly=True,
                           samesite="Lax")
    return _no_store(response)


# ------------------------------------------------------------------------- password reset

def _mailer() -> ThreadPoolExecutor:
    executor = current_app.extensions.get("relaypacs.mailer")
    if executor is None:
        executor = current_app.extensions.setdefault(
            "relaypacs.mailer", ThreadPoolExecutor(max_workers=1, thread_name_prefix="reset-mail"))
    return executor


def _send_reset_mail(settings: Settings, user_id: int, recipient: str, link: str) -> None:
    subject, body = password_reset.reset_mail_text(link, settings.password_reset_ttl_seconds)
    message = mail.compose(settings.mail_from, [recipient], subject, body)
    try:
        mail.send(mail.Smtp.from_url(settings.smtp_url or ""), message)
    except (mail.DeliveryRetryable, mail.DeliveryFailed, ValueError) as exc:
        log.warning("password reset mail for user %d not sent: %s", user_id, type(exc).__name__)


def request_reset(email: str) -> None:
    """Issue a link for ``email`` if it names an account and mail it, off the request thread:
    the answer takes the same time whether or not a mail goes out."""
    settings = resources().settings
    user, token = password_reset.issue_reset(db(), email, settings.password_reset_ttl_seconds)
    detail: dict[str, object] = {"mailed": token is not None}
    if token is not None and not (settings.smtp_url and settings.public_url):
        detail = {"mailed": False, "reason": "RELAYPACS_SMTP_URL and RELAYPACS_PUBLIC_URL are needed"}
        db().rollback()
        token = None
    _audit(user, "auth.password_reset_requested", detail)
    if token is not None and user is not None:
        link = f"{settings.public_url}{url_for('accounts.reset_form')}?token={token}"
        _mailer().submit(_send_reset_mail, settings, user.id, user.email, link)


class PasswordResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(..., min_length=1, max_length=320)


@api_blueprint.route("/password-reset", methods=["POST"])
@operation("Mail a one-time link to set a new password (always 202: says nothing about the address)",
           body=PasswordResetRequest, responses={202: "accepted"}, errors=(400, 429), public=True)
def api_password_reset():  # noqa: ANN201
    resources().limiter.check_login(request.remote_addr or "unknown")  # 429 past the limit
    request_reset(g.body.email)
    response = jsonify({"status": "accepted", "message": RESET_SENT})
    response.status_code = 202
    return response


@blueprint.route("/password-reset", methods=["GET"])
def reset_request_form():  # noqa: ANN201
    return _form("accounts/reset_request.html", email="")


@blueprint.route("/password-reset", methods=["POST"])
def reset_request():  # noqa: ANN201
    if (refused := _cross_site("accounts/reset_request.html", email="")) is not None:
        return refused
    email = (request.form.get("email") or "").strip()
    if (refused := _throttled("accounts/reset_request.html", email=email)) is not None:
        return refused
    if email and len(email) <= 320:
        request_reset(email)
    return _form("accounts/reset_request.html", 202, email="", notice=RESET_SENT)


@blueprint.route("/password-reset/new", methods=["GET"])
def reset_form():  # noqa: ANN201
    token = request.args.get("token", "")
    valid = password_reset.find_reset(db(), token) is not None
    response = _form("accounts/reset_set.html", 200 if valid else 400, token=token if valid else "",
                     error=None if valid else LINK_REFUSED)
    # The token is in this page's URL: keep it out of Referer headers to anywhere.
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@blueprint.route("/password-reset/new", methods=["POST"])
def reset_set():  # noqa: ANN201
    if (refused := _cross_site("accounts/reset_set.html", token="")) is not None:
        return refused
    token = request.form.get("token", "")
    password = request.form.get("password") or ""
    if password != (request.form.get("confirm") or ""):
        return _form("accounts/reset_set.html", 400, token=token, error="the two passwords differ")
    row = password_reset.find_reset(db(), token)
    try:
        user = password_reset.redeem_reset(db(), token, password)
    except password_reset.ResetRefused as exc:
        db().rollback()
        if row is not None:  # a real link, a refused password: say why, keep the form
            return _form("accounts/reset_set.html", 400, token=token, error=str(exc))
        _audit(None, "auth.password_reset_refused", {"reason": "unknown, used or expired link"})
        return _form("accounts/reset_set.html", 400, token="", error=str(exc))
    _audit(user, "auth.password_reset_used", {"reset": row.id if row else None})
    response = redirect(url_for("accounts.login_form", notice="1"))
    response.delete_cookie(SESSION_COOKIE, path="/")
    return _no_store(response)

