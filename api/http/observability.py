"""Per-request id, access log lines, and the audit of token use."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Request, Response, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from api.http.context import resources
from api.http.errors import ApiError
from config.logging import request_id

log = logging.getLogger("relaypacs.access")
# JSON bodies are small; tus PATCH bodies are streamed and bounded by Upload-Length instead.
MAX_JSON_BYTES = 1024 * 1024
# Bounds the app answers with a JSON 414/431; gunicorn's own (api/cli/services.py) sit above them and
# are the last resort for what never reaches Flask.
MAX_URL_BYTES = 4096
MAX_HEADER_BYTES = 16 * 1024
_VALID_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_CONTENT = ("CONTENT_TYPE", "CONTENT_LENGTH")
_CONTENT_FROM_CLIENT = frozenset({"HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"})  # werkzeug skips them


def url_and_header_bytes(request: Request) -> tuple[int, int]:
    """The request's path and query, and its header lines, in bytes: werkzeug's
    ``full_path`` and ``headers`` counted straight from the WSGI environ."""
    environ = request.environ
    url_bytes = len(request.path.encode("utf-8", "surrogateescape")) + 1 + len(request.query_string)
    # As werkzeug names them: HTTP_X_Y is "X-Y" (5 characters shorter), CONTENT_TYPE and
    # CONTENT_LENGTH keep their length; each line counts ": " and CRLF.
    header_bytes = sum(len(k) - 1 + len(v) for k, v in environ.items()
                       if k[:5] == "HTTP_" and k not in _CONTENT_FROM_CLIENT)
    header_bytes += sum(len(k) + 4 + len(environ[k]) for k in _CONTENT if environ.get(k))
    return url_bytes, header_bytes


def check_request_bounds() -> None:
    """Bounds every authenticated request must keep (checked after authentication, so a
    caller without a token learns nothing but 401). Read from the WSGI environ as it is:
    werkzeug's header view and query-string parsing cost a small read more than the checks."""
    url_bytes, header_bytes = url_and_header_bytes(request)
    if url_bytes > MAX_URL_BYTES:
        raise ApiError(414, f"URL of {url_bytes} bytes is over {MAX_URL_BYTES}")
    if header_bytes > MAX_HEADER_BYTES:
        raise ApiError(431, f"headers of {header_bytes} bytes are over {MAX_HEADER_BYTES}")
    if request.mimetype == "application/json":
        if (request.content_length or 0) > MAX_JSON_BYTES:
            raise ApiError(413, f"JSON body over {MAX_JSON_BYTES} bytes")
        # A chunked body has no Content-Length to check: bound the read itself. werkzeug
        # stops reading at max_content_length without an error (the body would just be cut
        # short), so read one byte more than allowed and refuse when it is there.
        request.max_content_length = MAX_JSON_BYTES + 1
    # PostgreSQL text cannot hold NUL: refuse it at the door rather than fail in a query.
    # A query string decodes to a NUL only from "%00" (parsed only then).
    query = request.query_string
    if "\x00" in request.path or ((b"%00" in query or b"\x00" in query)
                                   and any("\x00" in v for v in request.args.values())):
        raise ApiError(400, "NUL characters are not allowed in the URL")
    if request.mimetype == "application/json":
        try:
            data = request.get_data(cache=True)
        except RequestEntityTooLarge as exc:
            raise ApiError(413, f"JSON body over {MAX_JSON_BYTES} bytes") from exc
        if len(data) > MAX_JSON_BYTES:
            raise ApiError(413, f"JSON body over {MAX_JSON_BYTES} bytes")
        if b"\\u0000" in data or b"\x00" in data:
            raise ApiError(400, "NUL characters are not allowed in JSON text")


def register(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex
        g.request_token = request_id.set(g.request_id)
        g.started = time.perf_counter()
        # gunicorn hands the socket blocking with no timeout (reset for every request on a
        # kept-alive connection): bound each read and write so a stalled client times out and
        # a chunk's body ends where its bytes stopped (pipeline.intake.uploads keeps them).
        sock = request.environ.get("gunicorn.socket")
        if sock is not None:
            sock.settimeout(resources().settings.client_idle_timeout_seconds or None)  # 0: none

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        user = g.get("caller")
        # The route pattern, not the path: ids vary, patterns aggregate.
        route = request.url_rule.rule if request.url_rule else "unmatched"
        seconds = time.perf_counter() - g.get("started", time.perf_counter())
        log.info("request", extra={
            "method": request.method, "route": route, "status": response.status_code,
            "ms": round(seconds * 1000, 1), "user_id": user.id if user is not None else None,
            "bytes_in": request.content_length or 0,
        })
        if route != "/metrics":
            resources().telemetry.observe_request(route, request.method, response.status_code,
                                                  seconds, request.content_length or 0)
        return response

    @app.teardown_request
    def _reset(_exc: BaseException | None) -> None:
        token = g.pop("request_token", None)
        if token is not None:
            request_id.reset(token)
