"""Metrics of the whole fleet on any API process: what a Celery worker (another process) ran
shows in the API's /metrics within a flush interval, beside the API's own request counts."""

from __future__ import annotations

import re
import time

import pytest
import requests

from pipeline.ops.telemetry import FLUSH_SECONDS
from tests.integration.gateway_client import Gateway
from tests.sample_data import synthetic_study

pytestmark = pytest.mark.integration

PARSED = re.compile(r'^relaypacs_tasks_total\{outcome="success",task="dicom.parse_and_group"\} (\S+)$', re.M)
PATCHED = re.compile(r'^relaypacs_http_requests_total\{method="PATCH",route="/api/v1/files/<upload_id>",'
                     r'status="204"\} (\S+)$', re.M)


def _count(pattern: re.Pattern, text: str) -> float:
    found = pattern.search(text)
    return float(found[1]) if found else 0.0


def test_worker_task_counts_reach_the_api_metrics(api_server, worker, make_user):
    metrics_url = f"{api_server.url}/metrics"
    before = requests.get(metrics_url, timeout=10).text
    gateway = Gateway(api_server.url, make_user("Metrics Clinic", "uploader"))
    batch_id = gateway.open_batch(label="metrics")
    files = synthetic_study(3)
    for n, data in enumerate(files):
        gateway.upload(batch_id, data, f"m{n}.dcm")
    gateway.complete(batch_id)
    gateway.wait_state(batch_id, "done", timeout=90)

    # The worker flushes every FLUSH_SECONDS; the API flushes its own counts on /metrics.
    deadline = time.monotonic() + 10 * FLUSH_SECONDS + 5
    while True:
        after = requests.get(metrics_url, timeout=10).text
        if _count(PARSED, after) - _count(PARSED, before) >= len(files) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert _count(PARSED, after) - _count(PARSED, before) >= len(files)
    assert _count(PATCHED, after) - _count(PATCHED, before) >= len(files)
    assert 'relaypacs_task_duration_seconds_count{task="dicom.parse_and_group"}' in after
