"""Dashboards on the real stack: files uploaded through the pipeline are materialised by the
analytics worker (the beat's task, sent on the broker), read back through the drill-down
API, and the dashboard page is driven in headless Chromium: it loads, the charts are
drawn, and clicking a facility and then a user drills down; and it updates live from the
event stream while it is open."""

from __future__ import annotations

import contextlib
import time

import pytest
import requests
from celery import Celery

from beat_schedule import BEAT_SCHEDULE
from tests.integration.analytics_services import EventsServer, chromium_driver
from tests.integration.gateway_client import Gateway
from tests.integration.services import ApiServer, run_cli, wait_until
from tests.integration.sign_in_client import make_person
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


def sign_in_page(driver, wait, email: str, password: str) -> None:  # noqa: ANN001
    """Fill the sign-in form the browser is on (email and password) and submit it."""
    from selenium.webdriver.common.by import By

    wait.until(lambda d: d.find_elements(By.ID, "password"))
    driver.find_element(By.ID, "email").send_keys(email)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "sign-in").click()


def test_dashboard_in_headless_chromium(api_server, populated, tmp_path, gateway_env):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    admin, facility = populated
    # A stored forecast for the facility page's forecast panel (a day of history: seasonal
    # naive, 7 points with their bands).
    run_cli(["forecast", "--facility", FACILITY, "--horizon", "7"], gateway_env)
    email, password, _ = make_person(gateway_env, "Dashboard HQ", "admin")
    driver = chromium_driver(tmp_path / "profile")
    try:
        wait = WebDriverWait(driver, 20)
        driver.get(f"{api_server.url}/dashboard")
        sign_in_page(driver, wait, email, password)
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
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#forecast[data-drawn='1']"))
        day_chart = driver.find_element(By.CSS_SELECTOR, "[data-forecast-chart='day']")
        assert len(day_chart.find_elements(By.CSS_SELECTOR, "svg circle.fc-point")) == 7
        assert len(day_chart.find_elements(By.CSS_SELECTOR, "svg polygon")) == 2  # the 95% and 80% bands
        assert "no forecast yet" in driver.find_element(By.CSS_SELECTOR, "[data-forecast-chart='hour']").text
        # The panel says why its model is what it is (no complete day of history yet: the note).
        assert "history" in driver.find_element(By.ID, "forecast-reason").text
        # Closures entered on the panel (issue 20) reach the facility's calendar through the API.
        form = driver.find_element(By.ID, "forecast-calendar-form")
        form.find_element(By.NAME, "country").send_keys("GB")
        form.find_element(By.NAME, "closed_days").send_keys("2030-12-27")
        form.find_element(By.NAME, "closes_on_public_holidays").click()
        form.find_element(By.CSS_SELECTOR, "button[type='submit']").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#forecast-calendar[data-saved='1']"))
        facility_id = driver.find_element(By.ID, "forecast-calendar").get_attribute("data-facility")
        calendar = driver.execute_script(
            "return fetch('/api/v1/forecasts/calendars/' + arguments[0]).then(r => r.json())", facility_id)
        assert calendar["country"] == "GB" and calendar["closed_days"] == ["2030-12-27"]
        assert calendar["closes_on_public_holidays"] is True

        driver.find_element(By.CSS_SELECTOR, "#users tr[data-href] td:nth-child(2)").click()  # the row
        wait.until(lambda d: d.find_elements(By.ID, "user-email"))
        rows = driver.find_elements(By.CSS_SELECTOR, "#uploads tbody tr")
        assert len(rows) == 4
        assert "quarantined" in driver.find_element(By.ID, "uploads").text
    finally:
        driver.quit()


def test_dashboard_updates_live_from_the_event_stream(populated, gateway_env, make_user, it_dir, tmp_path):
    """The facility page listens to ``relaypacs events``: a file uploaded while it is open
    adds to its numbers at once; once the stats job has materialised that upload, a refetch
    of the page's data keeps the same count (the event is not counted twice)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    admin, facility = populated
    email, password, _ = make_person(gateway_env, "Dashboard HQ", "admin")
    # Served from another port than the page (a proxy would put both on one origin): the
    # page names the stream's URL, and the events process allows the page's origin.
    events = EventsServer(gateway_env, it_dir / "logs" / "events-dashboard.log")
    api = ApiServer(gateway_env, it_dir / "logs" / "api-dashboard-live.log")
    api.env["RELAYPACS_DASHBOARD_EVENTS_URL"] = f"{events.url}/dashboard/events"
    events.env["RELAYPACS_CORS_ORIGINS"] = api.url
    events.start()
    api.start()
    driver = chromium_driver(tmp_path / "profile")
    batch_id = None
    try:
        wait = WebDriverWait(driver, 30)
        driver.get(f"{api.url}/login")
        sign_in_page(driver, wait, email, password)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "body[data-charts-drawn='1']"))
        driver.get(f"{api.url}/dashboard/facilities/{facility['id']}?granularity=hour")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "body[data-live='1']"))
        before = int(driver.find_element(By.ID, "total-uploads").text.replace(",", ""))
        bars_before = _bar_titles(driver)

        uploader = Gateway(api.url, make_user(FACILITY, "uploader"))
        batch_id = uploader.open_batch(label="live")
        uploader.upload(batch_id, synthetic_study(1)[0], "live.dcm")
        wait.until(lambda d: d.find_element(By.ID, "total-uploads").text.replace(",", "") == str(before + 1))
        assert int(driver.find_element(By.CSS_SELECTOR, "body").get_attribute("data-live-applied")) >= 1
        wait.until(lambda d: _bar_titles(d) != bars_before)  # the volume chart was drawn again with it

        # The stats job materialises the upload; the page's refetch must not count it twice.
        uploader.complete(batch_id)
        uploader.wait_state(batch_id, "done")
        batch_id = None

        def materialised() -> bool:
            refresh_stats(gateway_env["RELAYPACS_BROKER_URL"])
            time.sleep(1)
            url = f"{api.url}/api/v1/analytics/facilities/{facility['id']}"
            found = admin.http.get(url, timeout=10).json()
            return found["totals"]["uploads"] == before + 1 and found["totals"]["delivered"] == 4

        wait_until(materialised, "the live upload materialised", timeout=60, interval=0.5)
        driver.execute_script("document.body.removeAttribute('data-live-refetched');"
                              " window.relaypacsDashboard.refetch();")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "body[data-live-refetched]"))
        assert driver.find_element(By.ID, "total-uploads").text.replace(",", "") == str(before + 1)
        assert driver.find_element(By.ID, "total-delivered").text.replace(",", "") == "4"
    finally:
        driver.quit()
        if batch_id is not None:
            # Failed half way: finish the live batch here, or its quiet-batch dispatch would
            # put a stray instance into the next test's Orthanc.
            with contextlib.suppress(Exception):
                uploader.complete(batch_id)
                uploader.wait_state(batch_id, "done")
        api.stop(grace=5)
        events.stop(grace=5)


def test_sign_in_survives_a_reload_and_sign_out_ends_it(api_server, gateway_env, tmp_path):
    """A person signs in on the page, reloads (still signed in), signs out: a reload and the
    back button show the sign-in page, and the old cookie no longer works on the API."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    email, password, _ = make_person(gateway_env, "Dashboard Sign-in Clinic", "qa_manager")
    driver = chromium_driver(tmp_path / "profile")
    try:
        wait = WebDriverWait(driver, 20)
        driver.get(f"{api_server.url}/dashboard")
        assert "/login" in driver.current_url
        driver.find_element(By.ID, "password")  # the sign-in form
        sign_in_page(driver, wait, email, password)
        wait.until(lambda d: d.find_elements(By.ID, "sign-out"))
        signed_in_url = driver.current_url
        assert "/dashboard/facilities/" in signed_in_url
        cookie = driver.get_cookie("relaypacs_session")
        assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/"
        assert not driver.execute_script("return document.cookie").count("relaypacs_session")

        driver.refresh()  # still signed in
        wait.until(lambda d: d.find_elements(By.ID, "sign-out"))
        assert driver.current_url == signed_in_url

        driver.find_element(By.ID, "sign-out").click()
        wait.until(lambda d: d.find_elements(By.ID, "password"))
        assert "/login" in driver.current_url
        driver.back()  # the dashboard page is not served from a cache: asked again, signed out
        wait.until(lambda d: d.find_elements(By.ID, "password") and "/login" in d.current_url)
        assert not driver.find_elements(By.ID, "sign-out")
        driver.get(signed_in_url)
        wait.until(lambda d: d.find_elements(By.ID, "password"))
        assert "/login" in driver.current_url

        # Whoever kept a copy of the cookie: the server ended the session.
        old = requests.get(f"{api_server.url}/api/v1/batches", timeout=10,
                           cookies={"relaypacs_session": cookie["value"]})
        assert old.status_code == 401
    finally:
        driver.quit()


def _bar_titles(driver) -> list[str]:  # noqa: ANN001
    # One script, not an element per title: a live redraw between finding the titles and
    # reading them would leave stale elements.
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(\"[data-chart='volume'] svg rect.bar title\"))"
        ".map(t => t.textContent);")
