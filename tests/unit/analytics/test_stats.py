"""Hourly stats materialisation: totals, histograms, incremental runs, late rows, idempotence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from pipeline.analytics import stats
from pipeline.models import DailyFacilityStats, Delivery, HourlyStats, Upload
from tests.analytics_seed import Seeder

T0 = datetime(2026, 3, 2, 10, 15, tzinfo=UTC)


def snapshot(session) -> list[tuple]:
    rows = session.scalars(select(HourlyStats).order_by(
        HourlyStats.hour, HourlyStats.facility_id, HourlyStats.modality, HourlyStats.status)).all()
    return [(r.hour, r.facility_id, r.modality, r.status, r.user_id, r.uploads, r.bytes, r.studies,
             r.quarantined, r.delivered, r.pending_deliveries, r.latency_sum_ms, r.open,
             tuple(getattr(r, c) for c in stats.BUCKET_COLUMNS)) for r in rows]


def test_percentiles_from_histogram():
    counts = [0] * len(stats.BUCKET_COLUMNS)
    assert stats.percentile_from_buckets(counts, 50) is None
    counts[stats.bucket_index(300)] = 10  # all in [250, 500)
    assert 250 <= stats.percentile_from_buckets(counts, 50) <= 500
    counts[stats.bucket_index(40_000)] = 10  # half in [30 s, 60 s)
    assert stats.percentile_from_buckets(counts, 95, max_ms=45_000) > 30_000
    assert stats.percentile_from_buckets(counts, 95, max_ms=45_000) <= 45_000
    assert stats.bucket_index(10**9) == len(stats.BUCKET_COLUMNS) - 1


def test_hour_runs_merge_neighbours():
    h = T0.replace(minute=0)
    runs = stats.hour_runs([h, h + timedelta(hours=1), h + timedelta(hours=5)])
    assert runs == [(h, h + timedelta(hours=2)), (h + timedelta(hours=5), h + timedelta(hours=6))]


@pytest.fixture
def seeded(session):
    seed = Seeder(session)
    facility_id, user_id, _ = seed.user("Stats Clinic")
    batch = seed.batch(facility_id, user_id, T0)
    seed.upload(batch, T0, latencies_ms=(300, 1_200))
    seed.upload(batch, T0 + timedelta(minutes=5), latencies_ms=(100,))
    seed.upload(batch, T0 + timedelta(minutes=6), state="quarantined", length=50)
    seed.upload(batch, T0 + timedelta(hours=2), state="received", length=70)
    session.commit()
    return seed, facility_id, user_id, batch


def test_first_run_materialises_every_hour(session, seeded):
    _, facility_id, user_id, _ = seeded
    result = stats.refresh(session, now=T0 + timedelta(hours=3))
    session.commit()
    assert result.full
    rows = {(r[2], r[3]): r for r in snapshot(session)}
    parsed = rows[("CT", "parsed")]
    assert parsed[5:11] == (2, 2000, 1, 0, 3, 0)  # uploads, bytes, studies, quarantined, delivered
    assert parsed[11] == 1600 and not parsed[12]
    assert sum(parsed[13]) == 3
    assert rows[("", "quarantined")][8] == 1
    assert rows[("", "received")][12] is True  # still being received: open
    day = session.scalars(select(DailyFacilityStats)).one()
    assert (day.uploads, day.bytes, day.delivered, day.quarantined) == (4, 2120, 3, 1)


def test_rerun_is_idempotent_and_open_slices_settle(session, seeded):
    seed, facility_id, user_id, batch = seeded
    stats.refresh(session, now=T0 + timedelta(hours=3))
    session.commit()
    before = snapshot(session)
    stats.refresh(session, now=T0 + timedelta(hours=3, minutes=1))
    session.commit()
    assert snapshot(session) == before

    # The received upload is quarantined later without any timestamp moving: the open slice
    # is recomputed anyway.
    upload = session.scalars(select(Upload).where(Upload.state == "received")).one()
    upload.state = "quarantined"
    session.commit()
    stats.refresh(session, now=T0 + timedelta(hours=5))
    session.commit()
    statuses = {(r[3], r[12]) for r in snapshot(session)}
    assert ("quarantined", False) in statuses and ("received", True) not in statuses


def _materialise_then_add_late_row(session, seed, batch) -> datetime:  # noqa: ANN001
    """Materialise up to two days after T0, then add (uncommitted) a row for the day before
    T0 that arrives only now (a clinic's clock, a DIMSE resend); returns its time."""
    stats.refresh(session, now=T0 + timedelta(days=2))
    session.commit()
    late = T0 - timedelta(days=1)
    seed.upload(batch, late, updated_at=T0 + timedelta(days=2, minutes=1), latencies_ms=(5_000,))
    return late


def test_late_rows_and_late_deliveries_are_counted(session, seeded):
    seed, facility_id, user_id, batch = seeded
    late = _materialise_then_add_late_row(session, seed, batch)
    # And a delivery of an old upload completes now.
    delivery = session.scalars(select(Delivery).where(Delivery.latency_ms == 100)).one()
    delivery.latency_ms = 700
    delivery.updated_at = T0 + timedelta(days=2, minutes=1)
    session.commit()
    result = stats.refresh(session, now=T0 + timedelta(days=2, minutes=2))
    session.commit()
    assert not result.full
    incremental = snapshot(session)
    assert any(r[0] == late.replace(minute=0) and r[5] == 1 for r in incremental)
    parsed = next(r for r in incremental if r[0] == T0.replace(minute=0) and r[3] == "parsed")
    assert parsed[11] == 300 + 1_200 + 700
    # The incremental result equals a rebuild from scratch.
    stats.rebuild_all(session, now=T0 + timedelta(days=2, minutes=3))
    session.commit()
    assert snapshot(session) == incremental
    days = session.scalars(select(DailyFacilityStats).order_by(DailyFacilityStats.day)).all()
    assert [d.uploads for d in days] == [1, 4]


def test_weekly_rollup_follows_late_rows_and_week_answers_match_hourly(session, seeded):
    from pipeline.analytics import drilldown
    from pipeline.models import WeeklyFacilityStats

    seed, facility_id, _, batch = seeded
    # T0 is a Monday: the late row for the Sunday before lands in the previous ISO week.
    _materialise_then_add_late_row(session, seed, batch)
    session.commit()
    stats.refresh(session, now=T0 + timedelta(days=2, minutes=2))
    session.commit()
    weeks = session.scalars(select(WeeklyFacilityStats).order_by(WeeklyFacilityStats.week)).all()
    assert [(stats._as_datetime(w.week), w.uploads) for w in weeks] == [
        (T0.replace(hour=0, minute=0) - timedelta(weeks=1), 1), (T0.replace(hour=0, minute=0), 4)]
    # A range starting mid-week and ending mid-week: whole weeks from the weekly rows, edge
    # days from the daily ones, the same answer as summing the hourly rows.
    rng = drilldown.parse_range((T0 - timedelta(days=3)).date().isoformat(),
                                (T0 + timedelta(days=9)).date().isoformat(), "week")
    detail = drilldown.facility_detail(session, rng, facility_id)
    assert [p["uploads"] for p in detail["series"]] == [1, 4, 0]
    assert detail["totals"]["uploads"] == sum(p["uploads"] for p in detail["series"]) == 5
    overview = drilldown.facilities_overview(session, rng, [facility_id])
    assert overview["series"] == detail["series"]
    assert overview["facilities"][0]["uploads"] == 5
    assert overview["totals"]["latency"] == detail["totals"]["latency"]


def test_latency_summary_is_plain_numbers_from_postgresql_decimals():
    """PostgreSQL's SUM comes back as Decimal; Flask would write it as a JSON string."""
    import json
    from decimal import Decimal
    from types import SimpleNamespace

    row = SimpleNamespace(**{name: Decimal(0) for name in stats.BUCKET_COLUMNS},
                          latency_sum_ms=Decimal("3001"), latency_max_ms=Decimal("2000"))
    setattr(row, stats.BUCKET_COLUMNS[2], Decimal(2))
    summary = stats.latency_summary(row)
    assert json.loads(json.dumps(summary)) == summary  # plain JSON numbers, nothing else
    assert summary["count"] == 2 and summary["mean_ms"] == 1500.5 and summary["max_ms"] == 2000
    empty = SimpleNamespace(**{name: Decimal(0) for name in stats.BUCKET_COLUMNS},
                            latency_sum_ms=Decimal(0), latency_max_ms=Decimal(0))
    assert stats.latency_summary(empty) == {"count": 0, "mean_ms": None, "p50_ms": None,
                                            "p95_ms": None, "max_ms": None}
