"""Driving the upload screen in headless Chromium (shared by the integration tests and the
benchmarks): sign in, choose a folder, set the template and overrides, upload, confirm."""

from __future__ import annotations

import time
from pathlib import Path

from tests.integration.analytics_services import chromium_driver
from tests.integration.sign_in_client import make_person


def page_driver(profile: Path, *, width: int = 1280, height: int = 900):  # noqa: ANN201
    driver = chromium_driver(profile)
    driver.set_window_size(width, height)
    return driver


def sign_in_as(env, facility: str, role: str = "uploader") -> tuple[str, str, str]:  # noqa: ANN001
    """(email, password, token) of a new person of the facility."""
    return make_person(env, facility, role)


def signed_in(driver, base_url: str, person: tuple[str, str, str], path: str = "/upload") -> None:  # noqa: ANN001
    """Open ``path`` as ``person`` (signed out first: a fresh session, no storage left)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base_url}/login")
    driver.delete_all_cookies()
    driver.execute_script("localStorage.clear(); sessionStorage.clear()")
    driver.get(f"{base_url}{path}")
    wait = WebDriverWait(driver, 20)
    wait.until(lambda d: d.find_elements(By.ID, "password"))
    driver.find_element(By.ID, "email").send_keys(person[0])
    driver.find_element(By.ID, "password").send_keys(person[1])
    driver.find_element(By.ID, "sign-in").click()
    wait_ready(driver)


def wait_ready(driver, timeout: float = 20) -> None:  # noqa: ANN001
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: d.execute_script("return document.body && document.body.dataset.ready === '1'"))


def choose_files(driver, paths: list[Path]) -> None:  # noqa: ANN001
    """What a person picking files does: the file input gets them."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "pick-files").send_keys("\n".join(str(p) for p in paths))


def choose_folder(driver, folder: Path) -> None:  # noqa: ANN001
    """A folder picked (chromedriver sends a directory to a webkitdirectory input): every file
    comes with its path inside the folder."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "pick-folder").send_keys(str(folder))


def wait_scanned(driver, timeout: float = 60) -> str:  # noqa: ANN001
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(
        "const s = window.relaypacs; return s.files.length && !s.reading && !s.readQueue.length"))
    time.sleep(0.1)  # the status line is written at the next frame
    return driver.execute_script("return document.getElementById('scan-status').textContent")


def wait_uploaded(driver, timeout: float = 120) -> None:  # noqa: ANN001
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(
        "return window.relaypacs.timings.uploaded !== undefined"))


def confirm(driver, timeout: float = 30) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    button = driver.find_element(By.ID, "confirm")
    WebDriverWait(driver, timeout).until(lambda d: button.is_enabled())
    button.click()
