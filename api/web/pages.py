"""The pages of the browser and phone app: /upload (the upload screen and its study board)
and /capture (phone photos), for uploaders and admins, signed in at /login like the dashboard.

The pages hold no data of their own: they call /api/v1 and the tus endpoint with the sign-in
session cookie and the CSRF token from their ``<meta name="csrf-token">``; no token is ever
kept in the browser's storage. HTML is never cached (it names the current hashed assets and
carries the session's CSRF token); the service worker is re-checked on every load.
"""

from __future__ import annotations

from flask import Blueprint, Response, redirect, render_template, request, url_for

from api.http.auth import csrf_token, signed_in_user
from api.http.context import resources
from api.http.errors import ApiError
from api.web import assets
from pipeline.models import Role, User

blueprint = Blueprint("web", __name__, template_folder="templates")
UPLOADERS = (Role.UPLOADER, Role.ADMIN)


def _signed_in() -> User | Response:
    user = signed_in_user()
    if user is None:
        return redirect(url_for("accounts.login_form", next=request.full_path.rstrip("?")))
    if Role(user.role) not in UPLOADERS:
        raise ApiError(403, "the upload screen is for uploaders and admins")
    return user


def _page(template: str, user: User) -> Response:
    base = resources().settings.asset_base_url

    def asset(name: str) -> str:
        return assets.asset_url(base, name)

    response = Response(render_template(
        template, user=user, csrf_token=csrf_token(), asset=asset, first_load=assets.first_load(),
        events_url=resources().settings.dashboard_events_url))
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.route("/upload", methods=["GET"])
def upload():  # noqa: ANN201
    user = _signed_in()
    return user if isinstance(user, Response) else _page("web/upload.html", user)


@blueprint.route("/capture", methods=["GET"])
def capture():  # noqa: ANN201
    user = _signed_in()
    return user if isinstance(user, Response) else _page("web/capture.html", user)


@blueprint.route("/manifest.webmanifest", methods=["GET"])
def web_manifest() -> Response:
    """What makes the app installable on a phone's home screen."""
    base = resources().settings.asset_base_url
    body = {
        "name": "RelayPACS", "short_name": "RelayPACS", "start_url": "/capture", "scope": "/",
        "display": "standalone", "background_color": "#ffffff", "theme_color": "#1f4e79",
        "icons": [{"src": assets.asset_url(base, "icon.svg"), "sizes": "any", "type": "image/svg+xml"}],
    }
    response = Response(render_template("web/manifest.json", body=body),
                        mimetype="application/manifest+json")
    response.headers["Cache-Control"] = "no-cache"
    return response


@blueprint.route("/sw.js", methods=["GET"])
def service_worker() -> Response:
    """The service worker: caches the app's shell (the hashed assets) and nothing else: no
    page, no API answer, no photo, so nothing of a patient is ever kept by it."""
    base = resources().settings.asset_base_url
    shell = sorted({assets.asset_url(base, name) for name in assets.manifest()})
    response = Response(render_template("web/sw.js", shell=shell, cache_name="relaypacs-shell-"
                                        + assets.manifest()["upload.js"]),
                        mimetype="text/javascript")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Service-Worker-Allowed"] = "/"
    return response
