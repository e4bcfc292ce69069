"""/api/v1/graphql: the dashboard in one request and a constant number of SQL statements
whatever the page size; facility scoping (another facility's id answers like a missing one);
the limits (1,000 aliases, circular fragments, depth, body size) answer GraphQL errors, never
a 500; introspection off by default; the REST authentication (token, or session + CSRF)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import event

from pipeline.accounts.users import user_for_token
from pipeline.models import (
    Batch,
    ConsultRequest,
    Delivery,
    Destination,
    Instance,
    Notification,
    RadiologyReport,
    ReportComment,
    Series,
    Study,
    Upload,
    utcnow,
)

DASHBOARD = """
query Dashboard($n: Int!) {
  dashboard(limit: $n) {
    unread_notifications notifications(limit: $n) { id kind report_id read_at }
    user { id email role facility { id name } }
    uploads { id state offset length batch { id label state }
              study { id study_instance_uid modality delivery_status { destination state count }
                      reports { id status source original_url comments { id version } consults { state } } } }
    batches { id state studies { id modality delivery_status { destination state count }
                                 deliveries(limit: 3) { destination state attempts } } }
  }
}"""


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def seed(session, token: str, files: int) -> dict:  # noqa: ANN001
    """A batch per 10 files; each file parsed into its own study, delivered to one PACS."""
    user = user_for_token(session, token)
    destination = Destination(name=f"pacs-{uuid.uuid4().hex[:6]}", kind="stow", options={})
    session.add(destination)
    session.flush()
    made = {"batches": [], "studies": []}
    batch = None
    for n in range(files):
        if n % 10 == 0:
            batch = Batch(facility_id=user.facility_id, user_id=user.id, label=f"b{n}")
            session.add(batch)
            session.flush()
            made["batches"].append(batch.id)
        upload = Upload(id=uuid.uuid4().hex, batch_id=batch.id, facility_id=user.facility_id, user_id=user.id,
                        filename=f"DOE^JOHN-{n}.dcm", length=10, offset=10, state="parsed",
                        expires_at=utcnow() + timedelta(days=1))
        study = Study(facility_id=user.facility_id, study_instance_uid=f"1.2.3.{n}", modality="CT")
        session.add_all([upload, study])
        session.flush()
        series = Series(study_id=study.id, series_instance_uid=f"1.2.3.{n}.1")
        session.add(series)
        session.flush()
        instance = Instance(facility_id=user.facility_id, series_id=series.id, study_id=study.id,
                            sop_instance_uid=f"1.2.3.{n}.1.1", sop_class_uid="1.2", object_key=f"k{n}",
                            size=10, sha256="0" * 64, batch_id=batch.id, upload_id=upload.id)
        session.add(instance)
        session.flush()
        session.add(Delivery(instance_id=instance.id, destination_id=destination.id, study_id=study.id,
                             batch_id=batch.id, state="delivered", attempts=1))
        report = RadiologyReport(facility_id=user.facility_id, study_id=study.id, source="manual",
                                 study_instance_uid=study.study_instance_uid, status="final",
                                 text="DOE^JOHN: no acute findings", text_sha256="0" * 64)
        session.add(report)
        session.flush()
        session.add_all([
            ReportComment(report_id=report.id, facility_id=user.facility_id, thread_key=f"t{n}", version=1,
                          author_id=user.id, text="DOE^JOHN again", recipients=[]),
            ConsultRequest(report_id=report.id, facility_id=user.facility_id, requester_id=user.id,
                           question="DOE^JOHN?", state="requested", due_at=utcnow() + timedelta(days=1)),
            Notification(user_id=user.id, facility_id=user.facility_id, kind="comment", report_id=report.id),
        ])
        made["studies"].append(study.id)
    session.commit()
    return made


@pytest.fixture
def count_statements(app):
    engine = app.extensions["relaypacs"].session_factory.kw["bind"]
    seen: list[str] = []

    def record(conn, cursor, statement, *args):  # noqa: ANN001, ANN002
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def ask(client, token: str, query: str, **variables):  # noqa: ANN001, ANN201
    return client.post("/api/v1/graphql", json={"query": query, "variables": variables or None},
                       headers=bearer(token))


def test_the_dashboard_in_one_request_and_constant_statements(client, session, make_token, count_statements):
    token = make_token("GraphQL A")
    seed(session, token, 60)
    counts = {}
    assert ask(client, token, DASHBOARD, n=1).status_code == 200  # first request: schema check, caches
    for n in (5, 50):
        count_statements.clear()
        answer = ask(client, token, DASHBOARD, n=n)
        assert answer.status_code == 200, answer.get_json()
        body = answer.get_json()
        assert "errors" not in body
        dash = body["data"]["dashboard"]
        assert len(dash["uploads"]) == n and len(dash["batches"]) == min(n, 6)
        assert all([(r["status"], r["original_url"]) for r in u["study"]["reports"]] == [("final", None)]
                   for u in dash["uploads"])
        assert dash["unread_notifications"] == 60 and len(dash["notifications"]) == n
        assert all(len(u["study"]["reports"][0]["comments"]) == 1 for u in dash["uploads"])
        assert all(u["study"]["reports"][0]["consults"] == [{"state": "requested"}] for u in dash["uploads"])
        statuses = [u["study"]["delivery_status"] for u in dash["uploads"]]
        assert all([(s["state"], s["count"]) for s in status] == [("delivered", 1)] for status in statuses)
        counts[n] = len(count_statements)
    assert counts[5] == counts[50], (counts, count_statements)
    assert counts[50] <= 14  # auth, two lists, the notices and their count, one statement per relation
    assert "DOE" not in answer.get_data(as_text=True)  # no file names, no report text (names in both)


def test_another_facilitys_ids_answer_like_missing_ones(client, session, make_token):
    mine, theirs = make_token("GraphQL Own"), make_token("GraphQL Other")
    other = seed(session, theirs, 3)
    foreign, missing = other["batches"][0], 10_000_000
    answers = [ask(client, mine, "query($id: Int!) { batch(id: $id) { id label } }", id=i).get_json()
               for i in (foreign, missing)]
    for answer, batch_id in zip(answers, (foreign, missing), strict=True):
        assert answer["data"] == {"batch": None}
        assert answer["errors"][0]["message"] == f"batch {batch_id} not found"
        assert answer["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    study = ask(client, mine, "query($id: Int!) { study(id: $id) { id } }", id=other["studies"][0]).get_json()
    assert study["data"] == {"study": None} and study["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert ask(client, mine, "{ batches(limit: 50) { id } }").get_json()["data"]["batches"] == []
    admin = make_token("GraphQL Admin", role="admin")
    seen = ask(client, admin, "query($id: Int!) { batch(id: $id) { id } }", id=foreign).get_json()
    assert seen["data"] == {"batch": {"id": foreign}}


@pytest.mark.parametrize("query, needle", [
    ("{ " + " ".join(f"a{n}: me {{ id }}" for n in range(1000)) + " }", ""),
    ("{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }", "fragment"),
    ("{ dashboard { uploads { batch { uploads { batch { uploads { batch { uploads { batch { uploads "
     "{ id } } } } } } } } } } }", "depth"),
    ("{ __schema { types { name } } }", "introspection"),
    ("{ me { id ", "Syntax"),
    ("mutation { me }", ""),
])
def test_refused_queries_answer_graphql_errors_never_500(client, make_token, query, needle):
    token = make_token("GraphQL Limits")
    answer = ask(client, token, query)
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    body = answer.get_json()
    assert body["data"] is None and body["errors"]
    assert needle.lower() in " ".join(e["message"] for e in body["errors"]).lower()


def test_body_bound_and_authentication(client, make_token, sign_in):
    token = make_token("GraphQL Auth")
    big = client.post("/api/v1/graphql", json={"query": "{ me { id } }", "variables": {"x": "y" * 70_000}},
                      headers=bearer(token))
    assert big.status_code == 413 and "error" in big.get_json()
    assert client.post("/api/v1/graphql", json={"query": "{ me { id } }"}).status_code == 401
    assert ask(client, token, "{ me { email facility { name } } }").get_json()["data"]["me"]["facility"] == {
        "name": "GraphQL Auth"}
    sign_in(client, token)
    refused = client.post("/api/v1/graphql", json={"query": "{ me { id } }"})
    assert refused.status_code == 403  # a cookie-authenticated POST needs its CSRF token
    html = client.get("/dashboard").get_data(as_text=True)
    csrf = html.split('name="csrf-token" content="', 1)[1].split('"', 1)[0] if "csrf-token" in html else None
    if csrf:
        ok = client.post("/api/v1/graphql", json={"query": "{ me { id } }"}, headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 200 and ok.get_json()["data"]["me"]["id"]


def test_introspection_when_configured(tmp_path):
    from api import create_app
    from config import load_settings
    from pipeline.db.migrate import upgrade_database

    settings = load_settings({"RELAYPACS_VAR_DIR": str(tmp_path), "RELAYPACS_BROKER_URL": "memory://",
                              "RELAYPACS_GRAPHQL_INTROSPECTION": "1"})
    upgrade_database(settings.database_url)
    app = create_app(settings)
    from pipeline.accounts.users import create_user

    with app.extensions["relaypacs"].session_factory() as session:
        _, token = create_user(session, "intro@example.test", "GraphQL Intro", "uploader")
        session.commit()
    answer = ask(app.test_client(), token, "{ __schema { queryType { name } } }")
    assert answer.status_code == 200 and answer.get_json()["data"]["__schema"]["queryType"]["name"] == "Query"
