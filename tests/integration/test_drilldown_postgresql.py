"""The PostgreSQL drill-down (GROUPING SETS, one scan of a facility's hourly rows for mixes,
users and the series) gives the same answers as the portable statements, on a real
PostgreSQL, for every granularity and for ranges that cut weeks and days."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.analytics import drilldown, stats
from pipeline.db.engine import make_engine, make_session_factory
from pipeline.db.migrate import upgrade_database
from tests.analytics_seed import Seeder
from tests.integration.services import create_database, database_url, drop_database

pytestmark = pytest.mark.integration

END = datetime(2026, 3, 18, 15, tzinfo=UTC)  # a Wednesday afternoon


@pytest.fixture(scope="module")
def seeded() -> Iterator[tuple]:
    name = create_database("relaypacs_drill_")
    url = database_url(name)
    upgrade_database(url)
    engine = make_engine(url)
    session = make_session_factory(engine)()
    try:
        rnd = random.Random(7)
        seed = Seeder(session)
        facilities = []
        for clinic in ("Drill North", "Drill South"):
            users = [seed.user(clinic) for _ in range(3)]
            facilities.append(users[0][0])
            for _ in range(160):
                facility_id, user_id, _ = rnd.choice(users)
                at = END - timedelta(minutes=rnd.randrange(70 * 24 * 60))
                batch = seed.batch(facility_id, user_id, at)
                state = rnd.choice(["parsed"] * 6 + ["quarantined"])
                seed.upload(batch, at, state=state, modality=rnd.choice(["CT", "MR", "CR", None]),
                            study_uid=f"1.2.{rnd.randrange(40)}", length=rnd.randrange(1, 10**6),
                            latencies_ms=(rnd.randrange(50, 90_000),) if state == "parsed" else ())
        stats.rebuild_all(session)
        session.commit()
        yield session, facilities, users
    finally:
        session.close()
        engine.dispose()
        drop_database(name)


RANGES = [
    (None, None),  # the default: the last 30 days to now
    ((END - timedelta(days=65)).isoformat(), END.isoformat()),
    ((END - timedelta(days=20, hours=5)).isoformat(), (END - timedelta(days=3, hours=2)).isoformat()),
    ((END - timedelta(days=9)).date().isoformat(), (END - timedelta(days=1)).date().isoformat()),
]


@pytest.mark.parametrize("granularity", ["hour", "day", "week"])
@pytest.mark.parametrize("bounds", RANGES)
def test_facility_detail_matches_the_portable_statements(seeded, granularity, bounds):
    session, facilities, _ = seeded
    start, end = bounds
    if granularity == "hour" and start is None:
        start = (END - timedelta(days=6)).isoformat()
    rng = drilldown.parse_range(start, end or END.isoformat(), granularity)
    for facility_id in facilities:
        ours = drilldown.facility_detail(session, rng, facility_id)
        portable = drilldown._facility_detail_portable(session, rng, facility_id)
        assert ours == portable
        assert ours["totals"]["uploads"] == sum(p["uploads"] for p in ours["series"]) > 0
        # The overview of that one facility draws the same series from the rollups.
        overview = drilldown.facilities_overview(session, rng, [facility_id])
        assert overview["series"] == ours["series"]
