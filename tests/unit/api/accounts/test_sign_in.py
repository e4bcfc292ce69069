"""One sign-in for every page: email and password into a server-side session whose cookie
(HttpOnly, SameSite=Lax, Path=/, Secure over https) works on the pages and on /api/v1 with
the token's roles and scoping; CSRF on cookie-authenticated writes; logout, a password
change and a disabled user end it; trusted-proxy handling; every step audited."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from pipeline.accounts import passwords
from pipeline.accounts.users import disable_user
from pipeline.models import User, UserSession, utcnow
from tests.rate_limits import hold_in_one_window
from tests.unit.conftest import TEST_PASSWORD


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def cookie_header(response) -> str:  # noqa: ANN001
    return next(v for v in response.headers.getlist("Set-Cookie") if v.startswith("relaypacs_session="))


def csrf(client) -> str:  # noqa: ANN001
    html = client.get("/dashboard").get_data(as_text=True)
    return html.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]


def audit_actions(client, admin_token: str) -> list[tuple[str, str | None]]:  # noqa: ANN001
    events = client.get("/api/v1/audit?limit=1000", headers=bearer(admin_token)).get_json()["events"]
    return [(e["action"], (e["detail"] or {}).get("reason")) for e in reversed(events)
            if e["action"].startswith("auth.")]


def test_email_and_password_open_a_session_cookie_not_the_token(client, make_token, sign_in):
    admin = make_token("Clinic A", "admin")
    signed = sign_in(client, admin, next="/dashboard/facilities/1")
    assert signed.status_code == 302 and signed.headers["Location"] == "/dashboard/facilities/1"
    cookie = cookie_header(signed)
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    assert value != admin and admin not in cookie and len(value) >= 40
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
    assert "httponly" in flags and flags["samesite"] == "SameSite=Lax" and flags["path"] == "Path=/"
    assert "secure" not in flags  # plain http here
    assert client.get("/dashboard").status_code == 200


def test_wrong_password_unknown_email_and_no_password_say_the_same(client, make_token, sign_in, session):
    admin = make_token("Clinic A", "admin")
    make_token("Clinic A", "uploader")  # a program's user: a token, no password
    sign_in(client, admin)  # gives the admin a password
    email = session.scalar(select(User.email).where(User.role == "admin"))
    uploader_email = session.scalar(select(User.email).where(User.role == "uploader"))
    answers = [client.post("/login", data={"email": e, "password": p})
               for e, p in ((email, "wrong password!"), ("nobody@nowhere.test", TEST_PASSWORD),
                            (uploader_email, TEST_PASSWORD))]
    assert {a.status_code for a in answers} == {401}
    assert len({a.get_data(as_text=True).count("wrong email or password") for a in answers}) == 1
    assert all("relaypacs_session=" not in ";".join(a.headers.getlist("Set-Cookie")) for a in answers)


def test_the_api_accepts_the_session_cookie_with_the_same_roles_and_scoping(client, make_token, sign_in):
    qa = make_token("Clinic A", "qa_manager")
    sign_in(client, qa)
    assert client.get("/api/v1/batches").status_code == 200
    assert client.get("/api/v1/audit").status_code == 403  # admins only, as with the token
    other = make_token("Clinic B", "uploader")
    created = client.post("/api/v1/batches", json={"label": "b"}, headers=bearer(other)).get_json()
    assert client.get(f"/api/v1/batches/{created['id']}").status_code == 403  # another facility


def test_cookie_authenticated_writes_need_the_csrf_token_bearer_writes_do_not(client, make_token, sign_in):
    admin = make_token("Clinic A", "admin")
    assert client.post("/api/v1/batches", json={"label": "t"}, headers=bearer(admin)).status_code == 201
    sign_in(client, admin)
    refused = client.post("/api/v1/batches", json={"label": "no token"})
    assert refused.status_code == 403 and "CSRF" in refused.get_json()["error"]["message"]
    wrong = client.post("/api/v1/batches", json={"label": "x"}, headers={"X-CSRF-Token": "forged"})
    assert wrong.status_code == 403
    token = csrf(client)
    sent = client.post("/api/v1/batches", json={"label": "ok"}, headers={"X-CSRF-Token": token})
    assert sent.status_code == 201
    # A tus upload with the cookie: creation and PATCH carry the header as well.
    tus = {"Tus-Resumable": "1.0.0", "Upload-Length": "4"}
    assert client.post("/api/v1/files", headers=tus).status_code == 403
    assert client.post("/api/v1/files", headers={**tus, "X-CSRF-Token": token}).status_code != 403


def test_logout_ends_the_session_on_the_server(app, client, make_token, sign_in):
    admin = make_token("Clinic A", "admin")
    cookie = cookie_header(sign_in(client, admin)).split(";", 1)[0]
    token = csrf(client)
    assert client.post("/logout").status_code == 403  # without the CSRF token: a hostile page
    out = client.post("/logout", data={"csrf_token": token})
    assert out.status_code == 302 and out.headers["Location"] == "/login"
    assert client.get("/dashboard").status_code == 302
    # The old cookie, replayed by whoever copied it, no longer works anywhere.
    thief = app.test_client(use_cookies=False)
    replay = thief.get("/api/v1/batches", headers={"Cookie": cookie})
    assert replay.status_code == 401 and "sign in again" in replay.get_json()["error"]["message"]
    assert thief.get("/dashboard", headers={"Cookie": cookie}).status_code == 302
    assert ("auth.logout", None) in audit_actions(client, admin)


def test_idle_and_absolute_lifetime_end_a_session_and_activity_keeps_it(app, client, make_token, sign_in,
                                                                          session):
    admin = make_token("Clinic A", "admin")
    sign_in(client, admin)
    row = session.scalar(select(UserSession))
    row.last_seen_at -= timedelta(minutes=29)
    session.commit()
    assert client.get("/api/v1/batches").status_code == 200  # activity: seen again now
    session.refresh(row)
    assert abs((utcnow() - row.last_seen_at).total_seconds()) < 30
    row.last_seen_at -= timedelta(minutes=31)
    session.commit()
    assert client.get("/api/v1/batches").status_code == 401  # idle past 30 minutes
    sign_in(client, admin)
    fresh = session.scalars(select(UserSession).order_by(UserSession.id.desc())).first()
    fresh.expires_at = fresh.created_at  # the absolute lifetime has passed, however active
    session.commit()
    assert client.get("/api/v1/batches").status_code == 401


def test_a_password_change_and_a_disabled_user_end_every_session(client, make_token, sign_in, session):
    admin = make_token("Clinic A", "admin")
    sign_in(client, admin)
    assert client.get("/dashboard").status_code == 200
    user = session.scalar(select(User).where(User.role == "admin"))
    assert passwords.set_password(session, user, "another long password") == 1
    session.commit()
    assert client.get("/dashboard").status_code == 302
    assert client.post("/login", data={"email": user.email, "password": TEST_PASSWORD}).status_code == 401
    assert client.post("/login", data={"email": user.email.upper(),
                                       "password": "another long password"}).status_code == 302
    assert client.get("/dashboard").status_code == 200
    disable_user(session, user.email)
    session.commit()
    assert client.get("/dashboard").status_code == 302
    again = client.post("/login", data={"email": user.email, "password": "another long password"})
    assert again.status_code == 401
    assert client.get("/api/v1/batches", headers=bearer(admin)).status_code == 401  # the token too


def test_sign_ins_are_audited_with_the_reason_never_the_password(client, make_token, sign_in):
    admin = make_token("Clinic A", "admin")
    sign_in(client, admin)
    client.post("/login", data={"email": "ghost@nowhere.test", "password": "whatever it is"})
    client.post("/login", data={"email": "user0@Clinic A.test", "password": "wrong password here"})
    actions = audit_actions(client, admin)
    assert actions == [("auth.login", None), ("auth.login_refused", "unknown email"),
                       ("auth.login_refused", "wrong password")]
    events = client.get("/api/v1/audit", headers=bearer(admin)).get_data(as_text=True)
    assert TEST_PASSWORD not in events and "wrong password here" not in events


def test_a_sign_in_never_bounces_to_another_site(client, make_token, sign_in):
    admin = make_token("Clinic A", "admin")
    for target in ("https://evil.test/", "//evil.test/x", "javascript:alert(1)"):
        assert sign_in(client, admin, next=target).headers["Location"] == "/dashboard"


@pytest.fixture
def proxied(settings):
    from api import create_app

    return create_app(settings.with_overrides(trusted_proxies=1)).test_client()


def test_secure_cookie_and_real_client_address_behind_one_trusted_proxy(app, proxied, make_token, sign_in,
                                                                           client):
    admin = make_token("Clinic A", "admin")
    behind = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Host": "gw.test"}
    session_user_password(app, admin)
    answer = proxied.post("/login", data={"email": "user0@Clinic A.test", "password": TEST_PASSWORD},
                          headers=behind)
    assert answer.status_code == 302
    assert "Secure" in cookie_header(answer).split("; ")
    events = client.get("/api/v1/audit", headers=bearer(admin)).get_json()["events"]
    assert [e["remote_addr"] for e in events if e["action"] == "auth.login"] == ["203.0.113.7"]


def session_user_password(app, token: str) -> None:
    from pipeline.accounts.users import user_for_token

    db = app.extensions["relaypacs"].session_factory()
    user = user_for_token(db, token)
    user.password_hash = passwords.hash_password(TEST_PASSWORD)
    db.commit()
    db.close()


def test_forwarded_headers_are_ignored_without_trusted_proxies(app, client, make_token):
    admin = make_token("Clinic A", "admin")
    session_user_password(app, admin)
    forged = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.1"}
    answer = client.post("/login", data={"email": "user0@Clinic A.test", "password": TEST_PASSWORD},
                         headers=forged)
    assert "Secure" not in cookie_header(answer).split("; ")
    events = client.get("/api/v1/audit", headers=bearer(admin)).get_json()["events"]
    assert [e["remote_addr"] for e in events if e["action"] == "auth.login"] == ["127.0.0.1"]


def test_sign_in_limit_counts_per_real_client_address_behind_the_proxy(app, proxied, make_token):
    admin = make_token("Clinic A", "admin")
    session_user_password(app, admin)
    limiter = proxied.application.extensions["relaypacs"].limiter
    limiter.limits["login"] = 2
    hold_in_one_window(limiter)
    wrong = {"email": "user0@Clinic A.test", "password": "not the password"}
    first = {"X-Forwarded-For": "203.0.113.1"}
    codes = [proxied.post("/login", data=wrong, headers=first).status_code for _ in range(3)]
    assert codes == [401, 401, 429]
    # Another client behind the same proxy (same socket address) has its own budget.
    assert proxied.post("/login", data=wrong, headers={"X-Forwarded-For": "203.0.113.2"}).status_code == 401
    # A client cannot escape its budget by forging a hop: the proxy appends the real address
    # last, and only that many (1) hops are believed.
    forged = {"X-Forwarded-For": "10.9.9.9, 203.0.113.1"}
    assert proxied.post("/login", data=wrong, headers=forged).status_code == 429


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain is another application
    {"Origin": "https://attacker.example"},
    {"Origin": "null"},  # a sandboxed frame or a data: page
])
def test_another_sites_page_cannot_sign_a_person_in_or_reset(client, make_token, sign_in, session, headers):
    # Login CSRF: a hostile page posting the attacker's email and password into /login would
    # sign the victim into the attacker's account (and what they upload would land there).
    # The form has no session yet, so the session's CSRF token cannot protect it; the browser's
    # own Sec-Fetch-Site and Origin headers can.
    admin = make_token("Clinic A", "admin")
    sign_in(client, admin)
    client.post("/logout", data={})  # cookie cleared below anyway
    client.delete_cookie("relaypacs_session")
    email = session.scalar(select(User.email).where(User.role == "admin"))
    before = session.query(UserSession).count()
    refused = client.post("/login", data={"email": email, "password": TEST_PASSWORD}, headers=headers)
    assert refused.status_code == 403
    assert "another site" in refused.get_data(as_text=True)
    assert not any(v.startswith("relaypacs_session=") for v in refused.headers.getlist("Set-Cookie"))
    session.expire_all()
    assert session.query(UserSession).count() == before
    assert client.post("/password-reset", data={"email": email}, headers=headers).status_code == 403
    assert client.post("/password-reset/new", data={"token": "x", "password": "p", "confirm": "p"},
                       headers=headers).status_code == 403


@pytest.mark.parametrize("headers", [
    {},  # not a browser (a script, the CLI): no cross-site page is involved
    {"Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "none"},  # typed or bookmarked
    {"Origin": "http://localhost"},  # the test client's own host
])
def test_this_sites_own_form_and_non_browsers_still_sign_in(client, make_token, sign_in, session, headers):
    admin = make_token("Clinic A", "admin")
    sign_in(client, admin)
    client.delete_cookie("relaypacs_session")
    email = session.scalar(select(User.email).where(User.role == "admin"))
    signed = client.post("/login", data={"email": email, "password": TEST_PASSWORD}, headers=headers)
    assert signed.status_code == 302, signed.get_data(as_text=True)
