"""Comments, notifications and consults on radiology reports, on the real stack: the API,
``relaypacs events`` (SSE), a worker on intake/dicom/pacs and one on exports (the mail
pool) against PostgreSQL, Redis, moto_server, Orthanc and an aiosmtpd server.

- comments of two facilities never cross (API, notifications, event stream);
- the author gets no mail and each recipient exactly one, with a link and no patient data;
- an event stream that reconnects with Last-Event-ID gets each comment exactly once;
- a consult runs its states (illegal moves 409), its answer is an addendum: the report is
  appended with its text unchanged, and the addendum PDF reaches Orthanc in the study as an
  Encapsulated PDF; the sending clinician is notified; an overdue consult goes back to the pool.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests
from celery import Celery
from pydicom import dcmread
from pypdf import PdfReader
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from pipeline.accounts.users import create_user
from pipeline.models import Facility, RadiologyReport, ReaderAssignment, Study
from pipeline.reports import ADDENDUM_UID_PREFIX
from pipeline.reports.addenda import ENCAPSULATED_PDF_STORAGE, text_sha256
from tests.integration.analytics_services import SseReader
from tests.integration.gateway_client import Gateway
from tests.integration.services import poll_for
from tests.integration.test_live_events import events_server  # noqa: F401 - fixture
from tests.integration.test_scheduled_exports import mailbox  # noqa: F401 - fixture
from tests.sample_data import synthetic_study

pytestmark = pytest.mark.integration
NORTH, SOUTH = "Conversation North", "Conversation South"
REPORT_TEXT = "Findings: no acute abnormality. Impression: normal study."
PUBLIC_URL = "https://gateway.conversation.test"


@pytest.fixture(scope="module")
def mail_worker(mailbox, worker_fleet) -> Iterator[None]:  # noqa: F811 - fixture
    """A worker on the exports queue (the mail pool), mailing through the test SMTP server."""
    _, port = mailbox
    saved = dict(worker_fleet.env)
    worker_fleet.env["RELAYPACS_SMTP_URL"] = f"smtp://127.0.0.1:{port}"
    worker_fleet.env["RELAYPACS_PUBLIC_URL"] = PUBLIC_URL
    started = worker_fleet.start("exports", 2, ())
    try:
        yield
    finally:
        started.stop(grace=10)
        worker_fleet.env.clear()
        worker_fleet.env.update(saved)


class People:
    """The cast, made with the same function as ``relaypacs users create`` (in-process: eight
    CLI starts would cost this module most of its time on a loaded machine)."""

    def __init__(self, engine) -> None:  # noqa: ANN001
        suffix = f"{time.time_ns() % 10**8}"
        self.emails: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        self.ids: dict[str, int] = {}
        with Session(engine) as session:
            for name, facility, role in [
                ("sender", NORTH, "uploader"), ("north_a", NORTH, "clinician"),
                ("north_b", NORTH, "clinician"), ("south", SOUTH, "clinician"),
                ("south_sender", SOUTH, "uploader"), ("radiologist", NORTH, "radiologist"),
                ("consultant", NORTH, "consultant"), ("pool_consultant", SOUTH, "consultant"),
            ]:
                self.emails[name] = f"{name}-{suffix}@conversation.test"
                user, self.tokens[name] = create_user(session, self.emails[name], facility, [role])
                self.ids[name] = user.id
            session.commit()

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}


def _deliver(api_url: str, token: str) -> str:
    gateway = Gateway(api_url, token)
    batch_id = gateway.open_batch(label="conversation")
    for i, data in enumerate(synthetic_study(2)):
        gateway.upload(batch_id, data, f"c{i}.dcm")
    gateway.complete(batch_id)
    return gateway.wait_state(batch_id, "done")["studies"][0]["study_instance_uid"]


@pytest.fixture(scope="module")
def world(api_server, worker_fleet, add_stow_destination, orthanc, gateway_env):  # noqa: ANN201
    worker_fleet.default()
    engine = create_engine(gateway_env["RELAYPACS_DATABASE_URL"])
    add_stow_destination("orthanc-conversation-north", facility=NORTH)
    add_stow_destination("orthanc-conversation-south", facility=SOUTH)
    people = People(engine)
    north_study = _deliver(api_server.url, people.tokens["sender"])
    south_study = _deliver(api_server.url, people.tokens["south_sender"])
    with Session(engine) as session:
        facilities = {f.name: f.id for f in session.scalars(select(Facility).where(
            Facility.name.in_([NORTH, SOUTH])))}
        reports = {}
        for name, study_uid in (("north", north_study), ("south", south_study)):
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
            report = RadiologyReport(facility_id=study.facility_id, study_id=study.id,
                                     study_instance_uid=study.study_instance_uid, source="manual",
                                     status="final", text=REPORT_TEXT,
                                     text_sha256=text_sha256(REPORT_TEXT))
            session.add(report)
            session.flush()
            reports[name] = report.id
        for who in ("radiologist", "consultant"):
            session.add(ReaderAssignment(user_id=people.ids[who], facility_id=facilities[NORTH],
                                         subspecialties=["neuro"]))
        # A consultant of another facility who serves the north's neuro pool too.
        session.add(ReaderAssignment(user_id=people.ids["pool_consultant"],
                                     facility_id=facilities[NORTH], subspecialties=["neuro"]))
        session.commit()
    yield {"people": people, "reports": reports, "engine": engine, "url": api_server.url,
           "facilities": facilities}
    engine.dispose()


def _post(world, who: str, path: str, body: dict | None = None) -> requests.Response:  # noqa: ANN001
    return requests.post(f"{world['url']}{path}", json=body or {}, timeout=10,
                         headers=world["people"].headers(who))


def _get(world, who: str, path: str) -> requests.Response:  # noqa: ANN001
    return requests.get(f"{world['url']}{path}", timeout=10, headers=world["people"].headers(who))


def _mails_to(box, address: str) -> list:  # noqa: ANN001
    return [m for m in box.messages if address in str(m["To"])]


def test_comments_stay_in_their_facility_and_mail_each_recipient_once(
        world, mailbox, mail_worker, events_server):  # noqa: F811 - fixtures
    box, _ = mailbox
    people, north, south = world["people"], world["reports"]["north"], world["reports"]["south"]
    south_stream = SseReader(events_server.url, people.tokens["south"])
    try:
        made = _post(world, "radiologist", f"/api/v1/reports/{north}/comments",
                     {"text": "Please correlate with the clinical history.",
                      "recipients": [people.ids["north_a"], people.ids["north_b"]]})
        assert made.status_code == 201, made.text
        # A recipient who cannot read the report is refused.
        refused = _post(world, "radiologist", f"/api/v1/reports/{north}/comments",
                        {"text": "x", "recipients": [people.ids["south"]]})
        assert refused.status_code == 400
        south_comment = _post(world, "south", f"/api/v1/reports/{south}/comments",
                              {"text": "South only."})
        assert south_comment.status_code == 201

        # Never across facilities: the other facility's thread is not found, and its own
        # thread holds only its own comment.
        assert _get(world, "south", f"/api/v1/reports/{north}/comments").status_code == 404
        assert _post(world, "south", f"/api/v1/reports/{north}/comments",
                     {"text": "x"}).status_code == 404
        own = _get(world, "south", f"/api/v1/reports/{south}/comments").json()["comments"]
        assert [c["text"] for c in own] == ["South only."]
        north_thread = _get(world, "north_a", f"/api/v1/reports/{north}/comments").json()["comments"]
        assert [c["text"] for c in north_thread] == ["Please correlate with the clinical history."]

        # Each recipient exactly one mail, the author none; a link, no patient data, and an
        # unsubscribe link.
        for who in ("north_a", "north_b"):
            poll_for(lambda who=who: _mails_to(box, people.emails[who]), f"mail to {who}")
        time.sleep(2)  # a second mail, if one were coming, would be here by now
        for who in ("north_a", "north_b"):
            mails = _mails_to(box, people.emails[who])
            assert len(mails) == 1
            body = mails[0].get_payload(decode=True).decode()
            assert f"{PUBLIC_URL}/reports/{north}" in body
            assert "correlate" not in body and "Doe" not in body
            unsubscribe = f"<{PUBLIC_URL}/api/v1/notifications/unsubscribe?token="
            assert mails[0]["List-Unsubscribe"].startswith(unsubscribe)
        assert _mails_to(box, people.emails["radiologist"]) == []

        # Notifications with read state, each user's own.
        unread = _get(world, "north_a", "/api/v1/notifications?unread=1").json()["notifications"]
        assert [(n["kind"], n["report_id"]) for n in unread] == [("comment", north)]
        other = _post(world, "south", "/api/v1/notifications/read", {"ids": [unread[0]["id"]]})
        assert other.json() == {"marked": 0}
        assert _post(world, "north_a", "/api/v1/notifications/read",
                     {"ids": [unread[0]["id"]]}).json() == {"marked": 1}
        assert _get(world, "north_a", "/api/v1/notifications?unread=1").json()["notifications"] == []

        # The other facility's stream saw its own comment and nothing of the north's.
        south_stream.wait_for(lambda e: e["type"] == "comment.created", "south's own comment")
        north_facility = world["facilities"][NORTH]
        assert not [e for e in south_stream.events if e.get("facility_id") == north_facility]
    finally:
        south_stream.close()


def test_a_reconnecting_stream_gets_each_comment_once(world, events_server):  # noqa: F811
    people, north = world["people"], world["reports"]["north"]
    mine = lambda e: e["type"] == "comment.created" and e.get("report_id") == north  # noqa: E731
    first = SseReader(events_server.url, people.tokens["north_a"])
    try:
        posted = [_post(world, "north_b", f"/api/v1/reports/{north}/comments", {"text": "one"})]
        first.wait_for(lambda e: mine(e) and e["comment_id"] == posted[0].json()["id"], "comment one")
        last_id = first.events[-1]["id"]
    finally:
        first.close()
    for text in ("two", "three"):
        posted.append(_post(world, "north_b", f"/api/v1/reports/{north}/comments", {"text": text}))
    again = SseReader(events_server.url, people.tokens["north_a"], last_event_id=last_id)
    try:
        wanted = {p.json()["id"] for p in posted[1:]}
        again.wait_for(lambda e: mine(e) and e["comment_id"] == max(wanted), "comment three")
        time.sleep(1)
        seen = [e["comment_id"] for e in again.events if mine(e)]
        assert sorted(seen) == sorted(wanted)  # each once, and the one before the cut not again
    finally:
        again.close()


def test_an_assigned_reader_gets_the_served_facility_s_events_live_and_on_replay(world, events_server):  # noqa: F811
    """A consultant of South who serves North (a reader assignment) is told of North's
    comments on the stream as they happen and when resuming with Last-Event-ID."""
    people, north = world["people"], world["reports"]["north"]
    mine = lambda e: e["type"] == "comment.created" and e.get("report_id") == north  # noqa: E731
    live = SseReader(events_server.url, people.tokens["pool_consultant"])
    try:
        first = _post(world, "north_b", f"/api/v1/reports/{north}/comments", {"text": "for the hub"})
        live.wait_for(lambda e: mine(e) and e["comment_id"] == first.json()["id"], "north's comment, live",
                      timeout=15)
        last_id = live.events[-1]["id"]
    finally:
        live.close()
    second = _post(world, "north_b", f"/api/v1/reports/{north}/comments", {"text": "while away"})
    again = SseReader(events_server.url, people.tokens["pool_consultant"], last_event_id=last_id)
    try:
        again.wait_for(lambda e: mine(e) and e["comment_id"] == second.json()["id"],
                       "north's comment, replayed", timeout=15)
    finally:
        again.close()


def test_a_consult_runs_its_states_and_its_addendum_reaches_orthanc(world, mail_worker, orthanc):
    people, north = world["people"], world["reports"]["north"]
    base = f"/api/v1/reports/{north}/consults"
    with Session(world["engine"]) as session:
        before = text_sha256(session.get(RadiologyReport, north).text)
    asked = _post(world, "north_a", base, {"question": "Is the lesion new?",
                                          "consultant_id": people.ids["consultant"]})
    assert asked.status_code == 201, asked.text
    consult = asked.json()["id"]
    # Illegal moves: 409; not the consultant's move: 403.
    assert _post(world, "consultant", f"{base}/{consult}/complete",
                 {"addendum": "too early"}).status_code == 409
    assert _post(world, "north_b", f"{base}/{consult}/accept").status_code == 403
    for action in ("accept", "start"):
        moved = _post(world, "consultant", f"{base}/{consult}/{action}")
        assert moved.status_code == 200, moved.text
    addendum = "Consult: the lesion is unchanged since the prior study."
    done = _post(world, "consultant", f"{base}/{consult}/complete", {"addendum": addendum})
    assert done.status_code == 200, done.text
    assert [h["to"] for h in done.json()["history"]] == ["requested", "accepted", "in-progress", "completed"]
    assert _post(world, "north_a", f"{base}/{consult}/cancel").status_code == 409

    with Session(world["engine"]) as session:
        report = session.get(RadiologyReport, north)
        assert report.status == "appended"
        assert text_sha256(report.text) == before
        study = session.get(Study, report.study_id)
        study_uid = study.study_instance_uid
    sop_uid = poll_for(lambda: _get(world, "north_a", base).json()["consults"][0]
                       .get("addendum", {}).get("sop_instance_uid"), "the addendum instance")
    assert sop_uid.startswith(ADDENDUM_UID_PREFIX)
    poll_for(lambda: orthanc.instance_id(sop_uid), "the addendum in Orthanc", timeout=90)
    ds = dcmread(io.BytesIO(orthanc.instance_bytes(sop_uid)))
    assert ds.SOPClassUID == ENCAPSULATED_PDF_STORAGE and ds.StudyInstanceUID == study_uid
    pdf = bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)]
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)
    assert REPORT_TEXT in text.replace("\n", " ") and addendum in text.replace("\n", " ")
    # The sender of the study hears that the report was appended.
    sender = _get(world, "sender", "/api/v1/notifications?unread=1").json()["notifications"]
    assert ("report_status", north) in [(n["kind"], n["report_id"]) for n in sender]


def test_an_overdue_consult_goes_back_to_the_pool(world, gateway_env, mail_worker):
    north = world["reports"]["north"]
    base = f"/api/v1/reports/{north}/consults"
    due = datetime.now(UTC) + timedelta(hours=3)
    asked = _post(world, "north_a", base, {"question": "Second opinion?", "subspecialty": "neuro",
                                          "due_at": due.isoformat()})
    assert asked.status_code == 201, asked.text
    consult = asked.json()["id"]
    assert _post(world, "consultant", f"{base}/{consult}/accept").status_code == 200
    app = Celery(broker=gateway_env["RELAYPACS_BROKER_URL"])
    app.send_task("consults.check_due", kwargs={"now": (due + timedelta(minutes=1)).isoformat()},
                  queue="exports")

    def reoffered() -> dict | None:
        found = [c for c in _get(world, "north_a", base).json()["consults"] if c["id"] == consult]
        return found[0] if found and found[0]["reoffers"] == 1 else None

    row = poll_for(reoffered, "the re-offer")
    assert row["state"] == "requested" and row["consultant_id"] is None
    assert [h["action"] for h in row["history"]] == ["request", "accept", "reoffer"]
    assert row["history"][-1]["actor_id"] is None
    pool = _get(world, "pool_consultant", "/api/v1/notifications?unread=1").json()["notifications"]
    assert [n["consult_id"] for n in pool].count(consult) == 2  # asked, then offered again
