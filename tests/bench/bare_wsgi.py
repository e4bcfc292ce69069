"""The least an HTTP answer can cost here: a constant JSON body from a bare WSGI callable under
the same gunicorn settings as ``relaypacs api``, with no Flask, no auth, no database. The
analytics benchmark times it beside the dashboard calls, so a ratio target can be read
against what any HTTP answer on this host costs."""

from __future__ import annotations

from collections.abc import Callable, Iterable

BODY = b'{"ok": true}'


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(BODY)))])
    return [BODY]
