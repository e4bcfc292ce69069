"""Rewriting metadata keeps the transfer syntax and the pixel data bytes as they were."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pydicom
import pytest

from pipeline.dicom.attributes import element_for
from pipeline.dicom.rewrite import RewriteError, edits_digest, elements_of, rewrite_part10

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def sample(name: str) -> bytes:
    matches = list(TEST_FILES.glob(name))
    if not matches:
        # pydicom >= 3 (pinned in pyproject) ships these files: missing means a broken install.
        pytest.fail(f"{name} not shipped with this pydicom")
    return matches[0].read_bytes()


def read(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


def pixel_element_bytes(data: bytes) -> bytes:
    """The raw Pixel Data element and everything after it, as stored in the file."""
    fp = io.BytesIO(data)
    pydicom.dcmread(fp, stop_before_pixels=True)
    return data[fp.tell():]


def rewrite(data: bytes, edits: dict) -> bytes:
    out = io.BytesIO()
    rewrite_part10(io.BytesIO(data), out, edits)
    return out.getvalue()


EDITS = {
    "InstitutionName": element_for("InstitutionName", "Clinic North"),
    "ReferringPhysicianName": element_for("ReferringPhysicianName", "Who^Doctor"),
    "StudyDescription": element_for("StudyDescription", "CT head without contrast"),
    "StudyInstanceUID": element_for("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.1"),
    "PatientBirthDate": None,
}


@pytest.mark.parametrize("name", [
    "CT_small.dcm",            # explicit VR little endian
    "MR_small_implicit.dcm",   # implicit VR
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "JPEG-lossy.dcm",          # encapsulated JPEG: fragments must not be touched
    "SC_rgb_rle_2frame.dcm",   # RLE, two frames
    "JPEG2000.dcm",
])
def test_transfer_syntax_and_pixel_bytes_are_kept(name):
    original = sample(name)
    rewritten = rewrite(original, EDITS)
    before, after = read(original), read(rewritten)
    assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
    assert pixel_element_bytes(rewritten) == pixel_element_bytes(original)
    assert after.PixelData == before.PixelData
    assert after.InstitutionName == "Clinic North"
    assert str(after.ReferringPhysicianName) == "Who^Doctor"
    assert after.StudyDescription == "CT head without contrast"
    assert after.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.1"
    assert "PatientBirthDate" not in after
    # Identity of the object is untouched.
    assert after.SOPInstanceUID == before.SOPInstanceUID
    assert after.SOPClassUID == before.SOPClassUID
    assert after.file_meta.MediaStorageSOPInstanceUID == before.file_meta.MediaStorageSOPInstanceUID


def test_deflated_file_is_rewritten_whole_keeping_its_transfer_syntax():
    original = sample("image_dfl.dcm")
    rewritten = rewrite(original, EDITS)
    before, after = read(original), read(rewritten)
    assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
    assert after.file_meta.TransferSyntaxUID.is_deflated
    assert after.PixelData == before.PixelData
    assert after.InstitutionName == "Clinic North"


def test_file_without_pixel_data_and_elements_after_pixel_data():
    plan = sample("rtplan.dcm")
    after = read(rewrite(plan, {"StudyDescription": element_for("StudyDescription", "Plan")}))
    assert after.StudyDescription == "Plan"
    assert after.BeamSequence == read(plan).BeamSequence


def test_non_ascii_value_in_a_file_whose_character_set_cannot_hold_it_switches_to_utf8():
    original = sample("CT_small.dcm")  # ISO_IR 100 (Latin-1)
    latin = read(rewrite(original, {"PatientName": element_for("PatientName", "Müller^Jürgen")}))
    assert latin.SpecificCharacterSet == "ISO_IR 100"  # Latin-1 can hold it: kept
    assert str(latin.PatientName) == "Müller^Jürgen"

    greek = read(rewrite(original, {"PatientName": element_for("PatientName", "Παπαδόπουλος^Νίκος")}))
    assert greek.SpecificCharacterSet == "ISO_IR 192"
    assert str(greek.PatientName) == "Παπαδόπουλος^Νίκος"
    # Text that was there before is re-encoded, not reinterpreted.
    assert greek.InstitutionName == read(original).InstitutionName


def test_digest_names_the_exact_edit():
    a = edits_digest("abc", {"PatientWeight": element_for("PatientWeight", "1.5")})
    b = edits_digest("abc", {"PatientWeight": element_for("PatientWeight", "1.50")})
    c = edits_digest("abd", {"PatientWeight": element_for("PatientWeight", "1.5")})
    removed = edits_digest("abc", {"PatientWeight": None})
    assert len({a, b, c, removed}) == 4
    assert a == edits_digest("abc", {"PatientWeight": element_for("PatientWeight", "1.5")})


def test_elements_of_copies_present_and_marks_absent():
    ds = read(sample("CT_small.dcm"))
    got = elements_of(ds, ("PatientName", "PatientID", "OtherPatientNames"))
    assert str(got["PatientName"].value) == str(ds.PatientName)
    assert got["OtherPatientNames"] is None


def test_a_file_that_cannot_be_encoded_again_raises_rewrite_error():
    with pytest.raises(RewriteError):
        rewrite(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x00abcd", EDITS)
