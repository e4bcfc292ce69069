"""The reader assignments page (/dashboard/readers) in headless Chromium on the real API: an
admin assigns a radiologist to another facility with subspecialties, is told why an
assignment the API refuses was refused, and ends it, by clicking as a person does; each
change is the API's (stored, audited with the admin as actor)."""

from __future__ import annotations

import secrets

import pytest

from tests.integration.analytics_services import chromium_driver
from tests.integration.gateway_client import Gateway
from tests.integration.sign_in_client import make_person
from tests.integration.upload_screen import signed_in

pytestmark = pytest.mark.integration


def test_an_admin_assigns_and_ends_a_reader_from_the_page(api_server, gateway_env, make_user, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    reader_email = f"rad-{secrets.token_hex(4)}@readers-hub.test"
    make_user("Readers Hub", "radiologist", email=reader_email)
    make_user("Readers North", "uploader")  # the facility the reader will read for
    admin = make_person(gateway_env, "Readers Hub", "admin")
    api = Gateway(api_server.url, admin[2])
    me = api.http.post(f"{api_server.url}/api/v1/graphql", json={"query": "{ me { id email } }"},
                       timeout=10).json()["data"]["me"]
    assert me["email"] == admin[0]
    me["id"] = int(me["id"])
    driver = chromium_driver(tmp_path / "profile")
    try:
        signed_in(driver, api_server.url, admin, path="/dashboard/readers")
        wait = WebDriverWait(driver, 20)
        reader = Select(driver.find_element(By.ID, "reader"))
        reader.select_by_visible_text(reader_email)
        reader_id = int(reader.first_selected_option.get_attribute("value"))

        # The reader's own facility: the API refuses, and the page says why.
        Select(driver.find_element(By.ID, "facility")).select_by_visible_text("Readers Hub")
        driver.find_element(By.ID, "assign-button").click()
        wait.until(lambda d: d.find_element(By.ID, "readers-error").text)
        assert "own facility" in driver.find_element(By.ID, "readers-error").text

        facility = Select(driver.find_element(By.ID, "facility"))
        facility.select_by_visible_text("Readers North")
        north = int(facility.first_selected_option.get_attribute("value"))
        driver.find_element(By.ID, "subspecialties").send_keys("Neuro, msk")
        driver.find_element(By.ID, "assign-button").click()
        row = f'#assignments tr[data-user="{reader_id}"][data-facility="{north}"]'
        listed = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, row))
        assert reader_email in listed.text and "msk, neuro" in listed.text
        stored = api.http.get(f"{api_server.url}/api/v1/reader-assignments?user_id={reader_id}",
                              timeout=10).json()["assignments"]
        assert [(a["facility_id"], a["subspecialties"], a["created_by"]) for a in stored] == [
            (north, ["msk", "neuro"], me["id"])]

        listed.find_element(By.CSS_SELECTOR, "button.remove").click()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, row))
        assert api.http.get(f"{api_server.url}/api/v1/reader-assignments?user_id={reader_id}",
                            timeout=10).json()["assignments"] == []
    finally:
        driver.quit()
    events = api.http.get(f"{api_server.url}/api/v1/audit?user_id={me['id']}", timeout=10).json()["events"]
    audited = [(e["action"], e["target"], e["detail"].get("facility_id")) for e in reversed(events)
               if e["action"].startswith("reader.")]
    assert audited == [("reader.assigned", f"user:{reader_id}", north),
                       ("reader.unassigned", f"user:{reader_id}", north)]
