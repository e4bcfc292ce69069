"""``relaypacs upload``: a clinic folder to the PACS, with progress, resume and exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.integration.services import relaypacs_argv
from tests.sample_data import bad_dicom_files, synthetic_study
from tests.signals import default_sigint

pytestmark = pytest.mark.integration


@pytest.fixture
def token(make_user, worker, add_stow_destination_once, orthanc_clean):
    return make_user("Clinic West", "uploader")


@pytest.fixture(scope="module")
def add_stow_destination_once(add_stow_destination):
    add_stow_destination("orthanc-upload-cli", facility="Clinic West")


def write_study(folder, n, sub="study1"):
    (folder / sub).mkdir(parents=True)
    for i, data in enumerate(synthetic_study(n), 1):
        (folder / sub / f"IM{i:04d}").write_bytes(data)  # no extension: found by content


def run_upload(folder, server, token, state, *extra):
    return subprocess.run(
        relaypacs_argv("upload", str(folder), "--server", server, "--token", token,
                       "--state", str(state), "--wait", "90", *extra),
        capture_output=True, text=True, timeout=180,
    )


def test_folder_upload_delivers_and_reports(tmp_path, api_server, token, orthanc_clean):
    folder = tmp_path / "clinic"
    write_study(folder, 8)
    (folder / "readme.txt").write_text("scanner export notes")
    result = run_upload(folder, api_server.url, token, tmp_path / "state.json", "--jobs", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped readme.txt: not a DICOM Part-10 file" in result.stdout
    assert "8 files" in result.stdout
    assert orthanc_clean.count() == 8
    assert not (tmp_path / "state.json").exists()  # finished: nothing left to resume


def test_quarantined_file_gives_its_own_exit_code(tmp_path, api_server, token, orthanc_clean):
    folder = tmp_path / "clinic"
    write_study(folder, 2)
    (folder / "broken.dcm").write_bytes(bad_dicom_files()[0].read_bytes())
    result = run_upload(folder, api_server.url, token, tmp_path / "state.json")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "quarantined broken.dcm: truncated" in result.stdout
    assert orthanc_clean.count() == 2


def test_interrupted_upload_resumes_without_resending(tmp_path, api_server, token, orthanc_clean):
    folder = tmp_path / "clinic"
    write_study(folder, 30)
    state = tmp_path / "state.json"
    argv = relaypacs_argv("upload", str(folder), "--server", api_server.url, "--token", token,
                          "--state", str(state), "--jobs", "1", "--chunk-size", "2048")
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=default_sigint)
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and first.poll() is None:
        if state.exists():
            try:
                done = sum(e["done"] for e in json.loads(state.read_text())["files"].values())
            except (ValueError, KeyError):
                done = 0
            if done >= 3:
                break
        time.sleep(0.05)
    assert first.poll() is None, "upload finished before it could be interrupted"
    first.send_signal(signal.SIGINT)  # Ctrl-C
    first.wait(timeout=30)
    assert first.returncode != 0
    assert orthanc_clean.count() == 0  # the batch was never completed

    second = run_upload(folder, api_server.url, token, state, "--jobs", "2")
    assert second.returncode == 0, second.stdout
    assert "resumed:" in second.stdout
    resumed = int(second.stdout.split("resumed: ")[1].split()[0])
    assert resumed >= done * len(synthetic_study(1)[0]) * 0.9
    assert orthanc_clean.count() == 30
    assert os.path.exists(folder)  # never touches the source folder
