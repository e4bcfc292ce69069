"""Phone photos on the real stack: a JPEG sent with tuspy (in chunks, so it goes through
assembly) becomes a VL Photographic Image in Orthanc with the patient typed on the phone and
no EXIF/GPS in its pixel data; a photo sent with target_study joins that study in Orthanc."""

from __future__ import annotations

import io

import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames
from tusclient import client as tus_client

from tests.integration.gateway_client import Gateway
from tests.sample_data import synthetic_study

pytestmark = pytest.mark.integration

FACILITY = "Clinic Photo"
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"


@pytest.fixture(scope="module")
def stow_destination(add_stow_destination):
    return add_stow_destination("orthanc-photos", facility=FACILITY)


@pytest.fixture
def gateway(api_server, make_user, worker, stow_destination, orthanc_clean):
    return Gateway(api_server.url, make_user(FACILITY, "uploader"))


def gps_photo(path) -> bytes:  # noqa: ANN001
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 26.0), 3: "W", 4: (0.0, 7.0, 39.0)}
    image = Image.new("RGB", (320, 240), (30, 140, 90))
    image.paste((240, 240, 240), (0, 0, 320, 40))
    image.save(path, "JPEG", quality=90, exif=exif.tobytes())
    return path.read_bytes()


def send_photo(gateway: Gateway, api_server, batch_id: int, path, metadata: dict) -> None:  # noqa: ANN001
    tus = tus_client.TusClient(f"{api_server.url}/api/v1/files",
                               headers={"Authorization": gateway.http.headers["Authorization"]})
    tus.uploader(str(path), chunk_size=4 * 1024, upload_checksum=True, metadata={
        "filename": path.name, "batch_id": str(batch_id), "kind": "photo",
        "filetype": "image/jpeg", **metadata}).upload()


def stored_photo(orthanc, report: dict) -> pydicom.Dataset:  # noqa: ANN001
    photo = next(f for f in report["files"] if f["filename"].endswith(".jpg"))
    assert photo["state"] == "parsed", photo
    return pydicom.dcmread(io.BytesIO(orthanc.instance_bytes(photo["sop_instance_uid"])))


def test_jpeg_with_gps_reaches_orthanc_as_vl_photographic_without_exif(gateway, api_server,
                                                                         orthanc_clean, tmp_path):
    path = tmp_path / "wound.jpg"
    original = gps_photo(path)
    assert Image.open(io.BytesIO(original)).getexif().get_ifd(0x8825)
    batch_id = gateway.open_batch(label="phone")
    send_photo(gateway, api_server, batch_id, path, {
        "patient_id": "PH-1", "patient_name": "Nguyen^Lan", "patient_birth_date": "19910305",
        "patient_sex": "F", "study_description": "Wound photo", "accession_number": "A77"})
    gateway.complete(batch_id)
    report = gateway.wait_state(batch_id, "done")
    assert report["totals"]["deliveries_by_state"] == {"delivered": 1}

    ds = stored_photo(orthanc_clean, report)
    assert ds.SOPClassUID == VL_PHOTOGRAPHIC
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert (ds.PhotometricInterpretation, ds.Rows, ds.Columns) == ("YBR_FULL_422", 240, 320)
    assert (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex) == (
        "PH-1", "Nguyen^Lan", "19910305", "F")
    assert (ds.StudyDescription, ds.AccessionNumber) == ("Wound photo", "A77")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert not Image.open(io.BytesIO(frame)).getexif()
    assert b"Exif\0\0" not in frame and b"PhoneMaker" not in frame
    # The camera's own entropy-coded data, untouched.
    assert frame.rstrip(b"\0").split(b"\xff\xda", 1)[1] == original.split(b"\xff\xda", 1)[1]


def test_photo_with_target_study_joins_that_study_in_orthanc(gateway, api_server, orthanc_clean,
                                                             tmp_path):
    first, second = synthetic_study(2)
    source = pydicom.dcmread(io.BytesIO(first))
    batch_id = gateway.open_batch(label="ct")
    gateway.upload(batch_id, first, "ct1.dcm")
    gateway.upload(batch_id, second, "ct2.dcm")
    gateway.complete(batch_id)
    gateway.wait_state(batch_id, "done")
    picker = gateway.http.get(f"{gateway.url}/api/v1/studies", params={"q": source.PatientID},
                              timeout=30).json()["studies"]
    assert source.StudyInstanceUID in [s["study_instance_uid"] for s in picker]

    path = tmp_path / "bedside.jpg"
    gps_photo(path)
    photo_batch = gateway.open_batch(label="phone")
    send_photo(gateway, api_server, photo_batch, path, {"target_study": source.StudyInstanceUID})
    gateway.complete(photo_batch)
    report = gateway.wait_state(photo_batch, "done")
    assert report["totals"]["deliveries_by_state"] == {"delivered": 1}

    ds = stored_photo(orthanc_clean, report)
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert (ds.PatientID, ds.PatientName, ds.StudyDate) == (
        source.PatientID, source.PatientName, source.StudyDate)
    # One study in the PACS: the two CT instances and the photo, in two series.
    studies = orthanc_clean.session.get(f"{orthanc_clean.http_url}/studies", timeout=30).json()
    assert len(studies) == 1
    series = orthanc_clean.session.get(f"{orthanc_clean.http_url}/studies/{studies[0]}/series",
                                       timeout=30).json()
    assert sorted(s["MainDicomTags"].get("Modality") for s in series) == ["CT", "XC"]
