"""Phone photos to VL Photographic Image: which bytes are kept, which re-encoded, EXIF/GPS
gone, orientation applied, the typed fields checked. Images are made with Pillow."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import JPEGBaseline8Bit

from pipeline.dicom import photos
from pipeline.dicom.attributes import MetadataError
from pipeline.dicom.headers import UID_PATTERN

GPS_IFD = 0x8825
ORIENTATION = 0x0112
PATIENT = {"filetype": "image/jpeg", "patient_id": "P-77", "patient_name": "Doe^Jane",
           "patient_birth_date": "19800214", "patient_sex": "F",
           "study_description": "Wound, left foot", "accession_number": "ACC1"}


def scene(width: int = 96, height: int = 64) -> Image.Image:
    """Left half red, right half blue, top rows white: every rotation looks different."""
    image = Image.new("RGB", (width, height), (220, 20, 20))
    image.paste((20, 20, 220), (width // 2, 0, width, height))
    image.paste((255, 255, 255), (0, 0, width, 8))
    return image


def exif(orientation: int = 1, gps: bool = True) -> bytes:
    data = Image.Exif()
    data[ORIENTATION] = orientation
    data[0x010F] = "PhoneMaker"
    if gps:
        data[GPS_IFD] = {1: "N", 2: (51.0, 30.0, 12.5), 3: "W", 4: (0.0, 7.0, 39.0)}
    return data.tobytes()


def jpeg(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def convert(data: bytes, filetype: str = "image/jpeg") -> pydicom.Dataset:
    request = photos.photo_request({**PATIENT, "filetype": filetype}, UID_PATTERN)
    return pydicom.dcmread(io.BytesIO(photos.photo_to_dicom(data, request)))


def frame_of(ds: pydicom.Dataset) -> bytes:
    """The JPEG stream, without the zero byte that pads an odd-length fragment."""
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    return frame[:-1] if frame.endswith(b"\xff\xd9\x00") else frame


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_baseline_jpeg_with_gps_is_kept_as_it_is_without_its_exif():
    original = jpeg(scene(), exif=exif())
    assert Image.open(io.BytesIO(original)).getexif().get_ifd(GPS_IFD)  # the GPS is there
    ds = convert(original)
    frame = frame_of(ds)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.4"
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.BitsAllocated) == ("YBR_FULL_422", 3, 8)
    assert (ds.Rows, ds.Columns) == (64, 96)
    assert ds.ImageType == ["ORIGINAL", "PRIMARY"] and "DerivationDescription" not in ds
    assert ds.LossyImageCompression == "01"
    # EXIF and GPS are gone from the JPEG stream itself, not only from what Pillow shows.
    assert not Image.open(io.BytesIO(frame)).getexif()
    assert b"Exif\0\0" not in frame and b"\xff\xe1" not in frame.split(b"\xff\xda")[0]
    assert b"PhoneMaker" not in ds.PixelData
    # Only segments were removed: the entropy-coded data and the decoded pixels are the camera's.
    assert frame.split(b"\xff\xda", 1)[1] == original.split(b"\xff\xda", 1)[1]
    assert np.array_equal(pixels(frame), pixels(original))
    assert (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex) == (
        "P-77", "Doe^Jane", "19800214", "F")
    assert (ds.StudyDescription, ds.AccessionNumber, ds.Modality) == ("Wound, left foot", "ACC1", "XC")
    # pydicom decodes it: the dataset describes its pixel data correctly.
    assert ds.pixel_array.shape == (64, 96, 3)


def test_icc_profile_goes_from_app2_to_the_dataset():
    icc = photos._srgb_profile()
    ds = convert(jpeg(scene(), icc_profile=icc, exif=exif()))
    assert ds.ICCProfile == icc
    assert b"ICC_PROFILE" not in frame_of(ds)


def test_progressive_jpeg_is_re_encoded_to_baseline_and_says_so():
    original = jpeg(scene(), progressive=True, exif=exif())
    assert photos.read_frame(original).sof == 0xC2
    ds = convert(original)
    frame = frame_of(ds)
    parsed = photos.read_frame(frame)
    assert parsed.sof == 0xC0 and photos.is_baseline(parsed)
    assert parsed.sampling[0] == (2, 1)  # 4:2:2, as YBR_FULL_422 says
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert ds.ImageType == ["DERIVED", "PRIMARY"]
    assert "progressive" in ds.DerivationDescription
    assert not Image.open(io.BytesIO(frame)).getexif()
    assert np.abs(pixels(frame) - pixels(original)).mean() < 3


def test_exif_orientation_is_applied_before_the_exif_goes():
    # Orientation 6: the camera stored the picture turned; the viewer must turn it 90° clockwise.
    stored = scene(96, 64)
    ds = convert(jpeg(stored, exif=exif(orientation=6)))
    assert (ds.Rows, ds.Columns) == (96, 64)
    upright = pixels(frame_of(ds))
    expected = np.asarray(stored.transpose(Image.Transpose.ROTATE_270), dtype=np.int16)
    assert np.abs(upright - expected).mean() < 6
    assert "orientation 6" in ds.DerivationDescription
    assert not Image.open(io.BytesIO(frame_of(ds))).getexif()


def test_heic_is_converted_to_baseline_jpeg():
    from pillow_heif import register_heif_opener

    register_heif_opener()
    out = io.BytesIO()
    scene().save(out, "HEIF", quality=90, exif=exif())
    ds = convert(out.getvalue(), "image/heic")
    frame = frame_of(ds)
    assert frame[:2] == b"\xff\xd8" and photos.is_baseline(photos.read_frame(frame))
    assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (64, 96, 3)
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert "HEIC" in ds.DerivationDescription
    assert not Image.open(io.BytesIO(frame)).getexif()


def test_grey_photo_is_monochrome():
    ds = convert(jpeg(scene().convert("L")))
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel) == ("MONOCHROME2", 1)


@pytest.mark.parametrize("data, reason", [
    (b"not a picture at all", "not_an_image"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "broken_image"),
])
def test_what_is_no_photo_is_refused_with_a_reason(data, reason):
    with pytest.raises(photos.PhotoError) as caught:
        convert(data)
    assert caught.value.reason == reason


def test_truncated_jpeg_is_refused():
    data = jpeg(scene(400, 300))
    with pytest.raises(photos.PhotoError) as caught:
        convert(data[: len(data) // 3])
    assert caught.value.reason in ("broken_image", "broken_jpeg")


def test_png_is_not_taken_as_a_jpeg():
    out = io.BytesIO()
    scene().save(out, "PNG")
    with pytest.raises(photos.PhotoError) as caught:
        convert(out.getvalue())
    assert caught.value.reason == "not_an_image"


@pytest.mark.parametrize("change, message", [
    ({"filetype": "image/png"}, "filetype"),
    ({"patient_birth_date": "1980-02-14"}, "PatientBirthDate"),
    ({"patient_birth_date": "19801345"}, "PatientBirthDate"),
    ({"patient_sex": "X"}, "PatientSex"),
    ({"patient_id": ""}, "patient_id"),
    ({"patient_id": "x" * 65}, "PatientID"),
    ({"patient_name": "a\\b"}, "PatientName"),
    ({"target_study": "1.2.3"}, "not both"),
])
def test_typed_fields_are_checked_like_the_api_checks_patient_fields(change, message):
    with pytest.raises(MetadataError, match=message):
        photos.photo_request({**PATIENT, **change}, UID_PATTERN)


def test_a_target_study_must_be_a_uid():
    with pytest.raises(MetadataError, match="StudyInstanceUID"):
        photos.photo_request({"filetype": "image/jpeg", "target_study": "1.2.x"}, UID_PATTERN)
    request = photos.photo_request({"filetype": "image/heic", "target_study": "1.2.3"}, UID_PATTERN)
    assert request.target_study == "1.2.3" and request.attributes == {}
