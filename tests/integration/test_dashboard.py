"""Dashboards on the real stack: files uploaded through the pipeline are materialised by the
analytics worker (the beat's task, sent on the broker), read back through the drill-down
API, and the dashboard page is driven in headless Chromium: it loads, the charts are
drawn, and clicking a facility and then a user drills down."""

from __future__ import annotations

import time

import pytest
from celery import Celery

from beat_schedule import BEAT_SCHEDULE
from tests.integration.analytics_services import chromium_driver
from tests.integration.gateway_client import Gateway
from tests.integration.services import wait_until
from tests.sample_data import synthetic_study

pytestmark = pytest.mark.integration

FACILITY = "Dashboard Clinic"


def refresh_stats(broker_url: str) -> None:
    """What beat sends every minute, sent now (waiting for the tick would cost a minute)."""
    task = BEAT_SCHEDULE["analytics-refresh-stats"]["task"]
    app = Celery("dashboard-test", broker=broker_url, set_as_current=False)
    try:
        app.send_task(task, queue="analytics")
    finally:
        app.close()


@pytest.fixture(scope="module")
def analytics_worker(worker_fleet):
    started = worker_fleet.start("analytics", 1)
    yield started
    started.stop(grace=10)


@pytest.fixture(scope="module")
def populated(api_server, worker_fleet, analytics_worker, add_stow_destination, make_user, gateway_env,
              orthanc):
    worker_fleet.default()  # the pipeline worker (the `worker` fixture is per test)
    orthanc.start()
    add_stow_destination("orthanc-dashboard", facility=FACILITY)
    uploader_token = make_user(FACILITY, "uploader", email="radiographer@dashboard-clinic.test")
    gateway = Gateway(api_server.url, uploader_token)
    batch_id = gateway.open_batch(label="dashboard")
    for i, data in enumerate(synthetic_study(3)):
        gateway.upload(batch_id, data, f"d{i}.dcm")
    gateway.upload(batch_id, b"not dicom at all" * 20, "letter.dcm")
    gateway.complete(batch_id)
    gateway.wait_state(batch_id, "done")
    admin = Gateway(api_server.url, make_user("Dashboard HQ", "admin"))

    def materialised() -> dict | None:
        refresh_stats(gateway_env["RELAYPACS_BROKER_URL"])
        time.sleep(1)
        body = admin.http.get(f"{api_server.url}/api/v1/analytics/facilities", timeout=10).json()
        found = next((f for f in body["facilities"] if f["name"] == FACILITY), None)
        return found if found and found["uploads"] == 4 and found["delivered"] == 3 else None

    wait_until(lambda: materialised() is not None, "hourly stats materialised", timeout=60, interval=0.5)
    return admin, materialised()


def test_drill_down_api_on_the_real_stack(api_server, populated, make_user):
    admin, facility = populated
    assert facility["quarantined"] == 1 and facility["studies"] == 1
    assert facility["latency"]["count"] == 3 and facility["latency"]["p95_ms"] is not None
    detail = admin.http.get(f"{api_server.url}/api/v1/analytics/facilities/{facility['id']}?granularity=hour",
                            timeout=10).json()
    assert detail["status_mix"] == {"parsed": 3, "quarantined": 1}
    user = next(u for u in detail["users"] if u["uploads"])
    base = f"{api_server.url}/api/v1/analytics/facilities/{facility['id']}"
    listing = admin.http.get(f"{base}/users/{user['id']}", timeout=10).json()
    assert len(listing["uploads"]) == 4
    assert sorted(u["state"] for u in listing["uploads"]) == ["parsed"] * 3 + ["quarantined"]
    qa_elsewhere = Gateway(api_server.url, make_user("Dashboard Elsewhere", "qa_manager"))
    refused = qa_elsewhere.http.get(base, timeout=10)
    assert refused.status_code == 403


def test_dashboard_in_headless_chromium(api_server, populated, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    admin, facility = populated
    token = admin.http.headers["Authorization"].split(" ", 1)[1]
    driver = chromium_driver(tmp_path / "profile")
    try:
        wait = WebDriverWait(driver, 20)
        driver.get(f"{api_server.url}/dashboard")
        wait.until(lambda d: d.find_elements(By.ID, "token"))
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.ID, "sign-in").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "body[data-charts-drawn='1']"))
        assert driver.find_elements(By.CSS_SELECTOR, "[data-chart='volume'] svg rect.bar")
        assert driver.find_elements(By.CSS_SELECTOR, "[data-chart='latency'] svg polyline")
        load_ms = driver.execute_script(
            "return performance.getEntriesByName('charts-drawn')[0].startTime")
        assert load_ms < 5000
        driver.save_screenshot(str(tmp_path / "overview.png"))

        driver.find_element(By.LINK_TEXT, FACILITY).click()  # drill down: facility
        wait.until(lambda d: d.find_elements(By.ID, "facility-name"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "body[data-charts-drawn='1']"))
        assert driver.find_element(By.ID, "facility-name").text == FACILITY
        bars = driver.find_elements(By.CSS_SELECTOR, "[data-chart='status'] svg rect.bar")
        assert len(bars) == 2  # parsed, quarantined

        driver.find_element(By.CSS_SELECTOR, "#users tr[data-href] td:nth-child(2)").click()  # the row
        wait.until(lambda d: d.find_elements(By.ID, "user-email"))
        rows = driver.find_elements(By.CSS_SELECTOR, "#uploads tbody tr")
        assert len(rows) == 4
        assert "quarantined" in driver.find_element(By.ID, "uploads").text
    finally:
        driver.quit()
