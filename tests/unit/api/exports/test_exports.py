"""Report definitions API and the run life cycle on SQLite: validation and scoping, one run
per slot with two dispatchers, missed slots, stuck runs, build + mail once, download."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook
from sqlalchemy import select

from api.exports import definitions as exports_api
from pipeline.exports import mail as export_delivery
from pipeline.exports import runs as export_runs
from pipeline.exports.definitions import period_bounds
from pipeline.models import AuditEvent, ExportDefinition, ExportRun, ExportRunState
from tests.analytics_seed import Seeder

MONDAY = datetime(2026, 3, 30, 5, 0, tzinfo=UTC)  # 07:00 in Berlin, the first summer-time Monday
BODY = {"name": "Weekly QA", "metrics": ["uploads", "bytes", "quarantined", "delivery_success_rate",
                                         "delivery_latency_p95", "quarantined_by_reason", "forecast"],
        "grouping": ["day"], "formats": ["xlsx", "pdf", "csv"], "recipients": ["qa@clinic.test"],
        "schedule": "weekly", "timezone": "Europe/Berlin", "filters": {"period": "last_week"}}


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def queued(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(exports_api.chains, "enqueue_export_run", calls.append)
    return calls


@pytest.fixture
def world(session, make_token):
    seed = Seeder(session)
    facility, uploader, _ = seed.user("Reports North")
    batch = seed.batch(facility, uploader, MONDAY - timedelta(days=5))
    for i in range(12):
        seed.upload(batch, MONDAY - timedelta(days=5, hours=-i), modality="=1+1" if i % 2 else "CT",
                    latencies_ms=(500 + i,))
    seed.upload(batch, MONDAY - timedelta(days=4), state="quarantined")
    session.commit()
    from pipeline.analytics import stats

    stats.rebuild_all(session, now=MONDAY)
    session.commit()
    return {"facility": facility, "qa": make_token("Reports North", "qa_manager"),
            "other_qa": make_token("Reports South", "qa_manager"),
            "uploader": make_token("Reports North", "uploader")}


def test_create_validates_and_scopes(client, world):
    bad = client.post("/api/v1/exports", json={**BODY, "timezone": "Berlin"}, headers=auth(world["qa"]))
    assert bad.status_code == 400 and "unknown timezone" in bad.get_json()["error"]["message"]
    bad = client.post("/api/v1/exports", json={**BODY, "schedule": "every monday"}, headers=auth(world["qa"]))
    assert bad.status_code == 400 and "cron" in bad.get_json()["error"]["message"]
    assert client.post("/api/v1/exports", json=BODY, headers=auth(world["uploader"])).status_code == 403
    created = client.post("/api/v1/exports", json=BODY, headers=auth(world["qa"]))
    assert created.status_code == 201, created.get_json()
    report = created.get_json()
    assert report["cron"] == "0 7 * * 1" and report["facility_id"] == world["facility"]
    assert client.post("/api/v1/exports", json=BODY, headers=auth(world["qa"])).status_code == 409
    assert client.get(f"/api/v1/exports/{report['id']}", headers=auth(world["other_qa"])).status_code == 403
    other = client.post("/api/v1/exports", json={**BODY, "filters": {"facility_ids": [world["facility"]]}},
                        headers=auth(world["other_qa"]))
    assert other.status_code == 403
    listing = client.get("/api/v1/exports", headers=auth(world["other_qa"])).get_json()
    assert listing["exports"] == []
    assert client.get("/api/v1/exports/catalogue", headers=auth(world["qa"])).status_code == 200


def _definition(session, client, world) -> ExportDefinition:
    report = client.post("/api/v1/exports", json=BODY, headers=auth(world["qa"])).get_json()
    definition = session.get(ExportDefinition, report["id"])
    session.refresh(definition)
    return definition


def test_two_dispatchers_one_run_and_missed_slots_run_once(app, session, client, world):
    definition = _definition(session, client, world)
    definition.next_due_at = MONDAY - timedelta(weeks=3)  # the beat was down for three weeks
    session.commit()
    other = app.extensions["relaypacs"].session_factory()
    first = export_runs.dispatch_due(session, MONDAY + timedelta(minutes=1))
    session.commit()
    # A second beat as of the same minute: its definition row is stale, the run key is not.
    other.get(ExportDefinition, definition.id).next_due_at = MONDAY - timedelta(weeks=3)
    second = export_runs.dispatch_due(other, MONDAY + timedelta(minutes=1))
    other.commit()
    other.close()
    runs = session.scalars(select(ExportRun)).all()
    assert len(first) == 1 and second == [] and len(runs) == 1
    assert runs[0].due_at == MONDAY and runs[0].run_key == f"export-{definition.id}@2026-03-30T05:00Z"
    session.refresh(definition)
    assert definition.next_due_at == MONDAY + timedelta(weeks=1)
    assert export_runs.dispatch_due(session, MONDAY + timedelta(minutes=2)) == []


def test_stuck_working_run_is_recovered_after_timeout(session, client, world):
    definition = _definition(session, client, world)
    run = export_runs.run_now(session, definition, MONDAY)
    session.commit()
    assert export_runs.claim(session, run.id, MONDAY, 600)
    assert not export_runs.claim(session, run.id, MONDAY + timedelta(seconds=5), 600)  # a duplicate task
    session.commit()
    assert export_runs.recover_stuck(session, MONDAY + timedelta(seconds=300), 600) == []
    assert export_runs.recover_stuck(session, MONDAY + timedelta(seconds=601), 600) == [run.id]
    session.commit()
    session.refresh(run)
    assert run.state == ExportRunState.QUEUED and "worker lost" in run.error
    assert export_runs.claim(session, run.id, MONDAY + timedelta(seconds=602), 600)


def test_run_builds_mails_once_and_downloads(app, session, client, world, monkeypatch, queued):
    definition = _definition(session, client, world)
    accepted = client.post(f"/api/v1/exports/{definition.id}/run", headers=auth(world["qa"]))
    assert accepted.status_code == 202
    run = session.get(ExportRun, queued[0])
    run.due_at = MONDAY  # as if due on Monday: last week holds the seeded uploads
    run.period_start, run.period_end = period_bounds("last_week", MONDAY, "Europe/Berlin")
    session.commit()
    sent: list = []
    monkeypatch.setattr(export_delivery, "send",
                        lambda smtp, message: sent.append(message) or ["qa@clinic.test"])
    store = app.extensions["relaypacs"].store
    assert export_runs.claim(session, run.id, MONDAY, 600)
    export_runs.build_artifacts(session, store, run)
    smtp = export_delivery.Smtp("127.0.0.1", 25)
    export_runs.deliver(session, store, run, smtp, "gw@test", 10 * 1024**2, 3600, MONDAY)
    export_runs.deliver(session, store, run, smtp, "gw@test", 10 * 1024**2, 3600, MONDAY)  # a redelivery
    session.commit()
    assert len(sent) == 1 and run.state == ExportRunState.SUCCEEDED and run.delivery == "attachment"
    names = sorted(p.get_filename() for p in sent[0].iter_attachments())
    assert names[0] == "Weekly-QA_2026-03-23_to_2026-03-29.pdf"
    assert "Weekly-QA_2026-03-23_to_2026-03-29.xlsx" in names
    history = client.get(f"/api/v1/exports/{definition.id}/runs", headers=auth(world["qa"])).get_json()
    assert history["runs"][0]["state"] == "succeeded"
    xlsx = client.get(f"/api/v1/exports/{definition.id}/runs/{run.id}/files/"
                      "Weekly-QA_2026-03-23_to_2026-03-29.xlsx", headers=auth(world["qa"]))
    assert xlsx.status_code == 200
    wb = load_workbook(io.BytesIO(xlsx.data))
    assert wb.sheetnames == ["Summary", "Volume", "Quality", "Delivery", "Quarantine reasons", "Forecast"]
    values = {r[0]: r[1] for r in wb["Summary"].iter_rows(values_only=True) if r and r[0]}
    assert values["Uploads"] == 13 and values["Quarantined"] == 1
    # No forecast stored for the facility: no number, and a note saying why.
    assert values["Uploads forecast, next period"] is None and "do not cover" in values["Forecast note"]
    assert sum(r[1] for r in wb["Volume"].iter_rows(min_row=2, values_only=True)) == 13
    assert session.scalar(select(AuditEvent).where(AuditEvent.action == "export.downloaded")) is not None
    assert client.get(f"/api/v1/exports/{definition.id}/runs/{run.id}/files/nope.xlsx",
                      headers=auth(world["qa"])).status_code == 404


def test_files_over_the_attachment_limit_go_as_links(app, session, client, world, monkeypatch):
    definition = _definition(session, client, world)
    run = export_runs.run_now(session, definition, MONDAY)
    session.commit()
    sent: list = []
    monkeypatch.setattr(export_delivery, "send", lambda smtp, message: sent.append(message) or [])
    store = app.extensions["relaypacs"].store
    export_runs.build_artifacts(session, store, run)
    export_runs.deliver(session, store, run, export_delivery.Smtp("127.0.0.1"), "gw@test", 1, 3600, MONDAY)
    assert run.delivery == "link" and not list(sent[0].iter_attachments())
    text = sent[0].get_content()
    assert f"/api/v1/exports/{definition.id}/runs/{run.id}/files/" in text and "1 hours" in text


def test_presigned_url_for_s3_stores():
    class FakeClient:
        def generate_presigned_url(self, op, Params, ExpiresIn):  # noqa: N803
            return f"https://s3.test/{Params['Bucket']}/{Params['Key']}?ttl={ExpiresIn}"

    class FakeS3:
        client, bucket, prefix = FakeClient(), "b", "gw"

    assert export_delivery.presigned_url(FakeS3(), "exports/x.xlsx", 60) == "https://s3.test/b/gw/exports/x.xlsx?ttl=60"
    assert export_delivery.presigned_url(object(), "k", 60) is None


def test_grouping_by_modality_and_user_sums_in_the_database(session, world):
    from pipeline.exports import data as export_data
    from pipeline.exports.definitions import ExportSpec

    spec = ExportSpec(name="Mix", metrics=["uploads", "quarantined"], grouping=["modality", "user"],
                      timezone="Europe/Berlin")
    start, end = period_bounds("last_week", MONDAY, "Europe/Berlin")
    data = export_data.build(session, spec, [world["facility"]], start, end)
    rows = list(data.sections[0].rows())
    # One row per modality and user; status and hours summed away (the quarantined upload
    # has no study, so no modality).
    assert [(r[0], r[2]) for r in rows] == [("", 1), ("CT", 12)]
    assert all(r[1].endswith("@Reports North.test") for r in rows)
    assert [s.title for s in data.sections] == ["Volume", "Quality"]
    assert [r[2] for r in data.sections[1].rows()] == [1, 0]


def test_forecast_metric_reads_the_newest_stored_forecast(session, world):
    """The "forecast" metric is issue 7's stored forecast summed over the next period, not a
    guess of the report's own: the newest row wins, and days it does not cover are said so."""
    from pipeline.exports import data as export_data
    from pipeline.exports.definitions import ExportSpec
    from pipeline.models import UploadForecast

    start, end = period_bounds("last_week", MONDAY, "Europe/Berlin")
    first = end.astimezone(ZoneInfo("Europe/Berlin")).date()  # Monday 30 March

    def points(days: int, mean: float) -> list[dict]:
        return [{"day": (first + timedelta(days=i)).isoformat(), "mean": mean, "lo80": 0, "hi80": 0,
                 "lo95": 0, "hi95": 0} for i in range(days)]

    old = UploadForecast(facility_id=world["facility"], metric="uploads", horizon=28, model="seasonal_naive",
                         points=points(28, 100.0))
    session.add(old)
    session.flush()
    session.add(UploadForecast(facility_id=world["facility"], metric="uploads", horizon=28, model="sarimax",
                               points=points(28, 2.5)))
    # Another measure's forecast is not the uploads forecast.
    session.add(UploadForecast(facility_id=world["facility"], metric="bytes", horizon=28, model="sarimax",
                               points=points(28, 1e9)))
    session.flush()
    spec = ExportSpec(name="F", metrics=["uploads", "forecast"], grouping=["day"], timezone="Europe/Berlin")
    data = export_data.build(session, spec, [world["facility"]], start, end)
    summary = {label: value for label, value, _ in data.summary}
    assert summary["Uploads forecast, next period"] == round(7 * 2.5)
    assert "Forecast note" not in summary
    section = next(s for s in data.sections if s.title == "Forecast")
    [row] = list(section.rows())
    assert row[0] == "Reports North" and row[1] == "sarimax" and row[3] == 7 and row[4] == round(7 * 2.5)

    # A forecast covering only 3 of the 7 days: no total, and the note says so.
    session.add(UploadForecast(facility_id=world["facility"], metric="uploads", horizon=3, model="sarimax",
                               points=points(3, 4.0)))
    session.flush()
    data = export_data.build(session, spec, [world["facility"]], start, end)
    summary = {label: value for label, value, _ in data.summary}
    assert summary["Uploads forecast, next period"] is None and "7 days" in summary["Forecast note"]
    assert next(s for s in data.sections if s.title == "Forecast").rows().__next__()[3:] == (3, 12)
    session.rollback()


def test_time_buckets_are_local_days_and_weeks_in_sql(session, world):
    """Bucketing happens in the database in the report's zone: 23:30 UTC on Sunday 29 March
    is already Monday in Berlin (summer time since 01:00 UTC that day), so it counts there."""
    from pipeline.exports import data as export_data
    from pipeline.exports.definitions import ExportSpec
    from pipeline.models import Facility, HourlyStats, User

    facility = Facility(name="Buckets Clinic")
    session.add(facility)
    session.flush()
    user = User(email="b@buckets.test", role="uploader", facility_id=facility.id, token_hash="b" * 64)
    session.add(user)
    session.flush()
    hours = {datetime(2026, 3, 29, 21, 0, tzinfo=UTC): 1,   # Sunday 23:00 Berlin
             datetime(2026, 3, 29, 22, 0, tzinfo=UTC): 10,  # Monday 00:00 Berlin
             datetime(2026, 3, 30, 12, 0, tzinfo=UTC): 100}
    for hour, uploads in hours.items():
        session.add(HourlyStats(hour=hour, facility_id=facility.id, modality="CT", status="parsed",
                                user_id=user.id, uploads=uploads, delivered=uploads, lat_b1=uploads,
                                latency_max_ms=450))
    session.flush()
    start, end = datetime(2026, 3, 20, tzinfo=UTC), datetime(2026, 4, 10, tzinfo=UTC)
    by = {}
    for unit in ("day", "week", "hour"):
        spec = ExportSpec(name="B", metrics=["uploads", "delivery_latency_p50"], grouping=[unit, "facility"],
                          timezone="Europe/Berlin")
        data = export_data.build(session, spec, [facility.id], start, end)
        by[unit] = [tuple(r) for r in data.sections[0].rows()]
        assert data.sections[0].count() == len(by[unit])
    clinic = "Buckets Clinic"
    assert by["day"] == [(date(2026, 3, 29), clinic, 1), (date(2026, 3, 30), clinic, 110)]
    assert by["week"] == [(date(2026, 3, 23), clinic, 1), (date(2026, 3, 30), clinic, 110)]
    assert [r[0] for r in by["hour"]] == [datetime(2026, 3, 29, 23), datetime(2026, 3, 30, 0),
                                          datetime(2026, 3, 30, 14)]
    delivery = [tuple(r) for r in data.sections[1].rows()]
    # The P50 of 10 deliveries in the 250-500 ms bucket, capped by the hour's 450 ms maximum.
    assert delivery[1][:2] == (datetime(2026, 3, 30, 0), "Buckets Clinic") and 250 < delivery[1][2] <= 450
    session.rollback()


def test_presigned_links_are_sigv4_and_capped_at_seven_days():
    """botocore would presign with SigV2 (deprecated by S3) for us-east-1; the links carry a
    SigV4 X-Amz-Expires, at most the 7 days SigV4 allows. Signing needs no server."""
    from urllib.parse import parse_qs, urlparse

    import boto3

    class Store:
        client = boto3.client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9",
                              aws_access_key_id="k", aws_secret_access_key="s")  # noqa: S106 - dummy
        bucket, prefix = "b", "gw"

    for ttl, expected in ((3600, "3600"), (30 * 24 * 3600, str(export_delivery.PRESIGNED_MAX_SECONDS))):
        url = urlparse(export_delivery.presigned_url(Store(), "exports/x.xlsx", ttl))
        query = parse_qs(url.query)
        assert url.path == "/b/gw/exports/x.xlsx" and "AWSAccessKeyId" not in query
        assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Expires"] == [expected]
