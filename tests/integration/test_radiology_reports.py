"""Radiology reports read back from a real Orthanc by the report poll, run by a real Celery
worker (the ``reports.poll_pacs`` task beat schedules, sent to the ``reports`` queue) on the real
stack (PostgreSQL, Redis, moto_server): a study is uploaded and delivered; an SR stored into
Orthanc for it shows up as a final report with the original object kept; an amending SR makes
it amended; an Encapsulated PDF report is read; the gateway's own addenda are never taken for
reports; and every status is a report.status_changed event with from and to."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pydicom
import pytest
import redis
import requests
from celery import Celery

from pipeline.models import utcnow
from pipeline.ops import events
from pipeline.reports import new_addendum_uid
from tests.integration.gateway_client import Gateway
from tests.integration.services import poll_for, wait_until
from tests.report_samples import basic_text_sr, encapsulated_pdf, series_uid_of
from tests.sample_data import synthetic_study

pytestmark = pytest.mark.integration
FACILITY = "Reports Clinic"


def _poll(broker_url: str, at) -> None:  # noqa: ANN001
    """What beat does every minute, as of ``at`` (so the test need not wait for the schedule)."""
    sender = Celery(broker=broker_url)
    sender.send_task("reports.poll_pacs", kwargs={"now": at.isoformat()}, queue="reports")


def _study_reports(url: str, headers: dict, study_uid: str, **params) -> list[dict]:  # noqa: ANN003
    listing = requests.get(
        f"{url}/api/v1/reports", headers=headers, params={"limit": 200, **params}, timeout=10
    )
    assert listing.status_code == 200, listing.text
    return [r for r in listing.json()["reports"] if r["study"]["study_instance_uid"] == study_uid]


def test_sr_amending_sr_and_pdf_from_orthanc(
    api_server, make_user, worker, add_stow_destination, orthanc, gateway_env, redis_url
):
    add_stow_destination("reports-orthanc", facility=FACILITY)
    gateway = Gateway(api_server.url, make_user(FACILITY, "uploader"))
    clinician = {"Authorization": f"Bearer {make_user(FACILITY, 'clinician')}"}
    other = {"Authorization": f"Bearer {make_user('Reports Other Clinic', 'clinician')}"}
    files = synthetic_study(2)
    study_uid = str(pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True).StudyInstanceUID)
    batch_id = gateway.open_batch()
    for i, data in enumerate(files):
        gateway.upload(batch_id, data, f"f{i}.dcm")
    gateway.complete(batch_id)
    gateway.wait_state(batch_id, "done", timeout=120)

    # A final SR and one of the gateway's own addenda land in the PACS.
    first_uid, first = basic_text_sr(study_uid, "No acute cardiopulmonary abnormality.")
    _, own = basic_text_sr(study_uid, "An addendum the gateway sent.", sop_uid=new_addendum_uid())
    assert orthanc.stow([first, own]).status_code == 200
    start = utcnow()
    _poll(gateway_env["RELAYPACS_BROKER_URL"], start)
    found = poll_for(lambda: _study_reports(api_server.url, clinician, study_uid), "the SR as a report", 90)
    (report,) = found
    assert report["status"] == "final" and report["sop_instance_uid"] == first_uid
    assert report["uploader"] is not None and report["source"] == "pacs"
    detail = requests.get(
        f"{api_server.url}/api/v1/reports/{report['id']}", headers=clinician, timeout=10
    ).json()
    assert "No acute cardiopulmonary abnormality." in detail["text"]
    original = requests.get(
        f"{api_server.url}/api/v1/reports/{report['id']}/original", headers=clinician, timeout=10
    )
    assert original.status_code == 200 and original.content == orthanc.instance_bytes(first_uid)
    assert _study_reports(api_server.url, other, study_uid) == []  # another facility sees nothing

    # An amending SR: the first is superseded and amended; the listing shows the new one.
    second_uid, second = basic_text_sr(
        study_uid, "Small left pleural effusion.", amends=(study_uid, series_uid_of(first), first_uid)
    )
    assert orthanc.stow([second]).status_code == 200
    _poll(gateway_env["RELAYPACS_BROKER_URL"], start + timedelta(minutes=11))
    amended = poll_for(
        lambda: [
            r
            for r in _study_reports(api_server.url, clinician, study_uid)
            if r["sop_instance_uid"] == second_uid
        ],
        "the amending SR",
        90,
    )
    assert amended[0]["status"] == "amended" and amended[0]["predecessor_id"] == report["id"]
    old = requests.get(
        f"{api_server.url}/api/v1/reports/{report['id']}", headers=clinician, timeout=10
    ).json()
    assert old["status"] == "amended" and old["superseded_by_id"] == amended[0]["id"]
    assert [(h["from"], h["to"]) for h in old["history"]] == [(None, "final"), ("final", "amended")]

    # An Encapsulated PDF report is read too.
    pdf_uid, pdf = encapsulated_pdf(study_uid, "Impression: no fracture of the left wrist.")
    assert orthanc.stow([pdf]).status_code == 200
    _poll(gateway_env["RELAYPACS_BROKER_URL"], start + timedelta(minutes=22))
    read = poll_for(
        lambda: [
            r
            for r in _study_reports(api_server.url, clinician, study_uid)
            if r["sop_instance_uid"] == pdf_uid
        ],
        "the PDF report",
        90,
    )
    pdf_detail = requests.get(
        f"{api_server.url}/api/v1/reports/{read[0]['id']}", headers=clinician, timeout=10
    ).json()
    assert read[0]["status"] == "final" and "no fracture of the left wrist" in pdf_detail["text"]

    # Nothing was taken for a report twice, and the gateway's addendum never.
    everything = _study_reports(api_server.url, clinician, study_uid, include_superseded="true")
    assert sorted(r["sop_instance_uid"] for r in everything) == sorted([first_uid, second_uid, pdf_uid])
    ids = {r["id"] for r in everything}
    stream = redis.Redis.from_url(redis_url)

    def on_stream() -> tuple[list, set]:
        published = [json.loads(f[b"e"]) for _, f in stream.xrange(events.STREAM_KEY)]
        moves = [
            (e["report_id"], e["from"], e["to"])
            for e in published
            if e["type"] == events.REPORT_STATUS_CHANGED and e.get("report_id") in ids
        ]
        # The sender is told of each final or amended report, on the stream too (the poll's outbox).
        told = {e["report_id"] for e in published
                if e["type"] == events.NOTIFICATION_CREATED and e.get("kind") == "report_status"
                and e.get("report_id") in ids}
        return moves, told

    # The outbox relay publishes just after the commit the API already shows, so the last
    # events may arrive a moment after the reports do: wait for them, then check them exactly.
    def all_there() -> bool:
        moves, told = on_stream()
        return len(moves) >= 4 and told == ids

    wait_until(all_there, "report events on the stream", timeout=15)
    moves, told = on_stream()
    assert told == ids, (told, ids)
    assert sorted(moves, key=str) == sorted(
        [
            (report["id"], None, "final"),
            (amended[0]["id"], None, "amended"),
            (report["id"], "final", "amended"),
            (read[0]["id"], None, "final"),
        ],
        key=str,
    )
