"""Radiology reports at volume, on PostgreSQL (and, for the poll, a real Orthanc).

1. 100,000 reports over 50 facilities (2,000 delivered studies each, one uploader per facility,
   about 1.5 comments per report, a radiologist serving all 50):
   the listing (a clinician's page of 50) and one report with its history and its thread, P95
   at the query level and through the API (Flask test client: auth, scoping, JSON), each
   alternating call by call with the same answer computed row by row as lazy loading does (one
   query per related row: study, first instance, batch, uploader, author, comments, each
   comment's author, history), as a ratio. The same dicts come out of both (checked).
2. The report poll over 10,000 delivered studies (``BENCH_REPORT_POLL_STUDIES``) held by
   Orthanc (one CT instance each, 1% with an SR): studies checked per second, rounds of 500,
   one QIDO-RS query per study against UID-list batches of ``LIST_BATCH``, alternating.

Run: .venv/bin/python -m pytest -q -m bench tests/bench/test_bench_reports.py -s
(``-k listing`` and ``-k poll`` one at a time keep each call short).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select, text

from tests.bench.helpers import percentile

pytestmark = [pytest.mark.bench, pytest.mark.integration]
FACILITIES = 50
PER_FACILITY = int(os.environ.get("BENCH_REPORTS_PER_FACILITY", "2000"))  # smaller: a smoke run
REPEATS = 200
POLL_STUDIES = int(os.environ.get("BENCH_REPORT_POLL_STUDIES", "10000"))


@pytest.fixture(scope="module")
def reports_database() -> Iterator[str]:
    from pipeline.db.migrate import upgrade_database
    from tests.integration.services import create_database, database_url, drop_database, ensure_postgres

    ensure_postgres()
    name = create_database("relaypacs_bench_reports_")
    try:
        url = database_url(name)
        upgrade_database(url)
        yield url
    finally:
        drop_database(name)


def _lazy_row(session, report) -> dict:  # noqa: ANN001
    """One listing row as lazy loading builds it: each related row its own query."""
    from types import SimpleNamespace

    from pipeline.models import Batch, Facility, Instance, ReportComment, Study, User
    from pipeline.reports import listing

    study = session.get(Study, report.study_id)
    facility = session.get(Facility, report.facility_id)
    first = session.scalars(
        select(Instance).where(Instance.study_id == study.id).order_by(Instance.id).limit(1)
    ).first()
    batch = session.get(Batch, first.batch_id) if first else None
    uploader = session.get(User, batch.user_id) if batch else None
    author = session.get(User, report.author_id) if report.author_id else None
    # The comment count as a lazy relationship gives it: every version loaded, counted in Python.
    versions = session.scalars(select(ReportComment).where(ReportComment.report_id == report.id)).all()
    row = SimpleNamespace(**{name: getattr(report, name) for name in listing.REPORT_COLUMNS})
    row.study_date, row.modality, row.description = study.study_date, study.modality, study.description
    row.facility_name = facility.name
    row.author_email = author.email if author else None
    row.uploader_id = uploader.id if uploader else None
    row.uploader_email = uploader.email if uploader else None
    for name in listing.ROW_COUNTS:
        setattr(row, name, 0)
    row.comment_count = len({c.thread_key for c in versions})
    return listing.row_dict(row)


def _lazy_list(session, facility_ids, limit=50) -> list[dict]:  # noqa: ANN001
    from pipeline.models import RadiologyReport

    reports = session.scalars(
        select(RadiologyReport)
        .where(RadiologyReport.facility_id.in_(facility_ids), RadiologyReport.superseded_by_id.is_(None))
        .order_by(RadiologyReport.id.desc())
        .limit(limit)
    ).all()
    return [_lazy_row(session, r) for r in reports]


def _lazy_detail(session, report_id: int) -> dict:  # noqa: ANN001
    from pipeline.models import RadiologyReport, ReportComment, ReportStatusChange, User

    report = session.get(RadiologyReport, report_id)
    out = _lazy_row(session, report)
    out["text"], out["text_sha256"] = report.text, report.text_sha256
    history = []
    for change in session.scalars(
        select(ReportStatusChange)
        .where(ReportStatusChange.report_id == report_id)
        .order_by(ReportStatusChange.id)
    ):
        by = session.get(User, change.by_user_id) if change.by_user_id else None
        history.append(
            {
                "from": change.from_status,
                "to": change.to_status,
                "at": change.at.isoformat(),
                "by": {"id": by.id, "email": by.email} if by else None,
                "reason": change.reason,
            }
        )
    out["history"] = history
    # report.comments as a lazy relationship (one query), then each comment's author (one each).
    newest: dict[str, ReportComment] = {}
    first: dict[str, int] = {}
    for comment in session.scalars(
        select(ReportComment).where(ReportComment.report_id == report_id).order_by(ReportComment.id)
    ):
        first.setdefault(comment.thread_key, comment.id)
        if comment.thread_key not in newest or comment.version > newest[comment.thread_key].version:
            newest[comment.thread_key] = comment
    thread = []
    for comment in sorted(newest.values(), key=lambda c: first[c.thread_key]):
        by = session.get(User, comment.author_id)
        thread.append(
            {
                "id": comment.id,
                "key": comment.thread_key,
                "version": comment.version,
                "author": {"id": by.id, "email": by.email},
                "text": comment.text,
                "recipients": comment.recipients or [],
                "created_at": comment.created_at.isoformat(),
            }
        )
    out["comments"] = thread
    return out


def _paired(fast, slow, repeats: int = REPEATS) -> tuple[dict, dict]:  # noqa: ANN001
    """Both ways alternately, call after call, so a load spike on the shared machine falls on
    both alike; (fast, slow) each with p50 and p95 in ms."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for action, out in ((fast, times[0]), (slow, times[1])):
            start = time.perf_counter()
            action()
            out.append((time.perf_counter() - start) * 1000)
    return tuple({"p50_ms": round(percentile(v, 50), 2), "p95_ms": round(percentile(v, 95), 2)}
                 for v in times)  # type: ignore[return-value]


def _p95_ms(action, repeats: int = REPEATS) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return round(percentile(times, 95), 2)


def test_bench_listing_and_one_report_over_100k(reports_database, tmp_path, bench_results):
    from api import create_app
    from config import load_settings
    from pipeline.accounts.users import assign_reader, create_user
    from pipeline.db.engine import make_engine, make_session_factory
    from pipeline.reports import listing
    from tests.report_seed import comments_for, delivered_studies, destination, reports_for

    engine = make_engine(reports_database)
    session = make_session_factory(engine)()
    seed_start = time.perf_counter()
    dest = destination(session, "bench-pacs")
    radiologist, radiologist_token = create_user(session, "rad@bench.test", "Bench Hub", "radiologist")
    tokens, facility_ids, report_ids = [], [], []
    comments = 0
    for f in range(FACILITIES):
        uploader, _ = create_user(session, f"up{f}@bench.test", f"Bench {f:02d}", "uploader")
        clinician, token = create_user(session, f"clin{f}@bench.test", f"Bench {f:02d}", "clinician")
        assign_reader(session, radiologist.email, f"Bench {f:02d}", [])
        tokens.append(token)
        facility_ids.append(uploader.facility_id)
        studies = delivered_studies(session, uploader.facility_id, uploader.id, dest.id, PER_FACILITY)
        ids = reports_for(session, studies, dest.id)
        comments += comments_for(session, ids, uploader.facility_id, [clinician.id, radiologist.id])
        report_ids.extend(ids)
        session.commit()
    session.execute(text("ANALYZE"))
    session.commit()
    seed_seconds = time.perf_counter() - seed_start
    assert len(report_ids) == FACILITIES * PER_FACILITY

    facility = [facility_ids[17]]
    # i % 4 == 3 and i % 3 == 0: a thread of three comments, the first one corrected.
    one = report_ids[17 * PER_FACILITY + (PER_FACILITY // 2) // 12 * 12 + 3]
    query = listing.ReportQuery(facility_ids=facility, limit=50)
    fast_rows = listing.list_reports(session, query)
    assert fast_rows == _lazy_list(session, facility)  # the same answer both ways
    fast_detail = listing.report_detail(session, one, facility)
    assert fast_detail == _lazy_detail(session, one) and len(fast_detail["comments"]) == 3

    listing_fast, listing_lazy = _paired(lambda: listing.list_reports(session, query),
                                         lambda: (session.expunge_all(), _lazy_list(session, facility)))
    report_fast, report_lazy = _paired(lambda: listing.report_detail(session, one, facility),
                                       lambda: (session.expunge_all(), _lazy_detail(session, one)))
    results = {
        "listing_query_p95_ms": listing_fast["p95_ms"], "listing_query_p50_ms": listing_fast["p50_ms"],
        "listing_lazy_p95_ms": listing_lazy["p95_ms"], "listing_lazy_p50_ms": listing_lazy["p50_ms"],
        "report_query_p95_ms": report_fast["p95_ms"], "report_query_p50_ms": report_fast["p50_ms"],
        "report_lazy_p95_ms": report_lazy["p95_ms"], "report_lazy_p50_ms": report_lazy["p50_ms"],
    }
    settings = load_settings(
        {
            "RELAYPACS_DATABASE_URL": reports_database,
            "RELAYPACS_VAR_DIR": str(tmp_path),
            "RELAYPACS_BROKER_URL": "memory://",
        }
    )
    client = create_app(settings).test_client()
    headers = {"Authorization": f"Bearer {tokens[17]}"}
    assert client.get("/api/v1/reports", headers=headers).get_json()["reports"] == fast_rows
    assert client.get(f"/api/v1/reports/{one}", headers=headers).get_json() == fast_detail
    # Through the app (auth, scoping, JSON), alternating with the lazy answer call by call.
    listing_api, listing_lazy_again = _paired(lambda: client.get("/api/v1/reports", headers=headers),
                                              lambda: (session.expunge_all(), _lazy_list(session, facility)))
    report_api, report_lazy_again = _paired(lambda: client.get(f"/api/v1/reports/{one}", headers=headers),
                                            lambda: (session.expunge_all(), _lazy_detail(session, one)))
    results.update({
        "listing_api_p95_ms": listing_api["p95_ms"], "listing_api_p50_ms": listing_api["p50_ms"],
        "listing_api_lazy_p95_ms": listing_lazy_again["p95_ms"],
        "report_api_p95_ms": report_api["p95_ms"], "report_api_p50_ms": report_api["p50_ms"],
        "report_api_lazy_p95_ms": report_lazy_again["p95_ms"],
    })
    # A radiologist who serves all 50 facilities: the same page over every facility's reports.
    rad_headers = {"Authorization": f"Bearer {radiologist_token}"}
    assert len(client.get("/api/v1/reports", headers=rad_headers).get_json()["reports"]) == 50
    results["listing_radiologist_api_p95_ms"] = _p95_ms(
        lambda: client.get("/api/v1/reports", headers=rad_headers))
    for name in ("listing", "report"):
        results[f"{name}_speedup_vs_lazy"] = round(
            results[f"{name}_lazy_p95_ms"] / results[f"{name}_query_p95_ms"], 1)
        results[f"{name}_api_speedup_vs_lazy"] = round(
            results[f"{name}_api_lazy_p95_ms"] / results[f"{name}_api_p95_ms"], 1)
    results.update(
        reports=len(report_ids),
        comments=comments,
        facilities=FACILITIES,
        seed_seconds=round(seed_seconds, 1),
        load_avg=[round(v, 2) for v in os.getloadavg()],
    )
    bench_results["reports_listing"] = results
    print("\nreports listing:", results)
    session.close()
    engine.dispose()
    assert results["listing_api_p95_ms"] < 20 and results["report_api_p95_ms"] < 20, results


def test_bench_report_poll_studies_per_second(reports_database, orthanc, tmp_path, bench_results):
    """The same 10,000 studies, delivered twice (two facilities, two destinations on the same
    Orthanc): one destination polled one QIDO-RS query per study (as before batching), the
    other with UID list matching (LIST_BATCH studies a query), rounds of 500 alternating."""
    from pydicom.uid import generate_uid

    from pipeline.accounts.users import create_user
    from pipeline.db.engine import make_engine, make_session_factory
    from pipeline.models import utcnow
    from pipeline.reports import poll
    from pipeline.reports.dicomweb import DicomWebReader
    from pipeline.storage import open_store
    from tests.report_samples import basic_text_sr
    from tests.report_seed import delivered_studies, destination
    from tests.sample_data import synthetic_study

    class PerStudy(DicomWebReader):
        """Never answers a batch: every study is asked about alone (the poll before batching)."""

        def studies_with_reports(self, study_uids):  # noqa: ANN001, ANN202, ARG002
            return {}

    engine = make_engine(reports_database)
    session = make_session_factory(engine)()
    uids = [generate_uid() for _ in range(POLL_STUDIES)]
    store_start = time.perf_counter()
    batch: list[bytes] = []
    with_reports = set(uids[::100])
    for uid in uids:
        batch.extend(synthetic_study(1, study_uid=uid))
        if uid in with_reports:
            batch.append(basic_text_sr(uid, "Bench finding.")[1])
        if len(batch) >= 50:
            assert orthanc.stow(batch).status_code == 200
            batch = []
    if batch:
        assert orthanc.stow(batch).status_code == 200
    store_seconds = time.perf_counter() - store_start
    modes = {}
    for mode, reader in (("per_study", PerStudy), ("batched", DicomWebReader)):
        uploader, _ = create_user(session, f"poll-{mode}@bench.test", f"Bench Poll {mode}", "uploader")
        dest = destination(session, f"bench-poll-{mode}", orthanc.dicomweb_url)
        delivered_studies(session, uploader.facility_id, uploader.id, dest.id, POLL_STUDIES, study_uids=uids)
        modes[mode] = {"destination": dest, "reader": reader, "checked": 0, "read": 0, "rounds": 0,
                       "seconds": 0.0, "more": True}
    session.commit()
    store = open_store(f"file://{tmp_path / 'objects'}")
    now = utcnow()
    while any(m["more"] for m in modes.values()):
        for m in modes.values():
            if not m["more"]:
                continue
            start = time.perf_counter()
            result = poll.poll_destination(session, store, m["destination"],
                                           lambda d, r=m["reader"]: r(d.options["url"]), now, limit=500)
            session.commit()
            m["seconds"] += time.perf_counter() - start
            assert result.state == "ok"
            m["rounds"] += 1
            m["checked"] += result.studies_checked
            m["read"] += result.documents_read
            m["more"] = result.more_due
    results = {"studies": POLL_STUDIES, "orthanc_store_seconds": round(store_seconds, 1)}
    for mode, m in modes.items():
        results[mode] = {"studies_checked": m["checked"], "reports_read": m["read"], "rounds": m["rounds"],
                         "seconds": round(m["seconds"], 1),
                         "studies_per_second": round(m["checked"] / m["seconds"], 1)}
    results["batched_speedup"] = round(results["batched"]["studies_per_second"]
                                       / results["per_study"]["studies_per_second"], 1)
    results["load_avg"] = [round(v, 2) for v in os.getloadavg()]
    bench_results["reports_poll"] = results
    print("\nreport poll:", results)
    session.close()
    engine.dispose()
    for m in modes.values():
        assert m["checked"] == POLL_STUDIES and m["read"] == len(with_reports)
