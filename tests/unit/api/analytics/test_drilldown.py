"""Drill-down API and dashboard pages: scoping, shapes, and a fixed number of SQL statements
per listing request whatever the page size (no N+1)."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event

from pipeline.analytics import drilldown, stats
from tests.analytics_seed import Seeder

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


@pytest.fixture
def world(session, make_token):
    seed = Seeder(session)
    north, uploader, _ = seed.user("Analytics North")
    south, other, _ = seed.user("Analytics South")
    batch = seed.batch(north, uploader, NOW - timedelta(days=2))
    for i in range(60):
        seed.upload(batch, NOW - timedelta(days=2, minutes=-i), study_uid=f"1.2.{i % 7}",
                    modality="MR" if i % 3 else "CT", latencies_ms=(400 + i, 2_000 + i))
    seed.upload(batch, NOW - timedelta(days=1), state="quarantined")
    seed.upload(seed.batch(south, other, NOW - timedelta(days=1)), NOW - timedelta(days=1))
    session.commit()
    stats.refresh(session)
    session.commit()
    return {
        "north": north, "south": south, "uploader": uploader,
        "admin": make_token("Analytics HQ", "admin"),
        "qa_north": make_token("Analytics North", "qa_manager"),
        "uploader_token": make_token("Analytics North", "uploader"),
    }


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def counted(app):
    engine = app.extensions["relaypacs"].session_factory.kw["bind"]
    statements: list[str] = []

    def count(conn, cursor, statement, *args):  # noqa: ANN001, ANN002
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_admin_sees_every_facility_qa_manager_only_theirs(client, world):
    everyone = client.get("/api/v1/analytics/facilities", headers=auth(world["admin"])).get_json()
    names = {f["name"]: f for f in everyone["facilities"]}
    assert names["Analytics North"]["uploads"] == 61
    assert names["Analytics North"]["quarantined"] == 1
    assert names["Analytics South"]["uploads"] == 1
    assert everyone["totals"]["delivered"] >= 120
    assert sum(p["uploads"] for p in everyone["series"]) == everyone["totals"]["uploads"]

    own = client.get("/api/v1/analytics/facilities", headers=auth(world["qa_north"])).get_json()
    assert [f["name"] for f in own["facilities"]] == ["Analytics North"]
    other = client.get(f"/api/v1/analytics/facilities/{world['south']}", headers=auth(world["qa_north"]))
    assert other.status_code == 403
    refused = client.get("/api/v1/analytics/facilities", headers=auth(world["uploader_token"]))
    assert refused.status_code == 403
    assert client.get("/api/v1/analytics/facilities").status_code == 401
    bad = client.get("/api/v1/analytics/facilities?granularity=minute", headers=auth(world["admin"]))
    assert bad.status_code == 400 and "granularity" in bad.get_json()["error"]["message"]


def test_facility_and_user_drill_down(client, world):
    facility = client.get(f"/api/v1/analytics/facilities/{world['north']}?granularity=hour",
                          headers=auth(world["qa_north"])).get_json()
    assert facility["totals"]["uploads"] == 61
    # A study keeps the modality it was first seen with: studies 0, 3, 6 (of 7) are CT.
    assert facility["modality_mix"] == {"MR": 34, "CT": 26, "unknown": 1}
    assert facility["status_mix"] == {"parsed": 60, "quarantined": 1}
    assert facility["totals"]["latency"]["p50_ms"] is not None
    uploader = next(u for u in facility["users"] if u["id"] == world["uploader"])
    assert uploader["uploads"] == 61
    user = client.get(f"/api/v1/analytics/facilities/{world['north']}/users/{world['uploader']}?limit=10",
                      headers=auth(world["admin"])).get_json()
    assert len(user["uploads"]) == 10
    assert user["uploads"][0]["created_at"] > user["uploads"][-1]["created_at"]
    parsed = [u for u in user["uploads"] if u["state"] == "parsed"]
    assert parsed and parsed[0]["deliveries"] == {"delivered": 2}
    missing = client.get(f"/api/v1/analytics/facilities/{world['south']}/users/{world['uploader']}",
                         headers=auth(world["admin"]))
    assert missing.status_code == 404


def test_listing_statement_count_does_not_grow_with_rows(app, client, world):
    url = f"/api/v1/analytics/facilities/{world['north']}/users/{world['uploader']}"
    # Warm up: the first use of a token writes an audit row once.
    assert client.get(f"{url}?limit=1", headers=auth(world["admin"])).status_code == 200
    with counted(app) as few:
        assert client.get(f"{url}?limit=5", headers=auth(world["admin"])).status_code == 200
    with counted(app) as many:
        assert len(client.get(f"{url}?limit=50", headers=auth(world["admin"])).get_json()["uploads"]) == 50
    assert len(many) == len(few)

    # The naive listing, for contrast, issues statements per row.
    session = app.extensions["relaypacs"].session_factory()
    rng = drilldown.parse_range(None, None, "day")
    with counted(app) as naive:
        rows = drilldown.upload_listing_naive(session, world["uploader"], rng, limit=50)
    with counted(app) as eager:
        assert drilldown.upload_listing(session, world["uploader"], rng, limit=50) == rows
    session.close()
    assert len(eager) <= 4 < 3 * 49 < len(naive)


def test_dashboard_pages_render_after_sign_in(client, world, sign_in):
    assert client.get("/dashboard").status_code == 302
    assert sign_in(client, world["uploader_token"]).status_code == 302
    assert client.get("/dashboard").status_code == 403  # signed in, but not a viewer
    signed = sign_in(client, world["admin"], next="/dashboard")
    assert signed.status_code == 302 and "HttpOnly" in signed.headers["Set-Cookie"]
    page = client.get("/dashboard")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Analytics North" in html and 'id="dashboard-data"' in html
    facility = client.get(f"/dashboard/facilities/{world['north']}?granularity=hour")
    assert facility.status_code == 200 and "user-link" in facility.get_data(as_text=True)
    assert client.get(f"/dashboard/facilities/{world['north']}/users/{world['uploader']}").status_code == 200
    assert client.get("/dashboard/static/dashboard.js").status_code == 200
    assert "plot.js" in html and client.get("/dashboard/static/plot.js").status_code == 200
    offsite = sign_in(client, world["admin"], next="https://evil.test/")
    assert offsite.headers["Location"] in ("/dashboard", "/dashboard/")


def csrf(client, world) -> str:  # noqa: ANN001
    page = client.get(f"/dashboard/facilities/{world['north']}").get_data(as_text=True)
    return page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]


def test_qa_manager_dashboard_is_their_facility(client, world, sign_in):
    sign_in(client, world["qa_north"])
    landing = client.get("/dashboard")
    assert landing.status_code == 302
    assert landing.headers["Location"].endswith(f"/facilities/{world['north']}")
    assert client.get(landing.headers["Location"]).status_code == 200
    assert client.get(f"/dashboard/facilities/{world['south']}").status_code == 403
    client.post("/logout", data={"csrf_token": csrf(client, world)})
    assert client.get(f"/dashboard/facilities/{world['north']}").status_code == 302  # signed out


def test_live_dashboard_names_its_stream_and_serves_its_data_scoped(client, world, sign_in):
    sign_in(client, world["qa_north"])
    page = client.get(f"/dashboard/facilities/{world['north']}").get_data(as_text=True)
    assert 'data-events-url="/dashboard/events"' in page
    assert f'data-facility-id="{world["north"]}"' in page
    data = client.get(f"/dashboard/facilities/{world['north']}?format=json")
    assert data.status_code == 200 and data.is_json
    body = data.get_json()
    assert body["facility"]["id"] == world["north"] and "as_of" in body
    assert sum(p["uploads"] for p in body["series"]) == body["totals"]["uploads"]
    # The JSON is the page's data: the same facility scoping.
    assert client.get(f"/dashboard/facilities/{world['south']}?format=json").status_code == 403
    client.post("/logout", data={"csrf_token": csrf(client, world)})
    assert client.get(f"/dashboard/facilities/{world['north']}?format=json").status_code == 302
