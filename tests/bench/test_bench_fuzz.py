"""A large schemathesis sweep of the running API: request count, 5xx count (target 0) and
the API's P95 latency under that load.

    .venv/bin/python -m pytest -q -m bench tests/bench/test_bench_fuzz.py -s
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings

from tests.bench.conftest import RESULTS_DIR
from tests.bench.helpers import percentile
from tests.integration.test_api_fuzz import SCHEMA, aim_at_ours, target  # noqa: F401 - the fixture

pytestmark = [pytest.mark.bench, pytest.mark.integration]

PER_OPERATION = int(os.environ.get("RELAYPACS_FUZZ_BENCH_EXAMPLES", "250"))
LATENCIES: list[float] = []
SERVED: list[float] = []  # latencies of the answers that were not a rate-limit 429
STATUSES: Counter[int] = Counter()
SERVER_ERRORS: list[str] = []


def _record(case, target, token):  # noqa: ANN001, ANN202, F811
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.perf_counter()
    response = case.call(base_url=target.url, headers=headers, timeout=60)
    LATENCIES.append(time.perf_counter() - started)
    if response.status_code != 429:
        SERVED.append(LATENCIES[-1])
    STATUSES[response.status_code] += 1
    if response.status_code >= 500:
        SERVER_ERRORS.append(f"{case.method} {case.path} -> {response.status_code}")


SWEEP = settings(max_examples=PER_OPERATION, deadline=None, derandomize=True,
                 suppress_health_check=list(HealthCheck))


@SCHEMA.parametrize()
@SWEEP
def test_sweep_with_token(case, target):  # noqa: ANN001, F811
    _record(case, target, target.tokens["owner"])


@SCHEMA.parametrize()
@SWEEP
def test_sweep_other_facility(case, target):  # noqa: ANN001, F811
    aim_at_ours(case, target)  # facility B's token on facility A's batch and upload ids
    _record(case, target, target.tokens["other"])


def test_zz_summary():
    total = len(LATENCIES)
    ordered = sorted(LATENCIES)
    p95 = percentile(ordered, 95)
    result = {
        "requests": total,
        "server_errors": len(SERVER_ERRORS),
        "server_error_examples": SERVER_ERRORS[:20],
        "p50_ms": round(statistics.median(ordered) * 1000, 1) if ordered else None,
        "p95_ms": round(p95 * 1000, 1),
        "served_requests": len(SERVED),
        "served_p95_ms": round(percentile(SERVED, 95) * 1000, 1),
        "statuses": dict(sorted(STATUSES.items())),
        "per_operation_examples": PER_OPERATION,
        "loadavg": os.getloadavg(),
    }
    print(f"\nschemathesis sweep: {total} requests, {len(SERVER_ERRORS)} 5xx, "
          f"P50 {result['p50_ms']} ms, P95 {result['p95_ms']} ms (not 429: {len(SERVED)} requests, "
          f"P95 {result['served_p95_ms']} ms); statuses {result['statuses']}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "fuzz.json").write_text(json.dumps(result, indent=2))
    assert total >= 5000, f"only {total} requests generated"
    assert SERVER_ERRORS == []
