"""/api/v1/reports (radiology): the listing in a constant number of SQL statements (counted
with SQLAlchemy's cursor events, 5 and 50 reports alike), facility scoping (own facility,
a reader's assigned ones, admins all), one report with its history, a radiologist's report
as text or as a PDF for a delivered study only, and status moves (409 when illegal)."""

from __future__ import annotations

import io
from contextlib import contextmanager

import pytest
from sqlalchemy import event, select

from pipeline.accounts.users import assign_reader, create_user
from pipeline.models import AuditEvent
from tests.report_samples import pdf_bytes
from tests.report_seed import delivered_studies, destination, reports_for


@contextmanager
def counted(session_factory):
    engine = session_factory.kw["bind"]
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ARG001
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


@pytest.fixture
def world(session):
    uploader, _ = create_user(session, "up@north.test", "North", "uploader")
    south_uploader, _ = create_user(session, "up@south.test", "South", "uploader")
    _, clinician = create_user(session, "clin@north.test", "North", "clinician")
    _, south_clinician = create_user(session, "clin@south.test", "South", "clinician")
    _, radiologist = create_user(session, "rad@hospital.test", "Hospital", "radiologist")
    _, admin = create_user(session, "admin@hospital.test", "Hospital", "admin")
    assign_reader(session, "rad@hospital.test", "North", ["msk"])
    pacs = destination(session, "pacs-main")
    north = delivered_studies(session, uploader.facility_id, uploader.id, pacs.id, 50)
    south = delivered_studies(session, south_uploader.facility_id, south_uploader.id, pacs.id, 3)
    session.commit()
    return {
        "north": north,
        "south": south,
        "pacs": pacs,
        "clinician": clinician,
        "south_clinician": south_clinician,
        "radiologist": radiologist,
        "admin": admin,
        "uploader_email": uploader.email,
    }


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_listing_is_a_constant_number_of_statements(app, client, session, world):
    factory = app.extensions["relaypacs"].session_factory
    reports_for(session, world["north"][:5], world["pacs"].id)
    session.commit()
    client.get("/api/v1/reports", headers=auth(world["clinician"]))  # warm the token cache
    with counted(factory) as five:
        listing = client.get("/api/v1/reports?limit=50", headers=auth(world["clinician"]))
    assert listing.status_code == 200 and len(listing.get_json()["reports"]) == 5
    reports_for(session, world["north"][5:], world["pacs"].id)
    session.commit()
    with counted(factory) as fifty:
        listing = client.get("/api/v1/reports?limit=50", headers=auth(world["clinician"]))
    rows = listing.get_json()["reports"]
    assert len(rows) == 50
    assert len(five) == len(fifty), (five, fifty)
    row = rows[0]
    assert row["uploader"]["email"] == world["uploader_email"] and row["status"] == "final"
    assert row["comment_count"] == 0 and row["consult_count"] == 0
    assert row["study"]["study_instance_uid"] == world["north"][-1].study_instance_uid


def test_facility_scoping(client, session, world):
    reports_for(session, world["north"][:2], world["pacs"].id)
    (south_report,) = reports_for(session, world["south"][:1], world["pacs"].id)
    session.commit()
    north_ids = {
        r["id"] for r in client.get("/api/v1/reports", headers=auth(world["clinician"])).get_json()["reports"]
    }
    assert len(north_ids) == 2 and south_report not in north_ids
    south_ids = {
        r["id"]
        for r in client.get("/api/v1/reports", headers=auth(world["south_clinician"])).get_json()["reports"]
    }
    assert south_ids == {south_report}
    # The radiologist reads the assigned facility (North) but not South.
    rad = {
        r["id"]
        for r in client.get("/api/v1/reports", headers=auth(world["radiologist"])).get_json()["reports"]
    }
    assert rad == north_ids
    assert (
        client.get(f"/api/v1/reports/{south_report}", headers=auth(world["radiologist"])).status_code == 403
    )
    assert client.get(f"/api/v1/reports/{south_report}", headers=auth(world["clinician"])).status_code == 403
    everything = client.get("/api/v1/reports", headers=auth(world["admin"])).get_json()["reports"]
    assert {r["id"] for r in everything} == north_ids | {south_report}
    assert client.get("/api/v1/reports?facility_id=999", headers=auth(world["clinician"])).status_code == 403
    assert client.get("/api/v1/reports/424242", headers=auth(world["admin"])).status_code == 404


def test_radiologist_writes_text_and_pdf_reports_and_moves_status(client, session, world):
    study = world["north"][0]
    body = {"study_id": study.id, "text": "Impression: normal.", "status": "preliminary"}
    assert client.post("/api/v1/reports", json=body, headers=auth(world["clinician"])).status_code == 403
    created = client.post("/api/v1/reports", json=body, headers=auth(world["radiologist"]))
    assert created.status_code == 201, created.get_json()
    report = created.get_json()
    assert report["status"] == "preliminary" and report["source"] == "manual"
    assert report["author"]["email"] == "rad@hospital.test"
    assert [h["to"] for h in report["history"]] == ["preliminary"]

    moved = client.post(
        f"/api/v1/reports/{report['id']}/status", json={"status": "final"}, headers=auth(world["radiologist"])
    )
    assert moved.status_code == 200 and moved.get_json()["status"] == "final"
    illegal = client.post(
        f"/api/v1/reports/{report['id']}/status",
        json={"status": "preliminary"},
        headers=auth(world["radiologist"]),
    )
    assert (
        illegal.status_code == 409 and "cannot become preliminary" in illegal.get_json()["error"]["message"]
    )
    shown = client.get(f"/api/v1/reports/{report['id']}", headers=auth(world["clinician"])).get_json()
    assert [(h["from"], h["to"]) for h in shown["history"]] == [
        (None, "preliminary"),
        ("preliminary", "final"),
    ]
    assert shown["text"] == "Impression: normal."

    pdf = pdf_bytes("Impression: healed fracture.")
    uploaded = client.post(
        "/api/v1/reports",
        headers=auth(world["radiologist"]),
        data={"study_id": str(study.id), "file": (io.BytesIO(pdf), "r.pdf")},
        content_type="multipart/form-data",
    )
    assert uploaded.status_code == 201, uploaded.get_json()
    assert "healed fracture" in uploaded.get_json()["text"]
    original = client.get(
        f"/api/v1/reports/{uploaded.get_json()['id']}/original", headers=auth(world["clinician"])
    )
    assert original.status_code == 200 and original.data == pdf
    actions = set(session.scalars(select(AuditEvent.action)))
    assert {"report.created", "report.status_changed", "report.original_downloaded"} <= actions


def test_bad_input_and_undelivered_or_foreign_studies(client, session, world):
    rad = auth(world["radiologist"])
    assert client.post("/api/v1/reports", json={"study_id": 1}, headers=rad).status_code == 400
    assert client.post("/api/v1/reports", data="x", headers=rad).status_code == 400
    foreign = {"study_id": world["south"][0].id, "text": "x"}
    assert client.post("/api/v1/reports", json=foreign, headers=rad).status_code == 403
    assert (
        client.post("/api/v1/reports", json={"study_id": 999999, "text": "x"}, headers=rad).status_code == 404
    )
    not_pdf = client.post(
        "/api/v1/reports",
        headers=rad,
        content_type="multipart/form-data",
        data={"study_id": str(world["north"][0].id), "file": (io.BytesIO(b"hello"), "r.pdf")},
    )
    assert not_pdf.status_code == 400 and "not a PDF" in not_pdf.get_json()["error"]["message"]


def test_report_pages_with_the_same_sign_in(client, session, world):
    from pipeline.accounts import passwords
    from pipeline.models import User

    (report_id,) = reports_for(session, world["north"][:1], world["pacs"].id)
    clinician = session.scalar(select(User).where(User.email == "clin@north.test"))
    passwords.set_password(session, clinician, "correct horse battery")
    session.commit()
    assert client.get("/reports").status_code == 302  # to /login
    form = {"email": "clin@north.test", "password": "correct horse battery"}
    assert client.post("/login", data=form).status_code == 302
    index = client.get("/reports")
    assert index.status_code == 200 and f'data-report-id="{report_id}"' in index.text
    page = client.get(f"/reports/{report_id}")
    assert page.status_code == 200 and "no acute abnormality" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    (south_id,) = reports_for(session, world["south"][:1], world["pacs"].id)
    session.commit()
    assert client.get(f"/reports/{south_id}").status_code == 404


def test_a_study_not_delivered_yet_gets_no_manual_report(client, session, world):
    from pipeline.models import Study

    study = Study(facility_id=world["north"][0].facility_id, study_instance_uid="1.2.826.0.1.99")
    session.add(study)
    session.commit()
    answer = client.post("/api/v1/reports", json={"study_id": study.id, "text": "x"},
                         headers=auth(world["radiologist"]))
    assert answer.status_code == 409 and "not been delivered" in answer.get_json()["error"]["message"]


def test_one_report_comes_with_its_thread_in_a_constant_number_of_statements(app, client, session, world):
    from pipeline.models import ReportComment, User

    factory = app.extensions["relaypacs"].session_factory
    quiet, busy = reports_for(session, world["north"][:2], world["pacs"].id)
    author = session.scalar(select(User).where(User.email == "clin@north.test"))
    for key, texts in (("a" * 32, ["first", "first, corrected"]), ("b" * 32, ["second"]),
                       ("c" * 32, ["third"])):
        for version, text in enumerate(texts, start=1):
            session.add(ReportComment(report_id=busy, facility_id=author.facility_id, thread_key=key,
                                      version=version, author_id=author.id, text=text, recipients=[]))
            session.flush()
    session.commit()
    headers = auth(world["clinician"])
    client.get(f"/api/v1/reports/{quiet}", headers=headers)  # warm the token cache
    with counted(factory) as none:
        empty = client.get(f"/api/v1/reports/{quiet}", headers=headers).get_json()
    with counted(factory) as three:
        full = client.get(f"/api/v1/reports/{busy}", headers=headers).get_json()
    assert empty["comments"] == [] and len(none) == len(three), (none, three)
    assert [c["text"] for c in full["comments"]] == ["first, corrected", "second", "third"]
    assert [c["version"] for c in full["comments"]] == [2, 1, 1]
    assert full["comments"][0]["author"] == {"id": author.id, "email": "clin@north.test"}
    assert full["comment_count"] == 3
