"""Tokens that expire and can be revoked, the append-only audit trail, rate limits,
request ids, body bounds."""

from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from pipeline.accounts import audit
from pipeline.accounts import users as accounts
from pipeline.models import AuditEvent
from tests.rate_limits import hold_in_one_window


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_expired_and_revoked_tokens_are_refused(client, session):
    _, expired = accounts.create_user(session, "old@a.test", "Clinic A", "uploader",
                                      expires_in=timedelta(seconds=-1))
    user, revoked = accounts.create_user(session, "gone@a.test", "Clinic A", "uploader")
    session.commit()
    assert client.get("/api/v1/batches", headers=auth(expired)).status_code == 401
    assert client.get("/api/v1/batches", headers=auth(revoked)).status_code == 200
    accounts.revoke(session, "gone@a.test")
    session.commit()
    assert client.get("/api/v1/batches", headers=auth(revoked)).status_code == 401
    _, fresh = accounts.rotate_token(session, "gone@a.test")
    session.commit()
    assert client.get("/api/v1/batches", headers=auth(fresh)).status_code == 200
    assert client.get("/api/v1/batches", headers=auth(revoked)).status_code == 401


def test_audit_trail_is_append_only(session):
    event = audit.record(session, audit.Actor(None, None), "test.event")
    session.commit()
    for statement in ("UPDATE audit_events SET action='x' WHERE id=:id",
                      "DELETE FROM audit_events WHERE id=:id"):
        with pytest.raises(DatabaseError):
            session.execute(text(statement), {"id": event.id})
        session.rollback()
    assert session.get(AuditEvent, event.id).action == "test.event"


def test_actions_are_audited_and_only_admins_read_them(client, make_token):
    uploader = auth(make_token("Clinic A"))
    batch = client.post("/api/v1/batches", json={}, headers=uploader).get_json()
    client.post(f"/api/v1/batches/{batch['id']}/complete", headers=uploader)
    assert client.get("/api/v1/audit", headers=uploader).status_code == 403
    admin = auth(make_token("Clinic A", "admin"))
    events = client.get("/api/v1/audit", headers=admin).get_json()["events"]
    actions = [e["action"] for e in events]
    assert "batch.created" in actions and "batch.completed" in actions
    assert actions.count("token.used") == 2  # once per user per hour, not per request


def test_rate_limit_answers_429_with_retry_after(app, client, make_token):
    app.extensions["relaypacs"].limiter.limits["write"] = 3
    hold_in_one_window(app.extensions["relaypacs"].limiter)
    headers = auth(make_token("Clinic A"))
    codes = [client.post("/api/v1/batches", json={}, headers=headers).status_code for _ in range(5)]
    assert codes == [201, 201, 201, 429, 429]
    limited = client.post("/api/v1/batches", json={}, headers=headers)
    assert 0 < int(limited.headers["Retry-After"]) <= 61
    assert "rate limit" in limited.get_json()["error"]["message"]
    # Reads have their own budget.
    assert client.get("/api/v1/batches", headers=headers).status_code == 200


def test_request_id_is_echoed_or_made(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    made = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"}).headers["X-Request-ID"]
    assert made and " " not in made


def test_oversized_json_body_is_413(client, make_token):
    response = client.post("/api/v1/batches", data="{" + " " * (2 * 1024 * 1024) + "}",
                           headers={**auth(make_token("Clinic A")), "Content-Type": "application/json"})
    assert response.status_code == 413


def test_nul_characters_are_a_400_not_a_database_error(client, make_token):
    headers = auth(make_token("Clinic A"))
    assert client.post("/api/v1/batches", json={"label": "a\x00b"}, headers=headers).status_code == 400
    assert client.get("/api/v1/batches?limit=1%00", headers=headers).status_code == 400


def test_overlong_url_and_headers_get_a_json_414_and_431(client, make_token):
    headers = auth(make_token("Clinic A"))
    long_url = client.get("/api/v1/batches?label=" + "a" * 5000, headers=headers)
    assert long_url.status_code == 414 and "over 4096" in long_url.get_json()["error"]["message"]
    big_headers = client.get("/api/v1/batches", headers={**headers, "X-Padding": "b" * 17000})
    assert big_headers.status_code == 431 and big_headers.get_json()["error"]["status"] == 431
    # Just under the bounds is served.
    assert client.get("/api/v1/batches", headers={**headers, "X-Padding": "b" * 8000}).status_code == 200


def test_every_authenticated_operation_documents_the_bound_errors(app):
    from api.http.openapi import openapi_document

    for path, methods in openapi_document(app)["paths"].items():
        for method, doc in methods.items():
            if doc.get("security") == []:
                continue
            assert {"413", "414", "431"} <= set(doc["responses"]), (method, path)


def test_sign_ins_are_audited_and_throttled_per_address(app, client, make_token, sign_in):
    app.extensions["relaypacs"].limiter.limits["login"] = 3
    hold_in_one_window(app.extensions["relaypacs"].limiter)
    admin_token = make_token("Clinic A", "admin")
    assert sign_in(client, admin_token).status_code == 302
    assert client.post("/login", data={"email": "nobody@x.test", "password": "p" * 12}).status_code == 401
    assert sign_in(client, admin_token, password="wrong password").status_code == 401  # noqa: S106
    throttled = sign_in(client, admin_token)
    assert throttled.status_code == 429 and 0 < int(throttled.headers["Retry-After"]) <= 61
    assert b"rate limit" in throttled.data
    # Another address has its own budget.
    other = sign_in(client, admin_token, environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other.status_code == 302

    events = client.get("/api/v1/audit", headers=auth(admin_token)).get_json()["events"]
    logins = [(e["action"], e["user_id"] is not None, (e["detail"] or {}).get("reason"))
              for e in events if e["action"].startswith("auth.")]
    assert sorted(logins) == sorted([
        ("auth.login", True, None), ("auth.login", True, None),
        ("auth.login_refused", False, "unknown email"),
        ("auth.login_refused", True, "wrong password")])
    # The token itself is never written to the trail.
    assert admin_token not in repr(events)


class CountingBody:
    """A chunked request body (no Content-Length) of ``size`` bytes of JSON, counting what the
    server reads."""

    def __init__(self, size: int) -> None:
        self.data = b'{"label": "' + b"x" * (size - 13) + b'"}'
        self.read_bytes = 0

    def read(self, n: int = -1) -> bytes:
        n = len(self.data) - self.read_bytes if n is None or n < 0 else n
        block = self.data[self.read_bytes:self.read_bytes + n]
        self.read_bytes += len(block)
        return block

    def readline(self, n: int = -1) -> bytes:
        return self.read(n)

    def tell(self) -> int:
        return self.read_bytes

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.read_bytes  # the test client rewinds a fresh stream: it is at 0


def test_chunked_json_body_is_bounded_while_it_is_read(client, make_token):
    body = CountingBody(8 * 1024 * 1024)
    response = client.post(
        "/api/v1/batches", input_stream=body,
        headers={**auth(make_token()), "Content-Type": "application/json",
                 "Transfer-Encoding": "chunked"},
        # What gunicorn says for a chunked body it de-chunks itself.
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 413, response.data
    assert response.get_json()["error"]["status"] == 413
    assert body.read_bytes <= 1024 * 1024 + 64 * 1024, f"{body.read_bytes} bytes read"


def test_chunked_json_body_under_the_bound_still_works(client, make_token):
    body = CountingBody(4096)
    response = client.post(
        "/api/v1/batches", input_stream=body,
        headers={**auth(make_token()), "Content-Type": "application/json",
                 "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 201, response.data


@pytest.mark.parametrize(("path", "headers", "body"), [
    ("/api/v1/batches/12", {"Authorization": "Bearer rp_x"}, None),
    ("/api/v1/batches?label=caf%C3%A9&limit=5&x=%00", {"X-Padding": "b" * 300, "Accept": "*/*"}, None),
    ("/api/v1/files/ab%2Fc", {"Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"},
     b"x" * 10),
    ("/r\u00e9sum\u00e9", {"Content-Type": "application/json"}, b"{}"),
])
def test_the_bounds_count_what_werkzeugs_views_of_the_request_say(app, path, headers, body):
    """Counted from the environ as werkzeug's ``full_path`` and ``headers`` count them."""
    from api.http.observability import url_and_header_bytes

    with app.test_request_context(path, headers=headers, data=body):
        from flask import request

        expected = (len(request.full_path.encode("utf-8", "surrogateescape")),
                    sum(len(k) + len(v) + 4 for k, v in request.headers.items()))
        assert url_and_header_bytes(request) == expected
