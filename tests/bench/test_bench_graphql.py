"""GraphQL against REST for one screen, at a million uploads.

The screen: a radiographer's dashboard, their latest batches with each batch's files
(state, offset), the study each file was grouped into and that study's delivery status. Over
REST a client needs ``GET /api/v1/batches?limit=N`` and then ``GET /api/v1/batches/ID`` for
each batch (N + 1 requests); over GraphQL one ``dashboard`` query. Measured in-process
(Flask's test client on the real PostgreSQL copy of the analytics seed: the HTTP hop is the
same for both and left out), P50/P95 of the whole screen over RUNS repetitions, and the SQL
statements it costs (SQLAlchemy's before_cursor_execute).

Seed: the analytics benchmark's template (tests/bench/analytics_data.py: 1,000,000 uploads
over 50 facilities and two years, by generate_series; RELAYPACS_BENCH_UPLOADS to change),
copied per run. Results: tests/bench/results/graphql.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import event, text

from pipeline.accounts.users import hash_token
from pipeline.db.engine import make_engine
from tests.bench.helpers import percentile
from tests.bench.test_bench_analytics import UPLOADS, seeded_template
from tests.integration.services import _admin_connection, database_url, drop_database, run_cli

pytestmark = [pytest.mark.bench, pytest.mark.integration]

RUNS = int(os.environ.get("BENCH_GRAPHQL_RUNS", "30"))
PAGE = int(os.environ.get("BENCH_GRAPHQL_PAGE", "10"))
RESULTS_FILE = Path(__file__).parent / "results" / "graphql.json"

SCREEN = """
query Screen($n: Int!) {
  dashboard(limit: $n) {
    user { id email }
    batches { id label state created_at completed_at
              uploads(limit: 50) { id state offset length
                                   study { id study_instance_uid modality
                                           delivery_status { destination state count } } } }
  }
}"""


@pytest.fixture(scope="module")
def screen_app(gateway_env, tmp_path_factory) -> Iterator[dict]:
    template, _end, seed_seconds, built = seeded_template(gateway_env)
    name = f"relaypacs_bench_gql_{secrets.token_hex(4)}"
    with contextlib.closing(_admin_connection()) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    url = database_url(name)
    env = {**gateway_env, "RELAYPACS_DATABASE_URL": url}
    run_cli(["db", "upgrade"], env)  # migrations newer than the template (the outbox)
    engine = make_engine(url)
    token = "rp_" + secrets.token_urlsafe(32)
    with engine.begin() as conn:  # the busiest seeded radiographer signs in with a token of ours
        user_id = conn.execute(text("SELECT user_id FROM batches GROUP BY user_id ORDER BY count(*) DESC"
                                    " LIMIT 1")).scalar_one()
        conn.execute(text("UPDATE users SET token_hash = :h WHERE id = :u"),
                     {"h": hash_token(token), "u": user_id})
    from api import create_app
    from config import load_settings

    settings = load_settings({"RELAYPACS_DATABASE_URL": url, "RELAYPACS_BROKER_URL": "memory://",
                              "RELAYPACS_VAR_DIR": str(tmp_path_factory.mktemp("gql")),
                              "RELAYPACS_RATE_LIMITS": "upload=1000000,read=1000000,write=1000000"})
    app = create_app(settings)
    app_engine = app.extensions["relaypacs"].session_factory.kw["bind"]
    try:
        yield {"client": app.test_client(), "engine": app_engine, "token": token,
               "seed": {"uploads": UPLOADS, "template": template, "seconds": seed_seconds, "built": built}}
    finally:
        app_engine.dispose()
        engine.dispose()
        drop_database(name)


def _measure(engine, screen) -> tuple[list[float], int, dict]:  # noqa: ANN001
    statements: list[str] = []

    def count(conn, cursor, statement, *args):  # noqa: ANN001, ANN002
        statements.append(statement)

    screen()  # warm: the schema check, the token cache, PostgreSQL's buffers
    screen()
    timings = []
    event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(RUNS):
            statements.clear()
            started = time.perf_counter()
            shown = screen()
            timings.append(time.perf_counter() - started)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return timings, len(statements), shown


def test_dashboard_screen_graphql_vs_rest(screen_app, bench_results):
    client, token = screen_app["client"], screen_app["token"]
    headers = {"Authorization": f"Bearer {token}"}

    def rest() -> dict:
        listing = client.get(f"/api/v1/batches?limit={PAGE}", headers=headers)
        assert listing.status_code == 200
        batches = listing.get_json()["batches"]
        reports = [client.get(f"/api/v1/batches/{b['id']}", headers=headers) for b in batches]
        assert all(r.status_code == 200 for r in reports)
        return {"batches": len(batches), "files": sum(len(r.get_json()["files"]) for r in reports),
                "requests": 1 + len(reports)}

    def graphql() -> dict:
        answer = client.post("/api/v1/graphql", json={"query": SCREEN, "variables": {"n": PAGE}},
                             headers=headers)
        body = answer.get_json()
        assert answer.status_code == 200 and "errors" not in body, body.get("errors")
        batches = body["data"]["dashboard"]["batches"]
        return {"batches": len(batches), "files": sum(len(b["uploads"]) for b in batches), "requests": 1}

    results = {}
    for name, screen in (("rest", rest), ("graphql", graphql)):
        timings, statements, shown = _measure(screen_app["engine"], screen)
        results[name] = {"p50_ms": round(statistics.median(timings) * 1000, 1),
                         "p95_ms": round(percentile(timings, 95) * 1000, 1),
                         "statements": statements, **shown}
    assert results["graphql"]["batches"] == results["rest"]["batches"] == PAGE
    ratio = {"p95": round(results["rest"]["p95_ms"] / results["graphql"]["p95_ms"], 2),
             "statements": round(results["rest"]["statements"] / results["graphql"]["statements"], 2)}
    document = {"seed": screen_app["seed"], "runs": RUNS, "page": PAGE, **results,
                "rest_over_graphql": ratio, "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": "flock /tmp/relaypacs-bench.lock .venv/bin/python -m pytest -q -m bench "
                           "tests/bench/test_bench_graphql.py -s", "host": {"cpus": os.cpu_count()}}
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(document, indent=2) + "\n")
    bench_results["graphql"] = document
    print(f"\ndashboard screen at {UPLOADS:,} uploads, {PAGE} batches, {RUNS} runs:\n"
          f"{json.dumps(document, indent=2)}")
    # One request, and fewer statements than the N + 1 REST calls it replaces.
    assert results["graphql"]["statements"] < results["rest"]["statements"]
