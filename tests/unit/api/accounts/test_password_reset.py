"""Password reset by a mailed one-time link: the request always answers 202 the same way
(no account existence leak), the mail (a real SMTP server on loopback) carries a link to the
configured public URL with a token stored only hashed, the link works once and expires,
using it ends the user's sessions, and every step is audited."""

from __future__ import annotations

import hashlib
import re
import socket
import time
from datetime import timedelta
from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from pipeline.models import PasswordReset, User
from tests.unit.conftest import TEST_PASSWORD


class Mailbox:
    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001, N802
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


@pytest.fixture
def mailbox():
    box = Mailbox()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture
def mail_app(settings, mailbox):
    from api import create_app
    from pipeline.db.migrate import upgrade_database

    upgrade_database(settings.database_url)
    return create_app(settings.with_overrides(smtp_url=f"smtp://127.0.0.1:{mailbox[1]}",
                                              public_url="https://gateway.example",
                                              mail_from="gateway@hospital.example"))


def wait_for_mail(box: Mailbox, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(box.messages) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(box.messages) == count


def test_a_reset_link_sets_a_new_password_once(mail_app, mailbox, settings):
    from pipeline.accounts.users import create_user

    box, _ = mailbox
    client = mail_app.test_client()
    db = mail_app.extensions["relaypacs"].session_factory()
    user, token = create_user(db, "qa@clinic.test", "Clinic A", "qa_manager")
    db.commit()
    no_password_yet = client.post("/login", data={"email": "qa@clinic.test", "password": TEST_PASSWORD})
    assert no_password_yet.status_code == 401

    known = client.post("/api/v1/auth/password-reset", json={"email": "QA@clinic.test"})
    unknown = client.post("/api/v1/auth/password-reset", json={"email": "nobody@clinic.test"})
    assert known.status_code == unknown.status_code == 202
    assert known.get_json() == unknown.get_json()
    wait_for_mail(box, 1)
    time.sleep(0.3)
    assert len(box.messages) == 1  # nothing for the unknown address
    message = box.messages[0]
    assert message["To"] == "qa@clinic.test" and message["From"] == "gateway@hospital.example"
    body = message.get_content()
    link = re.search(r"https://gateway\.example/password-reset/new\?token=([A-Za-z0-9_\-]+)", body)
    assert link is not None
    raw = link.group(1)
    stored = db.scalars(select(PasswordReset.token_hash)).all()
    assert stored == [hashlib.sha256(raw.encode()).hexdigest()] and raw not in stored

    page = client.get(f"/password-reset/new?token={raw}")
    assert page.status_code == 200 and page.headers["Referrer-Policy"] == "no-referrer"
    short = client.post("/password-reset/new", data={"token": raw, "password": "short", "confirm": "short"})
    assert short.status_code == 400 and b"at least 10" in short.data
    done = client.post("/password-reset/new", data={"token": raw, "password": "a brand new secret",
                                                   "confirm": "a brand new secret"})
    assert done.status_code == 302 and done.headers["Location"].startswith("/login")
    again = client.post("/password-reset/new", data={"token": raw, "password": "yet another secret",
                                                    "confirm": "yet another secret"})
    assert again.status_code == 400  # once only
    assert client.get(f"/password-reset/new?token={raw}").status_code == 400
    assert client.post("/login", data={"email": "qa@clinic.test",
                                       "password": "a brand new secret"}).status_code == 302

    admin = create_user(db, "admin@hq.test", "HQ", "admin")[1]
    db.commit()
    audit = client.get("/api/v1/audit", headers={"Authorization": f"Bearer {admin}"})
    events = audit.get_json()["events"]
    actions = [(e["action"], e["user_id"] == user.id, (e["detail"] or {}).get("mailed"))
               for e in reversed(events) if e["action"].startswith("auth.")]
    assert actions == [
        ("auth.login_refused", True, None),
        ("auth.password_reset_requested", True, True),
        ("auth.password_reset_requested", False, False),
        ("auth.password_reset_used", True, None),
        ("auth.password_reset_refused", False, None),
        ("auth.login", True, None),
    ]
    assert raw not in repr(events)
    db.close()


def test_an_expired_link_is_refused_and_using_one_ends_the_sessions(mail_app, mailbox, sign_in):
    from pipeline.accounts import password_reset
    from pipeline.accounts.users import create_user

    client = mail_app.test_client()
    db = mail_app.extensions["relaypacs"].session_factory()
    _, token = create_user(db, "admin@clinic.test", "Clinic A", "admin")
    db.commit()
    sign_in(client, token)
    assert client.get("/dashboard").status_code == 200
    _, expired = password_reset.issue_reset(db, "admin@clinic.test", ttl_seconds=60)
    db.scalar(select(PasswordReset)).expires_at -= timedelta(minutes=2)
    _, fresh = password_reset.issue_reset(db, "admin@clinic.test", ttl_seconds=60)
    db.commit()
    form = {"password": "a brand new secret", "confirm": "a brand new secret"}
    assert client.post("/password-reset/new", data={"token": expired, **form}).status_code == 400
    assert client.post("/password-reset/new", data={"token": fresh, **form}).status_code == 302
    assert client.get("/dashboard").status_code == 302  # the session ended with the reset
    assert db.scalar(select(User.password_changed_at)) is not None
    db.close()


def test_the_reset_request_answers_202_even_without_mail_settings(client, make_token):
    make_token("Clinic A", "admin")
    answer = client.post("/api/v1/auth/password-reset", json={"email": "user0@Clinic A.test"})
    assert answer.status_code == 202
    assert client.post("/api/v1/auth/password-reset", json={"mail": "x"}).status_code == 400
