"""Scheduled exports end to end: a real worker on the ``exports`` queue, PostgreSQL, Redis,
moto_server (artifacts) and an aiosmtpd SMTP server on loopback receiving the mail.

- a weekly report is not due a minute early, is due when the clock says so, and two
  dispatchers racing for the slot produce one run and one mail;
- the attached workbook has the expected sheets, values and native charts; the PDF parses
  and shows the totals; the files are in S3 and downloadable through the API;
- a failing SMTP server: retries with backoff, then a failed run with the reason; a replay
  after the server recovers succeeds and mails once;
- files above the attachment limit are mailed as time-limited S3 presigned links, and GETting
  a link from moto_server returns the stored workbook's bytes.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from urllib.parse import parse_qs, urlparse
from zoneinfo import ZoneInfo

import pytest
import requests
from aiosmtpd.controller import Controller
from celery import Celery
from openpyxl import load_workbook
from pypdf import PdfReader
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from pipeline.exports.definitions import period_bounds, period_label
from pipeline.models import Facility, HourlyStats, User
from tests.integration.services import free_port, poll_for

pytestmark = pytest.mark.integration
FACILITY = "Exports Clinic"


class Mailbox:
    """aiosmtpd handler: keeps what it accepts; ``failing`` answers 451 (try again later).

    ``to``/``refusals_to``: what was for one recipient. Any report due on the session's shared
    database (another module's, when the test's clock or beat's passes its due time) is mailed
    here too while this module's worker runs, so a test counts its own recipient's mail."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.failing = False
        self._received: list[tuple[list[str], Message]] = []
        self._refused: list[list[str]] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001, N802
        if self.failing:
            self._refused.append(list(envelope.rcpt_tos))
            return "451 4.3.0 mailbox temporarily unavailable"
        message = message_from_bytes(envelope.content)
        self.messages.append(message)
        self._received.append((list(envelope.rcpt_tos), message))
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        return [m for rcpt, m in self._received if address in rcpt]

    def refusals_to(self, address: str) -> int:
        return sum(1 for rcpt in self._refused if address in rcpt)


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.fixture
def exports_worker(mailbox, worker_fleet, spawn_worker, monkeypatch) -> None:
    """A worker on the exports queue only, mailing through the test SMTP server, with short
    backoff and two attempts so the failure path takes seconds."""
    _, port = mailbox
    monkeypatch.setitem(worker_fleet.env, "RELAYPACS_SMTP_URL", f"smtp://127.0.0.1:{port}")
    monkeypatch.setitem(worker_fleet.env, "RELAYPACS_EXPORT_RETRY_BASE_SECONDS", "1")
    monkeypatch.setitem(worker_fleet.env, "RELAYPACS_EXPORT_MAX_ATTEMPTS", "2")
    spawn_worker(queues="exports", concurrency=2)


def _seed_week(postgres_url: str, start: datetime, facility: str = FACILITY) -> int:
    """Hourly stats for the week from ``start``: 2 uploads an hour, 1 MB each."""
    engine = create_engine(postgres_url)
    with Session(engine) as session:
        facility_id = session.scalar(select(Facility.id).where(Facility.name == facility))
        user_id = session.scalar(select(User.id).where(User.facility_id == facility_id))
        for hour in range(7 * 24):
            session.add(HourlyStats(hour=start + timedelta(hours=hour), facility_id=facility_id,
                                    modality="=CT" if hour % 2 else "MR", status="parsed", user_id=user_id,
                                    uploads=2, bytes=2_000_000, studies=1, delivered=2, lat_b2=2,
                                    latency_sum_ms=1_400, latency_max_ms=800))
        session.commit()
    engine.dispose()
    return 7 * 24 * 2


def test_weekly_report_due_built_mailed_once_then_smtp_failure_and_replay(
        gateway_env, api_server, make_user, postgres_url, redis_url, s3, mailbox, exports_worker):
    box, _ = mailbox
    token = make_user(FACILITY, "qa_manager")
    headers = {"Authorization": f"Bearer {token}"}
    body = {"name": "Weekly QA", "metrics": ["uploads", "bytes", "delivery_success_rate",
                                             "delivery_latency_p95", "quarantined_by_reason"],
            "grouping": ["day"], "formats": ["xlsx", "pdf", "csv"], "recipients": ["qa@clinic.test"],
            "schedule": "weekly", "timezone": "Europe/Berlin"}
    created = requests.post(f"{api_server.url}/api/v1/exports", json=body, headers=headers, timeout=10)
    assert created.status_code == 201, created.text
    report = created.json()
    due = datetime.fromisoformat(report["next_due_at"])
    assert due.astimezone(ZoneInfo("Europe/Berlin")).strftime("%a %H:%M") == "Mon 07:00"
    period = period_bounds("last_week", due, "Europe/Berlin")
    uploads = _seed_week(postgres_url, period[0])

    client = Celery("exports-it", broker=redis_url)
    runs_url = f"{api_server.url}/api/v1/exports/{report['id']}/runs"

    def runs() -> list[dict]:
        return requests.get(runs_url, headers=headers, timeout=10).json()["runs"]

    # A minute early: nothing. On time: two dispatchers race for the slot.
    client.send_task("exports.dispatch_due", kwargs={"now": (due - timedelta(minutes=1)).isoformat()},
                     queue="exports")
    time.sleep(2)
    assert runs() == []
    for _ in range(2):
        client.send_task("exports.dispatch_due", kwargs={"now": (due + timedelta(seconds=30)).isoformat()},
                         queue="exports")
    done = poll_for(lambda: [r for r in runs() if r["state"] == "succeeded"], "the scheduled run")
    time.sleep(2)  # a duplicate would have been mailed by now
    assert len(runs()) == 1 and len(box.to("qa@clinic.test")) == 1
    run = done[0]
    assert run["due_at"] == due.isoformat() and run["recipients_notified"] == ["qa@clinic.test"]

    mail = box.to("qa@clinic.test")[0]
    files = {part.get_filename(): part.get_payload(decode=True)
             for part in mail.walk() if part.get_filename()}
    label = period_label(*period, "Europe/Berlin")
    xlsx_name, pdf_name = f"Weekly-QA_{label}.xlsx", f"Weekly-QA_{label}.pdf"
    assert {xlsx_name, pdf_name} <= set(files), sorted(files)
    wb = load_workbook(io.BytesIO(files[xlsx_name]))
    assert wb.sheetnames == ["Summary", "Volume", "Delivery", "Quarantine reasons"]
    summary = {row[0]: row[1] for row in wb["Summary"].iter_rows(values_only=True) if row and row[0]}
    assert summary["Uploads"] == uploads and summary["Delivery success rate"] == 1.0
    volume = list(wb["Volume"].iter_rows(min_row=2, values_only=True))
    assert len(volume) == 7 and sum(r[1] for r in volume) == uploads
    assert [type(c).__name__ for c in wb["Volume"]._charts] == ["LineChart"]
    assert wb["Volume"].freeze_panes == "A2" and wb["Volume"].auto_filter.ref == "A1:C8"
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(files[pdf_name])).pages)
    assert f"{uploads:,}" in text and "Weekly QA" in text
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="exports/")["Contents"]]
    assert any(k.endswith(xlsx_name) for k in keys)
    download = requests.get(f"{runs_url}/{run['id']}/files/{xlsx_name}", headers=headers, timeout=10)
    assert download.status_code == 200 and download.content == files[xlsx_name]

    # The mail server refuses: retried with backoff, then failed with the reason.
    box.failing = True
    queued = requests.post(f"{api_server.url}/api/v1/exports/{report['id']}/run", headers=headers, timeout=10)
    assert queued.status_code == 202
    run_id = queued.json()["id"]

    def state_of(rid: int) -> dict:
        return next(r for r in runs() if r["id"] == rid)

    failed = poll_for(lambda: state_of(run_id)["state"] == "failed" and state_of(run_id), "the failed run")
    assert failed["attempts"] == 2 and "451" in failed["error"] and box.refusals_to("qa@clinic.test") == 2
    assert len(box.to("qa@clinic.test")) == 1

    box.failing = False
    replay = requests.post(f"{runs_url}/{run_id}/replay", headers=headers, timeout=10)
    assert replay.status_code == 202
    poll_for(lambda: state_of(run_id)["state"] == "succeeded", "the replayed run")
    assert len(box.to("qa@clinic.test")) == 2


LINK_TTL = 7200


@pytest.fixture
def exports_worker_small_attachments(mailbox, worker_fleet, spawn_worker, monkeypatch) -> None:
    """An exports worker whose attachment limit (1 KiB) every workbook exceeds."""
    _, port = mailbox
    monkeypatch.setitem(worker_fleet.env, "RELAYPACS_SMTP_URL", f"smtp://127.0.0.1:{port}")
    monkeypatch.setitem(worker_fleet.env, "RELAYPACS_EXPORT_ATTACHMENT_LIMIT_BYTES", "1024")
    monkeypatch.setitem(worker_fleet.env, "RELAYPACS_EXPORT_LINK_TTL_SECONDS", str(LINK_TTL))
    spawn_worker(queues="exports", concurrency=1)


def test_files_over_the_attachment_limit_are_mailed_as_presigned_links(
        gateway_env, api_server, make_user, postgres_url, s3, mailbox, exports_worker_small_attachments):
    """Over the limit: no attachment, one link per file; each link is a SigV4 presigned GET
    valid for RELAYPACS_EXPORT_LINK_TTL_SECONDS, and moto_server answers it with the bytes of
    the stored object (the same the API download serves). moto does not enforce the expiry
    itself, so the time limit is checked where it is set: the signed X-Amz-Expires."""
    box, _ = mailbox
    facility = "Exports Links Clinic"
    token = make_user(facility, "qa_manager")
    headers = {"Authorization": f"Bearer {token}"}
    body = {"name": "Large QA", "metrics": ["uploads", "bytes", "delivery_success_rate"], "grouping": ["day"],
            "formats": ["xlsx", "pdf"], "recipients": ["big@clinic.test"], "schedule": "weekly",
            "timezone": "Europe/Berlin", "filters": {"period": "last_week"}}
    created = requests.post(f"{api_server.url}/api/v1/exports", json=body, headers=headers, timeout=10)
    assert created.status_code == 201, created.text
    export_id = created.json()["id"]
    period = period_bounds("last_week", datetime.now(UTC), "Europe/Berlin")
    uploads = _seed_week(postgres_url, period[0], facility)
    before = len(box.to("big@clinic.test"))

    queued = requests.post(f"{api_server.url}/api/v1/exports/{export_id}/run", headers=headers, timeout=10)
    assert queued.status_code == 202, queued.text
    runs_url = f"{api_server.url}/api/v1/exports/{export_id}/runs"

    def finished() -> dict | None:
        run = requests.get(runs_url, headers=headers, timeout=10).json()["runs"][0]
        return run if run["state"] in ("succeeded", "failed") else None

    run = poll_for(finished, "the run with large files")
    assert run["state"] == "succeeded", run["error"]
    assert run["delivery"] == "link" and run["bytes"] > 1024
    assert run["recipients_notified"] == ["big@clinic.test"] and len(box.to("big@clinic.test")) == before + 1

    mail = box.to("big@clinic.test")[-1]
    assert not [part for part in mail.walk() if part.get_filename()]
    plain = next(part for part in mail.walk() if part.get_content_type() == "text/plain")
    text = plain.get_payload(decode=True).decode()
    assert f"work for {LINK_TTL // 3600} hours" in text
    links = dict(re.findall(r"^- (\S+): (\S+?)\s*$", text, flags=re.MULTILINE))
    label = period_label(*period, "Europe/Berlin")
    xlsx_name = f"Large-QA_{label}.xlsx"
    assert set(links) == {xlsx_name, f"Large-QA_{label}.pdf"}, text

    link = urlparse(links[xlsx_name])
    query = parse_qs(link.query)
    endpoint = urlparse(s3.endpoint_url)
    assert link.port == endpoint.port and link.hostname.endswith(endpoint.hostname)
    assert query["X-Amz-Expires"] == [str(LINK_TTL)] and query["X-Amz-Signature"][0]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    fetched = requests.get(links[xlsx_name], timeout=10)
    assert fetched.status_code == 200
    listing = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="exports/")["Contents"]
    [key] = [o["Key"] for o in listing if o["Key"].endswith(f"/run-{run['id']}/{xlsx_name}")]
    stored = s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    assert fetched.content == stored
    download = requests.get(f"{runs_url}/{run['id']}/files/{xlsx_name}", headers=headers, timeout=10)
    assert download.status_code == 200 and download.content == fetched.content
    wb = load_workbook(io.BytesIO(fetched.content))
    assert wb.sheetnames == ["Summary", "Volume", "Delivery"]
    summary = {row[0]: row[1] for row in wb["Summary"].iter_rows(values_only=True) if row and row[0]}
    assert summary["Uploads"] == uploads
    pdf = requests.get(links[f"Large-QA_{label}.pdf"], timeout=10)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
