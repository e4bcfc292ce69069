"""Every error answers JSON with a status and a message that says what was wrong."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from pipeline.intake.tus import TUS_VERSION, TusError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def error_response(status: int, message: str, **extra: object):  # noqa: ANN201
    response = jsonify({"error": {"status": status, "message": message, **extra}})
    response.status_code = status
    response.headers["Tus-Resumable"] = TUS_VERSION
    return response


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):  # noqa: ANN202
        response = error_response(exc.status, exc.message, **exc.extra)
        if "retry_after" in exc.extra:
            response.headers["Retry-After"] = str(exc.extra["retry_after"])
        return response

    @app.errorhandler(TusError)
    def _tus_error(exc: TusError):  # noqa: ANN202
        return error_response(exc.status, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # noqa: ANN202
        return error_response(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # noqa: ANN202
        # Type only: exception text may quote request data (patient names in metadata).
        log.exception("unhandled error: %s", type(exc).__name__)
        return error_response(500, "internal error; the request was not applied")
