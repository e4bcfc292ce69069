"""An open event stream ends when what opened it stops working: ``relaypacs events`` with a
one-second recheck; a stream opened with a token ends after ``relaypacs users revoke``, one
opened with the sign-in session cookie ends after logout; both get ``auth.ended`` first, and
a stream whose credentials still work stays open. The same recheck reads the caller's
facilities again: a reader assigned to a facility meanwhile gets its events."""

from __future__ import annotations

import time

import pytest
import requests

from tests.integration.analytics_services import EventsServer, SseReader
from tests.integration.services import run_cli
from tests.integration.sign_in_client import make_person, sign_in

pytestmark = pytest.mark.integration

FACILITY = "Stream Auth Clinic"


@pytest.fixture(scope="module")
def events_server(gateway_env, it_dir):
    server = EventsServer(gateway_env, it_dir / "logs" / "events-auth.log")
    server.env["RELAYPACS_EVENTS_AUTH_RECHECK_SECONDS"] = "1"
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=5)


def test_a_revoked_token_or_an_ended_session_closes_the_open_stream(events_server, api_server, gateway_env):
    email, password, token = make_person(gateway_env, FACILITY, "qa_manager")
    _, _, other_token = make_person(gateway_env, FACILITY, "uploader")
    browser = sign_in(api_server.url, email, password)
    cookie = f"relaypacs_session={browser.cookies['relaypacs_session']}"

    by_token = SseReader(events_server.url, token)
    by_cookie = SseReader(events_server.url, None, cookie=cookie, path="/dashboard/events")
    untouched = SseReader(events_server.url, other_token)
    assert (by_token.status, by_cookie.status, untouched.status) == (200, 200, 200)
    try:
        time.sleep(1.5)  # a recheck or more while everything still works: all stay open
        assert not (by_token.ended.is_set() or by_cookie.ended.is_set() or untouched.ended.is_set())

        run_cli(["users", "revoke", "--email", email], gateway_env)
        revoked_at = time.monotonic()
        assert by_token.ended.wait(10), "the stream outlived its revoked token"
        token_seconds = time.monotonic() - revoked_at
        assert by_token.events[-1]["type"] == "auth.ended"
        assert not by_cookie.ended.is_set()  # the session is not the token

        page = browser.get(f"{api_server.url}/dashboard", timeout=10).text
        csrf = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
        assert browser.post(f"{api_server.url}/logout", data={"csrf_token": csrf},
                            allow_redirects=False, timeout=10).status_code == 302
        logged_out_at = time.monotonic()
        assert by_cookie.ended.wait(10), "the stream outlived its session"
        session_seconds = time.monotonic() - logged_out_at
        assert by_cookie.events[-1]["type"] == "auth.ended"
        print(f"stream closed {token_seconds:.2f} s after revoke, {session_seconds:.2f} s after logout"
              " (recheck every 1 s)")
        assert token_seconds < 3 and session_seconds < 3
        assert not untouched.ended.is_set()
        # Reconnecting with what ended is refused.
        assert SseReader(events_server.url, token).status == 401
        assert SseReader(events_server.url, None, cookie=cookie).status == 401
    finally:
        for reader in (by_token, by_cookie, untouched):
            reader.close()


def test_an_assignment_made_while_the_stream_is_open_reaches_it_at_the_next_recheck(
        events_server, api_server, gateway_env):
    """A consultant's open stream starts carrying a facility's events once an admin assigns
    them to it (PUT /api/v1/reader-assignments), within a recheck (1 s here)."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from pipeline.accounts.users import create_user
    from tests.integration.gateway_client import Gateway

    served = f"{FACILITY} Served"
    engine = create_engine(gateway_env["RELAYPACS_DATABASE_URL"])
    try:
        with Session(engine) as session:
            _, admin = create_user(session, f"admin-{time.time_ns()}@stream.test", FACILITY, ["admin"])
            reader, reader_token = create_user(session, f"cons-{time.time_ns()}@stream.test", FACILITY,
                                               ["consultant"])
            sender, sender_token = create_user(session, f"up-{time.time_ns()}@stream.test", served,
                                               ["uploader"])
            reader_id, served_id = reader.id, sender.facility_id
            session.commit()
    finally:
        engine.dispose()
    stream = SseReader(events_server.url, reader_token)
    try:
        gateway = Gateway(api_server.url, sender_token)
        gateway.create(gateway.open_batch(label="before"), 10, "a.dcm")
        time.sleep(1.5)  # past a recheck: still not assigned, nothing of the served facility
        assert not [e for e in stream.events if e.get("facility_id") == served_id]
        assigned = requests.put(f"{api_server.url}/api/v1/reader-assignments/{reader_id}/{served_id}",
                                json={"subspecialties": ["neuro"]}, timeout=10,
                                headers={"Authorization": f"Bearer {admin}"})
        assert assigned.status_code == 201, assigned.text
        time.sleep(1.5)  # the next recheck reads the new assignment
        gateway.create(gateway.open_batch(label="after"), 10, "b.dcm")
        stream.wait_for(lambda e: e.get("facility_id") == served_id, "the served facility's event", 15)
    finally:
        stream.close()
