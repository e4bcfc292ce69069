"""/api/v1/reader-assignments: admins assign radiologists and consultants to the facilities
they serve (with subspecialties), change and end it; every change is audited; no other role
may; and what is assigned is what ``readable_facility_ids`` (the reports listing) then grants."""

from __future__ import annotations

from sqlalchemy import select

from pipeline.accounts.users import create_user, get_or_create_facility
from pipeline.models import AuditEvent
from tests.report_seed import delivered_studies, destination, reports_for


def _auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_admins_assign_change_and_end_and_the_reader_then_reads(client, session):
    admin, admin_token = create_user(session, "admin@hub.test", "Hub", "admin")
    reader, reader_token = create_user(session, "rad@hub.test", "Hub", ["radiologist"])
    clinician, clinician_token = create_user(session, "clin@north.test", "North", "clinician")
    uploader, _ = create_user(session, "up@north.test", "North", "uploader")
    north = clinician.facility_id
    (report,) = reports_for(session, delivered_studies(session, north, uploader.id,
                                                      destination(session, "p").id, 1), None)
    session.commit()
    path = f"/api/v1/reader-assignments/{reader.id}/{north}"
    assert client.get(f"/api/v1/reports/{report}", headers=_auth(reader_token)).status_code == 403

    # Only admins: a clinician, the reader themself, nobody signed in.
    for token in (clinician_token, reader_token):
        assert client.put(path, json={"subspecialties": ["neuro"]}, headers=_auth(token)).status_code == 403
        assert client.get("/api/v1/reader-assignments", headers=_auth(token)).status_code == 403
    assert client.put(path, json={}).status_code == 401

    made = client.put(path, json={"subspecialties": ["Neuro", "msk"]}, headers=_auth(admin_token))
    assert made.status_code == 201, made.json
    assert made.json["subspecialties"] == ["msk", "neuro"] and made.json["created_by"] == admin.id
    assert client.get(f"/api/v1/reports/{report}", headers=_auth(reader_token)).status_code == 200
    again = client.put(path, json={"subspecialties": ["chest"]}, headers=_auth(admin_token))
    assert again.status_code == 200 and again.json["subspecialties"] == ["chest"]
    listed = client.get(f"/api/v1/reader-assignments?user_id={reader.id}", headers=_auth(admin_token)).json
    assert [(a["facility"], a["subspecialties"]) for a in listed["assignments"]] == [("North", ["chest"])]

    assert client.delete(path, headers=_auth(clinician_token)).status_code == 403
    assert client.delete(path, headers=_auth(admin_token)).status_code == 204
    assert client.delete(path, headers=_auth(admin_token)).status_code == 404
    assert client.get(f"/api/v1/reports/{report}", headers=_auth(reader_token)).status_code == 403
    audited = [(e.action, e.user_id, e.target) for e in session.scalars(
        select(AuditEvent).where(AuditEvent.action.like("reader.%")).order_by(AuditEvent.id))]
    assert audited == [("reader.assigned", admin.id, f"user:{reader.id}")] * 2 + [
        ("reader.unassigned", admin.id, f"user:{reader.id}")]


def test_bad_assignments_are_refused(client, session):
    _, admin_token = create_user(session, "admin@hub.test", "Hub", "admin")
    clinician, _ = create_user(session, "clin@hub.test", "Hub", "clinician")
    reader, _ = create_user(session, "cons@hub.test", "Hub", ["consultant"])
    north = get_or_create_facility(session, "North")
    session.commit()
    admin = _auth(admin_token)
    # Not a reading role; the reader's own facility; unknown user or facility; bad pool names.
    assert client.put(f"/api/v1/reader-assignments/{clinician.id}/{north.id}", json={},
                      headers=admin).status_code == 400
    assert client.put(f"/api/v1/reader-assignments/{reader.id}/{reader.facility_id}", json={},
                      headers=admin).status_code == 400
    for missing in (f"999999/{north.id}", f"{reader.id}/999999"):
        assert client.put(f"/api/v1/reader-assignments/{missing}", json={}, headers=admin).status_code == 404
    for bad in (["neuro; drop"], ["x" * 41], "neuro", [""]):
        answer = client.put(f"/api/v1/reader-assignments/{reader.id}/{north.id}",
                            json={"subspecialties": bad}, headers=admin)
        assert answer.status_code == 400, bad
    assert client.put(f"/api/v1/reader-assignments/{reader.id}/{north.id}", json={"extra": 1},
                      headers=admin).status_code == 400
    assert client.get("/api/v1/reader-assignments", headers=admin).json == {"assignments": []}


def test_the_admin_page_lists_assigns_and_ends_through_the_api(client, session, sign_in):
    admin, admin_token = create_user(session, "admin@hub.test", "Hub", "admin")
    qa, qa_token = create_user(session, "qa@north.test", "North", "qa_manager")
    reader, _ = create_user(session, "rad@hub.test", "Hub", ["radiologist"])
    create_user(session, "up@hub.test", "Hub", "uploader")
    north = qa.facility_id
    session.commit()
    assert client.get("/dashboard/readers").status_code == 302  # signed out: to /login
    assert sign_in(client, qa_token).status_code == 302
    assert client.get("/dashboard/readers").status_code == 403  # a viewer, not an admin
    assert sign_in(client, admin_token, next="/dashboard/readers").status_code == 302
    page = client.get("/dashboard/readers")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert "No assignments yet." in html and f'<option value="{north}">North</option>' in html
    assert "rad@hub.test" in html and "up@hub.test" not in html  # only radiologists and consultants
    token = html.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    path = f"/api/v1/reader-assignments/{reader.id}/{north}"

    # What the page's script sends: the session cookie with its CSRF token.
    body = {"subspecialties": ["neuro"]}
    assert client.put(path, json=body).status_code == 403  # no token
    assert client.put(path, json=body, headers={"X-CSRF-Token": token}).status_code == 201
    html = client.get("/dashboard/readers").get_data(as_text=True)
    assert f'<tr data-user="{reader.id}" data-facility="{north}">' in html and "<td>neuro</td>" in html
    assert client.delete(path, headers={"X-CSRF-Token": token}).status_code == 204
    assert "No assignments yet." in client.get("/dashboard/readers").get_data(as_text=True)
    audited = [(e.action, e.user_id) for e in session.scalars(
        select(AuditEvent).where(AuditEvent.action.like("reader.%")).order_by(AuditEvent.id))]
    assert audited == [("reader.assigned", admin.id), ("reader.unassigned", admin.id)]
