"""Templates, per-patient overrides and study moves on the real stack: what Orthanc ends up
holding is the edited version, the stored originals in S3 are untouched, and every change is
in the batch report."""

from __future__ import annotations

import hashlib
import io
import subprocess
import time

import pydicom
import pytest
import requests

from tests.clinic_samples import patient_study, uids_of
from tests.integration.gateway_client import TUS, Gateway
from tests.integration.services import relaypacs_argv

pytestmark = pytest.mark.integration

TEMPLATE = {
    "name": "CT head",
    "attributes": {
        "InstitutionName": "Clinic East",
        "ReferringPhysicianName": "Who^Doctor",
        "StudyDescription": "CT head without contrast",
    },
}


@pytest.fixture(scope="module")
def stow_destination(add_stow_destination):
    return add_stow_destination("orthanc-edits", facility="Clinic East")


@pytest.fixture
def token(make_user, worker, stow_destination, orthanc_clean):
    return make_user("Clinic East", "uploader")


def dataset(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def stored_original(s3, rendition_key: str) -> bytes:
    """The original next to a rendition: ``<prefix>/renditions/X.dcm`` -> the one
    ``<prefix>/original*.dcm`` (a file sent whole in one PATCH keeps its write lease in the name)."""
    prefix = rendition_key.split("/renditions/")[0] + "/"
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)["Contents"]
    [key] = [o["Key"] for o in listed if o["Key"][len(prefix):].startswith("original")]
    return s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()


def test_cli_upload_with_template_and_override_file(tmp_path, api_server, token, orthanc_clean, s3):
    gateway = Gateway(api_server.url, token)
    created = gateway.http.post(f"{api_server.url}/api/v1/templates", json=TEMPLATE, timeout=10)
    assert created.status_code == 201, created.text

    folder = tmp_path / "clinic"
    (folder / "p1").mkdir(parents=True)
    (folder / "p2").mkdir()
    p1 = patient_study(3, patient_id="EAST-1", name="Doe^Jon", accession="E-100")
    p2 = patient_study(2, patient_id="EAST-2", name="Roe^Ann", accession="E-101")
    for sub, files in (("p1", p1), ("p2", p2)):
        for i, data in enumerate(files):
            (folder / sub / f"IM{i}").write_bytes(data)
    fix = tmp_path / "fix.csv"
    fix.write_text("PatientID,PatientName,PatientBirthDate\nEAST-1,Doe^John,19800101\n")

    result = subprocess.run(
        relaypacs_argv("upload", str(folder), "--server", api_server.url, "--token", token,
                       "--state", str(tmp_path / "state.json"), "--wait", "120",
                       "--template", "CT head", "--override", str(fix)),
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "template: CT head; overrides for 1 patient(s)" in result.stdout

    for original in p1 + p2:
        sent = dataset(orthanc_clean.instance_bytes(uids_of(original)[2]))
        before = dataset(original)
        assert sent.InstitutionName == "Clinic East"
        assert str(sent.ReferringPhysicianName) == "Who^Doctor"
        assert sent.StudyDescription == "CT head without contrast"
        assert sent.PixelData == before.PixelData
        assert sent.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
        if before.PatientID == "EAST-1":
            assert str(sent.PatientName) == "Doe^John" and sent.PatientBirthDate == "19800101"
        else:
            assert str(sent.PatientName) == "Roe^Ann"

    batch_id = int(result.stdout.split("batch ")[-1].split(":")[0])
    report = gateway.report(batch_id)
    assert [(c["kind"], c["subject"]) for c in report["changes"]] == [
        ("template", "CT head"), ("override", "EAST-1")]
    assert all(d["rewritten"] for d in report["deliveries"])
    by_uid = {uids_of(f)[2]: f for f in p1 + p2}
    for delivery in report["deliveries"]:
        in_orthanc = orthanc_clean.instance_bytes(delivery["sop_instance_uid"])
        assert hashlib.sha256(in_orthanc).hexdigest() == delivery["sent_sha256"]
        # The stored original is still the file the clinic sent.
        assert stored_original(s3, delivery["sent_object_key"]) == by_uid[delivery["sop_instance_uid"]]


def test_cli_refuses_unknown_template_before_sending(tmp_path, api_server, token):
    folder = tmp_path / "clinic"
    folder.mkdir()
    (folder / "IM0").write_bytes(patient_study(1, patient_id="X", name="X^Y")[0])
    result = subprocess.run(
        relaypacs_argv("upload", str(folder), "--server", api_server.url, "--token", token,
                       "--state", str(tmp_path / "state.json"), "--template", "no such"),
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no template named 'no such'" in result.stderr


def wait_parsed(gateway: Gateway, batch_id: int, count: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = gateway.report(batch_id)
        if report["totals"]["files_by_state"].get("parsed", 0) >= count:
            return report
        time.sleep(0.3)
    raise AssertionError(f"files not parsed: {report['totals']}")


def test_move_series_and_patch_override_before_forwarding(api_server, token, orthanc_clean, s3):
    gateway = Gateway(api_server.url, token)
    url = f"{api_server.url}/api/v1/batches"
    study_a = patient_study(3, patient_id="EAST-7", name="Poe^Eve", accession="E-700")
    # The same exam, but the modality gave its second series another StudyInstanceUID.
    study_b = patient_study(2, patient_id="EAST-7", name="Poe^Eva", accession="E-700")
    uid_a, uid_b = uids_of(study_a[0])[0], uids_of(study_b[0])[0]
    series_b = uids_of(study_b[0])[1]

    batch_id = gateway.open_batch(label="needs sorting")
    for i, data in enumerate(study_a + study_b):
        gateway.upload(batch_id, data, f"f{i}.dcm")
    # A file still on its way keeps the batch from being forwarded while we sort it out.
    holding = gateway.create(batch_id, 1000, "late.dcm").headers["Location"]
    wait_parsed(gateway, batch_id, 5)

    listing = gateway.http.get(f"{url}/{batch_id}/studies", timeout=10).json()
    assert {p["code"] for p in listing["problems"]} == {"split_study"}

    moved = gateway.http.post(f"{url}/{batch_id}/moves", timeout=10, json={
        "series_instance_uids": [series_b], "target_study_instance_uid": uid_a})
    assert moved.status_code == 200, moved.text
    assert moved.json()["problems"] == []
    patched = gateway.http.patch(f"{url}/{batch_id}/patients/EAST-7", timeout=10,
                                 json={"PatientName": "Poe^Eve^M", "PatientSex": "F"})
    assert patched.status_code == 200, patched.text

    assert gateway.http.delete(holding, headers=TUS, timeout=10).status_code == 204
    gateway.complete(batch_id)
    report = gateway.wait_state(batch_id, "done", timeout=120)
    assert report["totals"]["deliveries_by_state"] == {"delivered": 5}

    # Orthanc has one study with both series; study B never reached it.
    studies = requests.get(f"{orthanc_clean.http_url}/studies", params={"expand": ""}, timeout=10).json()
    assert [s["MainDicomTags"]["StudyInstanceUID"] for s in studies] == [uid_a]
    assert len(studies[0]["Series"]) == 2
    for original in study_a + study_b:
        sent = dataset(orthanc_clean.instance_bytes(uids_of(original)[2]))
        assert sent.StudyInstanceUID == uid_a
        assert str(sent.PatientName) == "Poe^Eve^M" and sent.PatientSex == "F"
        assert sent.PixelData == dataset(original).PixelData
    moved_sent = dataset(orthanc_clean.instance_bytes(uids_of(study_b[0])[2]))
    assert moved_sent.SeriesInstanceUID == series_b
    rows = {d["sop_instance_uid"]: d for d in report["deliveries"]}
    for original in study_b:
        assert stored_original(s3, rows[uids_of(original)[2]]["sent_object_key"]) == original

    assert [c["kind"] for c in report["changes"]] == ["move", "override"]
    assert report["changes"][0]["detail"]["series"][0]["from_study"] == uid_b

    # Now that it went out, the batch can no longer be changed.
    again = gateway.http.patch(f"{url}/{batch_id}/patients/EAST-7", timeout=10,
                               json={"PatientName": "Other^Name"})
    assert again.status_code == 409
    back = gateway.http.post(f"{url}/{batch_id}/moves", timeout=10, json={
        "series_instance_uids": [series_b], "new_study": True})
    assert back.status_code == 409
