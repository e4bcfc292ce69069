"""The conversation routes on SQLite with the Flask test client (no broker: enqueued work is
recorded): comments scoped to the report's readers, versions, recipients, notifications with
read state, consult moves (409 for illegal ones, 403 for someone else's), unsubscribe."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from config import load_settings
from pipeline.accounts.users import create_user
from pipeline.models import (
    AuditEvent,
    Batch,
    ConsultStateChange,
    Facility,
    Instance,
    MailPreference,
    RadiologyReport,
    ReaderAssignment,
    ReportComment,
    Series,
    Study,
    Upload,
    utcnow,
)
from pipeline.reports.addenda import text_sha256
from workers import chains

TEXT = "Impression: normal."


# One migrated database for the module (an upgrade costs seconds): each test uses its own rows.
@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from api import create_app
    from pipeline.db.migrate import upgrade_database

    settings = load_settings({"RELAYPACS_VAR_DIR": str(tmp_path_factory.mktemp("conversation")),
                              "RELAYPACS_BROKER_URL": "memory://"})
    upgrade_database(settings.database_url)
    return create_app(settings)


@pytest.fixture(scope="module")
def session(app):
    session = app.extensions["relaypacs"].session_factory()
    yield session
    session.close()


@pytest.fixture
def mailed(monkeypatch):
    calls: dict[str, list] = {"mail": [], "addenda": []}
    monkeypatch.setattr(chains, "enqueue_notice_mail", lambda ids: calls["mail"].append(list(ids)))
    monkeypatch.setattr(chains, "enqueue_addendum_filing", lambda a: calls["addenda"].append(a))
    return calls


@pytest.fixture(scope="module")
def world(session):
    people, tokens = {}, {}
    for name, facility, roles in [("sender", "North", ["uploader"]), ("north", "North", ["clinician"]),
                                  ("north2", "North", ["clinician"]), ("south", "South", ["clinician"]),
                                  ("reader", "Hub", ["radiologist"]), ("consultant", "Hub", ["consultant"]),
                                  ("outsider", "Hub", ["consultant"])]:
        user, token = create_user(session, f"{name}@t.test", facility, roles)
        people[name], tokens[name] = user.id, token
    north = session.scalar(select(Facility).where(Facility.name == "North"))
    south = session.scalar(select(Facility).where(Facility.name == "South"))
    for who in ("reader", "consultant"):
        session.add(ReaderAssignment(user_id=people[who], facility_id=north.id, subspecialties=["neuro"]))
    reports = {}
    for key, facility, sender in (("north", north, people["sender"]), ("south", south, people["south"])):
        batch = Batch(facility_id=facility.id, user_id=sender)
        study = Study(facility_id=facility.id, study_instance_uid=f"1.2.3.{facility.id}")
        session.add_all([batch, study])
        session.flush()
        series = Series(study_id=study.id, series_instance_uid=f"1.2.3.{facility.id}.1")
        upload = Upload(id=f"u{facility.id}", batch_id=batch.id, facility_id=facility.id, user_id=sender,
                        filename="f.dcm", length=1, expires_at=utcnow())
        session.add_all([series, upload])
        session.flush()
        session.add(Instance(facility_id=facility.id, series_id=series.id, study_id=study.id,
                             sop_instance_uid=f"1.2.3.{facility.id}.1.1", sop_class_uid="1.2", object_key="k",
                             size=1, sha256="0" * 64, batch_id=batch.id, upload_id=upload.id))
        report = RadiologyReport(facility_id=facility.id, study_id=study.id,
                                 study_instance_uid=study.study_instance_uid, source="manual",
                                 status="final", text=TEXT, text_sha256=text_sha256(TEXT))
        session.add(report)
        session.flush()
        reports[key] = report.id
    session.commit()
    return {"ids": people, "tokens": tokens, "reports": reports}


def _h(world, who):  # noqa: ANN001, ANN202
    return {"Authorization": f"Bearer {world['tokens'][who]}"}


def _unread(client, world, who):  # noqa: ANN001, ANN202
    return client.get("/api/v1/notifications?unread=1", headers=_h(world, who)).json["notifications"]


def _mode(client, world):  # noqa: ANN001, ANN202
    return client.get("/api/v1/notifications/preferences", headers=_h(world, "north")).json


def test_comments_are_scoped_versioned_and_notify_once(client, session, world, mailed):
    north, south = world["reports"]["north"], world["reports"]["south"]
    ids = world["ids"]
    made = client.post(f"/api/v1/reports/{north}/comments", headers=_h(world, "reader"),
                       json={"text": "Please correlate.", "recipients": [ids["north"], ids["north2"]]})
    assert made.status_code == 201, made.json
    comment = made.json
    assert mailed["mail"] and len(mailed["mail"][0]) == 2
    # Another facility: 404 for reading and writing; a recipient who cannot read: 400.
    assert client.get(f"/api/v1/reports/{north}/comments", headers=_h(world, "south")).status_code == 404
    assert client.post(f"/api/v1/reports/{north}/comments", headers=_h(world, "south"),
                       json={"text": "x"}).status_code == 404
    assert client.post(f"/api/v1/reports/{north}/comments", headers=_h(world, "reader"),
                       json={"text": "x", "recipients": [ids["south"]]}).status_code == 400
    assert client.get(f"/api/v1/reports/{south}/comments", headers=_h(world, "south")).json["comments"] == []
    # Bounds: 4,000 characters; uploaders are not in threads.
    assert client.post(f"/api/v1/reports/{north}/comments", headers=_h(world, "north"),
                       json={"text": "x" * 4001}).status_code == 400
    assert client.get(f"/api/v1/reports/{north}/comments", headers=_h(world, "sender")).status_code == 403

    # Bad input: 4xx, never a 500 (PostgreSQL refuses NUL; ids beyond its integers).
    for body in ({"text": "a\x00b"}, {"text": "x", "recipients": [2**40]},
                 {"text": "x", "recipients": [True]}):
        assert client.post(f"/api/v1/reports/{north}/comments", headers=_h(world, "north"),
                           json=body).status_code == 400, body
    # A NUL in the path is refused before any route (request bounds); any other key that is
    # not a comment's: 404.
    assert client.post(f"/api/v1/reports/{north}/comments/a%00b/versions", headers=_h(world, "north"),
                       json={"text": "x"}).status_code == 400
    assert client.post(f"/api/v1/reports/{north}/comments/not-a-key/versions", headers=_h(world, "north"),
                       json={"text": "x"}).status_code == 404
    assert client.post("/api/v1/notifications/read", headers=_h(world, "north"),
                       json={"ids": [2**40]}).status_code == 400
    # A correction is a new version; the old one stays; only the author corrects.
    key = comment["key"]
    assert client.post(f"/api/v1/reports/{north}/comments/{key}/versions", headers=_h(world, "north"),
                       json={"text": "not mine"}).status_code == 403
    fixed = client.post(f"/api/v1/reports/{north}/comments/{key}/versions", headers=_h(world, "reader"),
                        json={"text": "Please correlate clinically."})
    assert fixed.status_code == 201 and fixed.json["version"] == 2
    shown = client.get(f"/api/v1/reports/{north}/comments", headers=_h(world, "north")).json["comments"]
    assert [(c["text"], c["version"]) for c in shown] == [("Please correlate clinically.", 2)]
    every = client.get(f"/api/v1/reports/{north}/comments?history=1", headers=_h(world, "north")).json
    assert [c["text"] for c in every["comments"]] == ["Please correlate.", "Please correlate clinically."]
    assert session.scalar(select(ReportComment.text).where(ReportComment.id == comment["id"])) == \
        "Please correlate."
    # The report listing counts comments (not versions), in its one statement.
    listed = client.get("/api/v1/reports", headers=_h(world, "north")).json["reports"]
    assert [(r["id"], r["comment_count"]) for r in listed] == [(north, 1)]
    actions = set(session.scalars(select(AuditEvent.action)))
    assert {"comment.created", "comment.corrected"} <= actions

    # Unnamed: the thread and the senders, never the author.
    client.post(f"/api/v1/reports/{north}/comments", headers=_h(world, "north"), json={"text": "Thanks"})
    notices = client.get("/api/v1/notifications?unread=1", headers=_h(world, "reader")).json["notifications"]
    assert [n["kind"] for n in notices] == ["comment"]
    sender = client.get("/api/v1/notifications", headers=_h(world, "sender")).json["notifications"]
    assert [n["kind"] for n in sender if n["kind"] == "comment"] == ["comment"]
    # Read state: one's own only.
    mine = client.get("/api/v1/notifications?unread=1", headers=_h(world, "north")).json["notifications"]
    assert len(mine) == 1
    assert client.post("/api/v1/notifications/read", headers=_h(world, "south"),
                       json={"ids": [mine[0]["id"]]}).json == {"marked": 0}
    assert client.post("/api/v1/notifications/read", headers=_h(world, "north"),
                       json={"all": True}).json == {"marked": 1}
    assert _unread(client, world, "north") == []


def test_consult_moves_and_illegal_ones(client, session, world, mailed):
    north = world["reports"]["north"]
    ids = world["ids"]
    base = f"/api/v1/reports/{north}/consults"
    assert client.post(base, headers=_h(world, "north"), json={
        "question": "?", "consultant_id": ids["outsider"]}).status_code == 400  # not assigned here
    assert client.post(base, headers=_h(world, "north"), json={
        "question": "?", "subspecialty": "chest"}).status_code == 400  # nobody in that pool
    for body in ({"question": "a\x00", "consultant_id": ids["consultant"]},
                 {"question": "?", "consultant_id": 2**40},
                 {"question": "?", "consultant_id": ids["consultant"], "subspecialty": "neuro"},
                 {"question": "?", "consultant_id": ids["consultant"], "due_at": "2001-01-01T00:00:00Z"}):
        assert client.post(base, headers=_h(world, "north"), json=body).status_code == 400, body
    made = client.post(base, headers=_h(world, "north"),
                       json={"question": "New?", "consultant_id": ids["consultant"]})
    assert made.status_code == 201, made.json
    consult = made.json["id"]
    assert client.post(f"{base}/{consult}/start", headers=_h(world, "consultant")).status_code == 409
    assert client.post(f"{base}/{consult}/accept", headers=_h(world, "reader")).status_code == 403
    assert client.post(f"{base}/{consult}/fly", headers=_h(world, "consultant")).status_code == 404
    assert client.post(f"{base}/{consult}/accept", headers=_h(world, "consultant")).status_code == 200
    assert client.post(f"{base}/{consult}/complete", headers=_h(world, "consultant")).status_code == 400
    done = client.post(f"{base}/{consult}/complete", headers=_h(world, "consultant"),
                       json={"addendum": "Unchanged since prior."})
    assert done.status_code == 200, done.json
    assert done.json["state"] == "completed" and done.json["addendum"]["text"] == "Unchanged since prior."
    assert mailed["addenda"] == [done.json["addendum"]["id"]]
    assert client.post(f"{base}/{consult}/cancel", headers=_h(world, "north")).status_code == 409
    report = session.get(RadiologyReport, north)
    session.refresh(report)
    assert report.status == "appended" and report.text_sha256 == text_sha256(report.text) == text_sha256(TEXT)
    moves = session.scalars(select(ConsultStateChange.action).where(
        ConsultStateChange.consult_id == consult).order_by(ConsultStateChange.id)).all()
    assert moves == ["request", "accept", "complete"]
    kinds = [n["kind"] for n in client.get("/api/v1/notifications", headers=_h(world, "sender")).json[
        "notifications"]]
    assert kinds.count("report_status") == 1


def test_mail_preferences_and_unsubscribe(client, session, world):
    assert _mode(client, world) == {"mode": "each"}
    assert client.put("/api/v1/notifications/preferences", headers=_h(world, "north"),
                      json={"mode": "weekly"}).status_code == 400
    assert client.put("/api/v1/notifications/preferences", headers=_h(world, "north"),
                      json={"mode": "daily"}).json == {"mode": "daily"}
    key = session.scalar(select(MailPreference.unsubscribe_token).where(
        MailPreference.user_id == world["ids"]["north"]))
    page = client.get(f"/api/v1/notifications/unsubscribe?token={key}")
    assert page.status_code == 200 and b"<form method=post" in page.data
    assert _mode(client, world) == {"mode": "daily"}
    assert client.post("/api/v1/notifications/unsubscribe?token=nope").status_code == 404
    assert client.post(f"/api/v1/notifications/unsubscribe?token={key}").json["mode"] == "none"
    assert _mode(client, world) == {"mode": "none"}


def test_daily_digests_and_the_mail_sweep(session, world):
    from datetime import timedelta

    from pipeline.reports import notifications

    now = utcnow()
    ids, north = world["ids"], world["reports"]["north"]
    notifications.set_mode(session, ids["north2"], "daily")
    made = notifications.create(session, user_ids=[ids["north2"], ids["reader"]], facility_id=1,
                                kind="report_status", report_id=north, now=now - timedelta(minutes=5))
    session.commit()
    # Each-mode notices nobody mailed are swept (after a settling delay); daily ones are not.
    swept = notifications.unmailed_each(session, now)
    assert made[1].id in swept and made[0].id not in swept
    assert made[1].id not in notifications.unmailed_each(session, now - timedelta(minutes=5))
    assert notifications.claim_for_mail(session, made[1].id, now) is not None
    assert notifications.claim_for_mail(session, made[1].id, now) is None  # once only
    session.commit()
    assert made[1].id not in notifications.unmailed_each(session, now)
    # The digest: due once a day, with every notice not mailed yet.
    assert ids["north2"] in notifications.due_digests(session, now)
    rows = notifications.claim_digest(session, ids["north2"], now)
    assert made[0].id in [r.id for r in rows]
    session.commit()
    assert ids["north2"] not in notifications.due_digests(session, now + timedelta(hours=1))


def test_the_report_page_shows_the_thread_and_consults(app, world, sign_in):
    browser = app.test_client()
    assert sign_in(browser, world["tokens"]["north"]).status_code == 302
    page = browser.get(f"/reports/{world['reports']['north']}")
    assert page.status_code == 200, page.text
    assert "Please correlate clinically." in page.text  # the newest version of the comment
    assert "Please correlate.<" not in page.text  # not the superseded one
    assert 'id="consults"' in page.text and "New?" in page.text and "completed" in page.text
    assert 'data-events-url="/dashboard/events"' in page.text
    # Another facility's report: not found, thread and all.
    assert browser.get(f"/reports/{world['reports']['south']}").status_code == 404


def test_a_status_move_through_the_api_notifies_the_senders_and_announces_it(client, session, world, mailed):
    """POST /reports/ID/status and POST /reports (a final report) notify the study's sender
    through the outbox (notification.created) and the mail queue, with the report.status_changed."""
    from pipeline.models import Delivery, Destination, OutboxEvent

    north = session.get(RadiologyReport, world["reports"]["north"])
    pacs = Destination(name="status-move-pacs", kind="stowrs", options={"url": "http://127.0.0.1:9"})
    session.add(pacs)
    session.flush()
    instance = session.scalar(select(Instance).where(Instance.study_id == north.study_id))
    session.add(Delivery(instance_id=instance.id, destination_id=pacs.id, study_id=north.study_id,
                         batch_id=instance.batch_id, state="delivered", delivered_at=utcnow()))
    report = RadiologyReport(facility_id=north.facility_id, study_id=north.study_id,
                             study_instance_uid=north.study_instance_uid, source="manual",
                             status="final", text=TEXT, text_sha256=text_sha256(TEXT))
    session.add(report)
    session.commit()
    since = session.scalar(select(func.max(OutboxEvent.id))) or 0

    def new_events() -> list[tuple[str, dict]]:
        session.expire_all()
        return [(e.type, e.data) for e in session.scalars(
            select(OutboxEvent).where(OutboxEvent.id > since).order_by(OutboxEvent.id))]

    moved = client.post(f"/api/v1/reports/{report.id}/status", json={"status": "amended"},
                        headers=_h(world, "reader"))
    assert moved.status_code == 200, moved.json
    got = new_events()
    assert ("report.status_changed", {"report_id": report.id, "from": "final", "to": "amended"}) in [
        (t, {k: d.get(k) for k in ("report_id", "from", "to")}) for t, d in got]
    told = [d for t, d in got if t == "notification.created"]
    assert [d["user_id"] for d in told] == [world["ids"]["sender"]] and told[0]["report_id"] == report.id
    assert mailed["mail"] == [[told[0]["notification_id"]]]

    since = session.scalar(select(func.max(OutboxEvent.id)))
    created = client.post("/api/v1/reports", json={"study_id": north.study_id, "text": "Impression: clear."},
                          headers=_h(world, "reader"))
    assert created.status_code == 201, created.json
    told = [d for t, d in new_events() if t == "notification.created"]
    assert [d["user_id"] for d in told] == [world["ids"]["sender"]]
    assert mailed["mail"][-1] == [told[0]["notification_id"]]
