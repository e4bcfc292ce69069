"""The teaching pages on the dashboard's sign-in: search with facets, a case (unknown mode
hides the diagnosis), the quiz; signed-out people go to /login, other roles get 403."""

from __future__ import annotations

from pipeline.teaching import preparation
from tests import teaching_seed


def test_search_case_and_quiz_pages(app, client, session, sign_in, make_token):
    store = app.extensions["relaypacs"].store
    publisher = teaching_seed.user(session, "Clinic B", "teaching_publisher")
    study = teaching_seed.delivered_study(session, store, facility_id=publisher.facility_id,
                                          user_id=publisher.id, ct_count=2)
    session.commit()
    added = client.post("/api/v1/teaching/cases", headers=publisher.headers, json={
        "study_id": study.study_id, "title": "Sarcoidosis", "diagnosis": "Stage II sarcoidosis",
        "findings": "bilateral hilar lymphadenopathy", "modality": "CT", "body_part": "chest"})
    case_id = added.json["id"]
    with app.extensions["relaypacs"].session_factory() as s:
        preparation.prepare_case(s, store, case_id, secret=b"pages", uid_root="2.25", checkpoint=s.commit)
    client.post(f"/api/v1/teaching/cases/{case_id}/publish", headers=publisher.headers)

    assert client.get("/teaching/").status_code == 302  # not signed in: to /login
    resident = app.test_client()
    assert sign_in(resident, make_token("Clinic A", "teaching")).status_code == 302
    page = resident.get("/teaching/?q=hilar").get_data(as_text=True)
    assert "Sarcoidosis" in page and "Stage II sarcoidosis" in page and "CHEST" in page
    assert f"/api/v1/teaching/cases/{case_id}/key-image" in page
    assert resident.get(f"/api/v1/teaching/cases/{case_id}/key-image").status_code == 200
    hidden = resident.get(f"/teaching/cases/{case_id}?unknown=1").get_data(as_text=True)
    assert "bilateral hilar" in hidden and "Stage II sarcoidosis" not in hidden
    shown = resident.get(f"/teaching/cases/{case_id}").get_data(as_text=True)
    assert 'id="diagnosis">Stage II sarcoidosis' in shown
    quiz = resident.get("/teaching/quiz").get_data(as_text=True)
    assert "<details>" in quiz and "Stage II sarcoidosis" in quiz.split("<details>")[1]
    assert "Stage II sarcoidosis" not in quiz.split("<details>")[0]

    uploader = app.test_client()
    sign_in(uploader, make_token("Clinic A", "uploader"))
    assert uploader.get("/teaching/").status_code == 403
