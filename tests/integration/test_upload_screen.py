"""The upload screen, its study board and the phone page in headless Chromium on the real
stack (API, workers, PostgreSQL, Redis, S3, Orthanc): a folder of 200 files with a template
and an override reaches Orthanc with their values once confirmed, a non-DICOM file is listed as
skipped, a series (by finger and keyboard) and a single instance (by mouse, after a reload,
from the server's listing) moved on the board arrive under their new study, a mouse drag
survives the board's data changing under it, a reload mid-upload resumes
without sending finished files again, a phone-sized window sends a photo, and another
facility's batch cannot be reached from the pages."""

from __future__ import annotations

import io
import time

import pydicom
import pytest

from tests.clinic_samples import large_instance, patient_study, uids_of
from tests.integration.gateway_client import Gateway
from tests.integration.services import wait_until
from tests.integration.upload_screen import (
    choose_files,
    choose_folder,
    confirm,
    page_driver,
    sign_in_as,
    signed_in,
    wait_ready,
    wait_scanned,
    wait_uploaded,
)

pytestmark = pytest.mark.integration

FACILITY = "Screen Clinic"
# The issue's scenario: a folder of 200 files (two patients) with a template and an override.
FOLDER_FILES = 200
TEMPLATE = {"name": "XR hand", "attributes": {"InstitutionName": "Screen Clinic East",
                                               "StudyDescription": "XR hand two views"}}


@pytest.fixture(scope="module")
def destination(add_stow_destination):
    return add_stow_destination("orthanc-screen", facility=FACILITY)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module (its start is the slow part); each test signs
    in afresh with cookies and storage cleared."""
    driver = page_driver(tmp_path_factory.mktemp("chromium") / "profile")
    yield driver
    driver.quit()


@pytest.fixture
def driver(browser):
    browser.set_window_size(1280, 900)
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    return browser


@pytest.fixture(scope="module")
def person(gateway_env):
    return sign_in_as(gateway_env, FACILITY)


def write(folder, files: dict[str, bytes]) -> list:
    paths = []
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


def sent(orthanc, data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(orthanc.instance_bytes(uids_of(data)[2])))


def test_folder_with_template_and_override_reaches_orthanc(tmp_path, api_server, worker, destination,
                                                          orthanc_clean, person, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    p1 = patient_study(FOLDER_FILES * 3 // 5, patient_id="SCR-1", name="Doe^Jon")
    p2 = patient_study(FOLDER_FILES - len(p1), patient_id="SCR-2", name="Roe^Ann")
    files = {f"p1/IM{i:03d}": d for i, d in enumerate(p1)} | {f"p2/IM{i:03d}": d for i, d in enumerate(p2)}
    files["p1/README.txt"] = b"exported by the modality; not an image\n" * 10
    write(tmp_path / "folder", files)

    token = person[2]
    created = Gateway(api_server.url, token).http.post(f"{api_server.url}/api/v1/templates", json=TEMPLATE,
                                                       timeout=10)
    assert created.status_code == 201, created.text
    signed_in(driver, api_server.url, person)
    choose_folder(driver, tmp_path / "folder")
    assert wait_scanned(driver) == f"{FOLDER_FILES} DICOM files, 1 skipped"
    # The list is virtualised: scrolled to the skipped file's row, as a person would.
    driver.execute_script("const i = window.relaypacs.files.findIndex((f) => f.skipped);"
                          " document.getElementById('files').scrollTop = Math.max(0, i - 2) * 24")
    skipped = WebDriverWait(driver, 5).until(lambda d: d.find_element(By.CSS_SELECTOR, '#files .row.skipped'))
    assert "README.txt" in skipped.text and "skipped: not a DICOM file" in skipped.text

    WebDriverWait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#template option")) > 1)
    Select(driver.find_element(By.ID, "template")).select_by_visible_text("XR hand")
    values = {r.find_element(By.CSS_SELECTOR, ".kw").get_attribute("value"):
              r.find_element(By.CSS_SELECTOR, ".val") for r in
              driver.find_elements(By.CSS_SELECTOR, "#template-values tbody tr")}
    assert set(values) == {"InstitutionName", "StudyDescription"}
    values["StudyDescription"].clear()
    values["StudyDescription"].send_keys("XR left hand two views")  # edited before sending
    override = driver.find_element(By.CSS_SELECTOR, 'textarea[data-patient="SCR-1"]')
    override.send_keys("PatientName=Doe^John\nPatientBirthDate=19800101")
    driver.find_element(By.ID, "start").click()
    wait_uploaded(driver)

    # Held: nothing reaches Orthanc before the person confirms on the board.
    batch_id = int(driver.find_element(By.ID, "batch-id").text)
    gateway = Gateway(api_server.url, token)
    states = {}

    def parsed() -> bool:
        states.update(report=gateway.report(batch_id))
        return states["report"]["totals"]["files_by_state"] == {"parsed": FOLDER_FILES}

    try:
        wait_until(parsed, "files parsed", timeout=120)
    except TimeoutError:
        pytest.fail(f"{states['report']['totals']} {states['report']['files'][:2]}")
    WebDriverWait(driver, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#board .card")) == 3)
    time.sleep(1.5)
    assert orthanc_clean.count() == 0
    confirm(driver)
    wait_until(lambda: orthanc_clean.count() == FOLDER_FILES, "all instances in Orthanc", timeout=180)
    for data in p1:
        ds = sent(orthanc_clean, data)
        assert (str(ds.PatientName), ds.PatientBirthDate) == ("Doe^John", "19800101")
        assert (ds.InstitutionName, ds.StudyDescription) == ("Screen Clinic East", "XR left hand two views")
    for data in p2:
        ds = sent(orthanc_clean, data)
        assert str(ds.PatientName) == "Roe^Ann"
        assert (ds.InstitutionName, ds.StudyDescription) == ("Screen Clinic East", "XR left hand two views")
    WebDriverWait(driver, 30).until(lambda d: "done" in d.find_element(By.ID, "batch-state").text)
    report = gateway.report(batch_id)
    actions = [e["action"] for e in gateway.http.get(f"{api_server.url}/api/v1/audit?target=batch:{batch_id}",
                                                      timeout=10).json().get("events", [])]
    assert report["held"] is False and report["confirmed_at"]
    assert not actions or "batch.confirmed" in actions


def uploaded_two_studies(driver, tmp_path, url: str, person: tuple, patient_id: str, name: str,  # noqa: ANN001
                         accession: str) -> tuple[list[bytes], list[bytes]]:
    """Three instances of one study and two of another (a wrong study UID) of one patient,
    uploaded from the page into a held batch, whose board shows both (and "new study")."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    right = patient_study(3, patient_id=patient_id, name=name, accession=accession)
    wrong = patient_study(2, patient_id=patient_id, name=name, accession=accession)
    paths = write(tmp_path / "f", {f"a{i}": d for i, d in enumerate(right)}
                  | {f"b{i}": d for i, d in enumerate(wrong)})
    signed_in(driver, url, person)
    choose_files(driver, paths)
    assert wait_scanned(driver) == "5 DICOM files, 0 skipped"
    driver.find_element(By.ID, "start").click()
    wait_uploaded(driver)
    WebDriverWait(driver, 30).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#board .card[data-study]")) == 3)
    return right, wrong


def test_series_moved_on_the_board_arrives_under_its_new_study(tmp_path, api_server, worker, destination,
                                                               orthanc_clean, person, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    right, wrong = uploaded_two_studies(driver, tmp_path, api_server.url, person, "SCR-3", "Poe^Eve", "A-7")
    study_a, study_b = uids_of(right[0])[0], uids_of(wrong[0])[0]
    series_b = uids_of(wrong[0])[1]
    wait = WebDriverWait(driver, 30)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#board .problem[data-code="split_study"]'))

    # Dragged with a finger (SortableJS's touch path): the server's preview opens; cancelled.
    touch_drag(driver, f'.series-item[data-series="{series_b}"]', f'.card[data-study="{study_a}"] ul.series')
    dialog = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "dialog.preview #do-move")
                        and d.find_element(By.CSS_SELECTOR, "dialog.preview"))
    assert "Move 2 instances to this study" in dialog.text
    dialog.find_element(By.XPATH, ".//button[text()='Cancel']").click()
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "dialog.preview"))

    # Another session: the page reloaded, the files not chosen again. The board lists a
    # series' instances from the server, and one is dragged with the mouse (real pointer
    # input through Chromium: press, move in steps, release) to study A.
    driver.refresh()
    wait_ready(driver)
    wait.until(lambda d: d.find_element(By.ID, "open-board").is_displayed())
    driver.find_element(By.ID, "open-board").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#board .card[data-study]")) == 3)
    series_b_item = f'.series-item[data-series="{series_b}"]'
    moved_sop = uids_of(wrong[0])[2]
    # The first poll after opening asks for the studies again: the same, so the board is not
    # drawn again, and what is found here is what is clicked and dragged.
    driver.find_element(By.CSS_SELECTOR, f"{series_b_item} .instances-toggle").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'.instance-item[data-sop="{moved_sop}"]'))
    assert len(driver.find_elements(By.CSS_SELECTOR, f"{series_b_item} .instance-item")) == 2
    mouse_drag(driver, driver.find_element(By.CSS_SELECTOR, f'.instance-item[data-sop="{moved_sop}"]'),
               driver.find_element(By.CSS_SELECTOR, f'.card[data-study="{study_a}"] ul.series'))
    dialog = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "dialog.preview #do-move")
                        and d.find_element(By.CSS_SELECTOR, "dialog.preview"))
    assert "Move 1 instances to this study" in dialog.text
    dialog.find_element(By.ID, "do-move").click()
    study_a_meta = f'.card[data-study="{study_a}"] .meta'
    wait.until(lambda d: "4 instances" in d.find_element(By.CSS_SELECTOR, study_a_meta).text)

    # The keyboard way: the series' "Move to" menu, the server's preview, then the move.
    item = driver.find_element(By.CSS_SELECTOR, f'.series-item[data-series="{series_b}"]')
    Select(item.find_element(By.CSS_SELECTOR, "select.move-to")).select_by_value(study_a)
    dialog = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "dialog.preview #do-move") and
                        d.find_element(By.CSS_SELECTOR, "dialog.preview"))
    preview = dialog.text
    first_a = pydicom.dcmread(io.BytesIO(right[0]))
    assert "Move 1 instances to this study" in preview
    assert study_a in preview and str(first_a.StudyID) in preview
    dialog.find_element(By.ID, "do-move").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#board .card[data-study]")) == 2)
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#board .problem"))
    confirm(driver)
    wait_until(lambda: orthanc_clean.count() == 5, "5 instances in Orthanc", timeout=90)
    for data in wrong:
        assert sent(orthanc_clean, data).StudyInstanceUID == study_a
    assert study_b not in {sent(orthanc_clean, d).StudyInstanceUID for d in right + wrong}


def test_a_mouse_drag_survives_the_board_being_redrawn(tmp_path, api_server, worker, destination, person,
                                                       driver):
    """A person is mid-drag (mouse held) when another file of the batch is parsed and the
    page's poll sees the studies change: the drag goes on, the drop opens the server's
    preview, the move reaches the server, and the board then shows the new file's study."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    right, wrong = uploaded_two_studies(driver, tmp_path, api_server.url, person, "SCR-5", "Zoe^Ida", "A-9")
    late = patient_study(1, patient_id="SCR-5", name="Zoe^Ida", accession="A-10")  # arrives mid-drag
    study_a, (study_b, series_b, _), study_late = uids_of(right[0])[0], uids_of(wrong[0]), uids_of(late[0])[0]
    batch_id = int(driver.find_element(By.ID, "batch-id").text)
    wait = WebDriverWait(driver, 30)
    shape = "return window.relaypacs.boardShape || ''"
    wait.until(lambda d: study_a in d.execute_script(shape) and study_b in d.execute_script(shape))
    time.sleep(1)  # the board drawn from that poll's load

    source = f'.series-item[data-series="{series_b}"]'
    target = f'.card[data-study="{study_a}"] ul.series'
    driver.execute_script("document.getElementById('board').scrollIntoView({block: 'start'})")
    (x0, y0), (x1, y1) = _point(driver, source), _point(driver, target)
    # Pressed and moved a third of the way (past Sortable's 3 px tolerance): the drag is on.
    pointer(driver, [("move", x0, y0), ("down",), *_steps(x0, y0, x0 + (x1 - x0) / 3, y0 + (y1 - y0) / 3)])
    assert driver.find_elements(By.CSS_SELECTOR, f"{source}.sortable-chosen")

    # Meanwhile another file of the batch arrives and is parsed; the page's poll sees it.
    Gateway(api_server.url, person[2]).upload(batch_id, late[0], name="late.dcm")
    wait.until(lambda d: study_late in d.execute_script(shape))
    time.sleep(1.5)  # past the board's load that the poll started
    # The drag is still there as the person left it: its copy under the pointer, and the
    # series once on the board (a board drawn anew drops the copy, and shows the series
    # twice: the new board's item and Sortable's placeholder, moved into the new list).
    copies = "return [...document.querySelectorAll('.sortable-fallback')].filter((e) => e.isConnected).length"
    assert driver.execute_script(copies) == 1
    assert len(driver.find_elements(
        By.CSS_SELECTOR, f'#board .series-item[data-series="{series_b}"]:not(.sortable-fallback)')) == 1

    # The drag goes on onto study A and is released: the drop reaches the server.
    xm, ym = x0 + (x1 - x0) / 3, y0 + (y1 - y0) / 3
    pointer(driver, [*_steps(xm, ym, x1, y1), ("up",)])
    dialog = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "dialog.preview #do-move")
                        and d.find_element(By.CSS_SELECTOR, "dialog.preview"))
    assert "Move 2 instances to this study" in dialog.text
    dialog.find_element(By.ID, "do-move").click()
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "dialog.preview"))
    studies = Gateway(api_server.url, person[2]).http.get(
        f"{api_server.url}/api/v1/batches/{batch_id}/studies", timeout=10).json()["studies"]
    by_uid = {s["study_instance_uid"]: s for s in studies}
    assert series_b in {s["series_instance_uid"] for s in by_uid[study_a]["series"]}
    assert by_uid[study_a]["instances"] == 5 and study_late in by_uid
    # The board caught up with what arrived during the drag.
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#board .card[data-study="{study_late}"]'))
    assert "5 instances" in driver.find_element(By.CSS_SELECTOR, f'.card[data-study="{study_a}"] .meta').text


def _point(driver, selector: str) -> tuple[float, float]:  # noqa: ANN001
    """A point inside the element, in viewport pixels."""
    x, y = driver.execute_script(
        "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
        " return [r.x + Math.min(r.width / 2, 40), r.y + Math.min(r.height / 2, 12)]", selector)
    return x, y


def _steps(x0: float, y0: float, x1: float, y1: float, n: int = 10) -> list[tuple]:
    return [("move", x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) for i in range(1, n + 1)]


def pointer(driver, actions: list[tuple]) -> None:  # noqa: ANN001
    """Chromium's own mouse input at viewport points: ("move", x, y), ("down",), ("up",).
    The button stays pressed between calls until an ("up",)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    builder = ActionBuilder(driver, duration=30)
    for action in actions:
        if action[0] == "move":
            builder.pointer_action.move_to_location(round(action[1]), round(action[2]))
        elif action[0] == "down":
            builder.pointer_action.pointer_down()
        else:
            builder.pointer_action.pointer_up()
    builder.perform()


def mouse_drag(driver, source, target) -> None:  # noqa: ANN001
    """A person dragging with the mouse: press on ``source``, move onto ``target`` in small
    steps, release (WebDriver actions: Chromium's own mouse input, not synthetic DOM events)."""
    from selenium.webdriver.common.action_chains import ActionChains

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", target)
    chain = ActionChains(driver, duration=50).move_to_element(source).click_and_hold()
    dx = target.location["x"] + 20 - source.location["x"]
    dy = target.location["y"] + 8 - source.location["y"]
    done = (0, 0)
    for i in range(1, 11):
        step = (round(dx * i / 10), round(dy * i / 10))
        chain.move_by_offset(step[0] - done[0], step[1] - done[1])
        done = step
    chain.release().perform()


def touch_drag(driver, source: str, target: str) -> None:  # noqa: ANN001
    """A finger pressing on ``source``, held, moved onto ``target`` and lifted (CDP touch events)."""
    def centre(selector: str) -> tuple[float, float]:
        box = driver.execute_script(
            "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + Math.min(r.height / 2, 12)]", selector)
        return box[0], box[1]

    driver.execute_script("document.querySelector(arguments[0]).scrollIntoView({block: 'center'})", target)
    (x0, y0), (x1, y1) = centre(source), centre(target)
    touch = driver.execute_cdp_cmd
    touch("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x0, "y": y0}]})
    time.sleep(0.4)  # held past the board's touch delay: a drag, not a scroll
    for i in range(1, 11):
        touch("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [
            {"x": x0 + (x1 - x0) * i / 10, "y": y0 + (y1 - y0) * i / 10}]})
        time.sleep(0.03)
    touch("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def test_reload_mid_upload_resumes_without_resending_finished_bytes(tmp_path, api_server, worker,
                                                                   destination, person, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    small = patient_study(4, patient_id="SCR-4", name="Loe^Max")
    big = large_instance(120)  # ~3.9 MB in 512 KiB chunks, the link at 600 KB/s
    paths = write(tmp_path / "r", {f"s{i}": d for i, d in enumerate(small)} | {"big": big})
    signed_in(driver, api_server.url, person)
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 20, "downloadThroughput": 4_000_000, "uploadThroughput": 600_000})
    choose_files(driver, paths)
    wait_scanned(driver)
    driver.execute_script("window.relaypacs.chunkSize = 512 * 1024")
    driver.find_element(By.ID, "start").click()
    big_entry = "window.relaypacs.files.find((f) => f.path === 'big')"
    WebDriverWait(driver, 60, poll_frequency=0.1).until(lambda d: d.execute_script(
        f"return {big_entry}.sent >= 1024 * 1024"
        " && window.relaypacs.files.filter((f) => f.status === 'done').length >= 4"))
    before = driver.execute_script(
        "return window.relaypacs.files.map((f) => [f.path, f.status, f.sent])")
    driver.refresh()  # the tab reloads mid-upload: the page forgets the Files
    wait_ready(driver)
    note = driver.find_element(By.ID, "resume-note")
    WebDriverWait(driver, 10).until(lambda d: not note.get_attribute("hidden"))
    assert "choose the same folder again" in note.text
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    choose_files(driver, paths)  # chosen again
    wait_scanned(driver)
    driver.find_element(By.ID, "start").click()
    wait_uploaded(driver)
    after = driver.execute_script(
        "return window.relaypacs.files.map((f) =>"
        " [f.path, f.status, f.resumed === true, f.resumedFrom || 0])")
    by_path = {p: (status, resumed, start) for p, status, resumed, start in after}
    done_before = {p for p, status, _ in before if status == "done"}
    assert done_before >= {f"s{i}" for i in range(4)}
    for path in done_before:
        assert by_path[path][:2] == ("done", True)  # not sent again
    status, resumed, resumed_from = by_path["big"]
    assert status == "done" and resumed and resumed_from >= 512 * 1024  # from the server's offset
    batch_id = int(driver.find_element(By.ID, "batch-id").text)
    uploads = driver.execute_script(
        f"return fetch('/api/v1/batches/{batch_id}').then((r) => r.json()).then((b) => b.files.length)")
    assert uploads == 5  # one upload per file: none started again from zero


def test_phone_sized_window_queues_a_photo_offline_and_sends_it(tmp_path, api_server, worker, person, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.set_window_size(390, 844)
    try:
        signed_in(driver, api_server.url, person, path="/capture")
        assert driver.execute_script("return window.innerWidth") <= 400
        photo = tmp_path / "wound.jpg"
        photo.write_bytes(_jpeg())
        for field, value in (("patient_id", "SCR-9"), ("patient_name", "Moe^Kim"),
                             ("patient_birth_date", "19700203")):
            driver.find_element(By.ID, field).send_keys(value)
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        WebDriverWait(driver, 10).until(lambda d: "No signal" in d.find_element(By.ID, "network-state").text)
        driver.find_element(By.ID, "camera").send_keys(str(photo))
        row = WebDriverWait(driver, 10).until(lambda d: d.find_element(By.CSS_SELECTOR, "#photo-queue li"))
        time.sleep(1)
        assert row.get_attribute("data-sent") is None  # waits in the page
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        WebDriverWait(driver, 30).until(lambda d: row.get_attribute("data-sent") == "1")
        assert not row.find_elements(By.TAG_NAME, "img")  # the preview is gone
        stored = driver.execute_script("return Object.keys(localStorage).concat(Object.keys(sessionStorage))")
        assert stored == []  # nothing of the patient kept on the phone
    finally:
        driver.set_window_size(1280, 900)


def _jpeg() -> bytes:
    """A small baseline JPEG."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 90)).save(out, "JPEG", quality=80)
    return out.getvalue()


def test_another_facilitys_batch_is_not_reachable_from_the_pages(api_server, make_user, person, driver):
    from selenium.webdriver.common.by import By

    theirs = Gateway(api_server.url, make_user("Screen Elsewhere", "uploader"))
    batch_id = theirs.open_batch(label="theirs", hold=True)
    signed_in(driver, api_server.url, person)
    # A batch id of theirs left in this browser (or typed in): refused, and not offered.
    driver.execute_script(f"localStorage.setItem('relaypacs.batch', '{batch_id}')")
    driver.refresh()
    wait_ready(driver)
    statuses = driver.execute_async_script("""
        const [batch, done] = arguments;
        const csrf = document.querySelector('meta[name="csrf-token"]').content;
        const ask = (method, path, body) => fetch(`/api/v1/batches/${batch}${path}`, {method,
            headers: {'X-CSRF-Token': csrf, 'Content-Type': 'application/json'},
            body: body && JSON.stringify(body)}).then((r) => r.status);
        Promise.all([ask('GET', ''), ask('GET', '/studies'), ask('POST', '/confirm'),
                     ask('POST', '/moves', {series_instance_uids: ['1.2'], new_study: true, dry_run: true})])
            .then(done);""", batch_id)
    assert statuses == [403, 403, 403, 403]
    time.sleep(0.5)
    assert driver.find_element(By.ID, "resume-note").get_attribute("hidden") is not None
    assert driver.execute_script("return localStorage.getItem('relaypacs.batch')") is None
    listed = driver.execute_script(
        "return fetch('/api/v1/batches').then((r) => r.json()).then((b) => b.batches.map((x) => x.id))")
    assert batch_id not in listed
