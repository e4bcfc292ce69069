"""The other side of the conformance table: what the chosen options retain is still there
and correct, references between instances still resolve after UID replacement, the date
shift is one per patient, photos lose EXIF/GPS, burned-in text is held, masks clean."""

from __future__ import annotations

import io
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import JPEGBaseline8Bit

from pipeline.teaching import pixels
from pipeline.teaching.deidentify import (
    DeidContext,
    NotAnInstance,
    date_shift_days,
    deidentify,
    deidentify_file,
    patient_pseudonym,
)
from pipeline.teaching.profile import DeidOptions

SAMPLES = Path(pydicom.__file__).parent / "data" / "test_files"
SECRET = b"unit-test-secret-for-the-teaching-file"


def ct(patient_id: str = "PAT-1", study: str = "1.2.826.0.1.1", series: str = "1.2.826.0.1.1.1",
       sop: str = "1.2.826.0.1.1.1.1", study_date: str = "20240310") -> Dataset:
    ds = pydicom.dcmread(SAMPLES / "CT_small.dcm")
    ds.PatientID = patient_id
    ds.PatientName = "Smith^Alice"
    ds.PatientSex = "F"
    ds.PatientAge = "054Y"
    ds.PatientWeight = 61.5
    ds.PatientSize = 1.68
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.StudyTime = "093015"
    ds.StudyDescription = "CT chest Smith 2024-03-10"
    ds.SeriesDescription = "axial lung window"
    ds.AccessionNumber = "ACC42"
    ds.FrameOfReferenceUID = study + ".9"
    return ds


def shifted(value: str, days: int) -> str:
    from datetime import timedelta

    d = date(int(value[:4]), int(value[4:6]), int(value[6:8])) + timedelta(days=days)
    return d.strftime("%Y%m%d")


def test_options_retain_patient_characteristics_dates_and_clean_descriptors():
    ds = ct()
    ctx = DeidContext(secret=SECRET, facility_id=7)
    result = deidentify(ds, ctx)
    assert (ds.PatientSex, ds.PatientAge) == ("F", "054Y")
    assert (float(ds.PatientWeight), float(ds.PatientSize)) == (61.5, 1.68)
    days = date_shift_days(SECRET, 7, "PAT-1")
    assert result.shift_days == days and -4015 <= days <= -365
    assert ds.StudyDate == shifted("20240310", days) == ds.SeriesDate
    assert ds.StudyTime == "093015"
    # Clean Descriptors: the words that teach stay, the name and the date go.
    assert ds.StudyDescription == "CT chest"
    assert ds.SeriesDescription == "axial lung window"
    assert ds.PatientName == "" and ds.AccessionNumber == ""
    assert ds.PatientID == patient_pseudonym(SECRET, 7, "PAT-1") != patient_pseudonym(SECRET, 7, "PAT-2")
    assert ds.PatientID.startswith("TF-")
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == [
        "113100", "113105", "113107", "113108",
    ]


def test_without_options_the_basic_profile_empties_what_the_options_would_keep():
    ds = ct()
    ctx = DeidContext(
        secret=SECRET,
        facility_id=7,
        options=DeidOptions(
            retain_modified_dates=False,
            retain_patient_characteristics=False,
            clean_descriptors=False,
        ),
    )
    deidentify(ds, ctx)
    assert ds.StudyDate == "" and ds.PatientSex == ""
    assert "PatientAge" not in ds and "StudyDescription" not in ds
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100"]


def test_date_shift_is_one_per_patient_and_differs_between_patients_and_facilities():
    first = ct(study="1.2.1", sop="1.2.1.1.1", study_date="20240310")
    later = ct(study="1.2.2", sop="1.2.2.1.1", study_date="20240915")
    other = ct(patient_id="PAT-2", study="1.2.3", sop="1.2.3.1.1", study_date="20240310")
    # Two cases (two contexts) of the same patient: the same secret shift.
    deidentify(first, DeidContext(secret=SECRET, facility_id=7))
    deidentify(later, DeidContext(secret=SECRET, facility_id=7))
    deidentify(other, DeidContext(secret=SECRET, facility_id=7))
    gap_before = (date(2024, 9, 15) - date(2024, 3, 10)).days

    def as_date(v):
        return date(int(v[:4]), int(v[4:6]), int(v[6:8]))

    assert (as_date(later.StudyDate) - as_date(first.StudyDate)).days == gap_before
    assert other.StudyDate != first.StudyDate
    shifts = {date_shift_days(SECRET, 7, f"PAT-{n}") for n in range(50)}
    assert len(shifts) > 45
    # The same PatientID at another facility is another patient.
    assert date_shift_days(SECRET, 7, "PAT-1") != date_shift_days(SECRET, 8, "PAT-1")
    # And without the secret nobody can work it out.
    assert date_shift_days(b"another-secret", 7, "PAT-1") != date_shift_days(SECRET, 7, "PAT-1")


def test_references_resolve_across_instances_series_and_cases():
    image = ct(sop="1.2.826.0.1.1.1.1")
    derived = ct(series="1.2.826.0.1.1.2", sop="1.2.826.0.1.1.2.1")
    ref = Dataset()
    ref.ReferencedSOPClassUID = image.SOPClassUID
    ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
    derived.SourceImageSequence = Sequence([ref])
    deeper = Dataset()
    deeper.ReferencedSOPInstanceUID = image.SOPInstanceUID
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = image.SeriesInstanceUID
    series_ref.ReferencedInstanceSequence = Sequence([deeper])
    study_ref = Dataset()
    study_ref.StudyInstanceUID = image.StudyInstanceUID
    study_ref.ReferencedSeriesSequence = Sequence([series_ref])
    derived.CurrentRequestedProcedureEvidenceSequence = Sequence([study_ref])
    rel = Dataset()
    rel.StudyInstanceUID = image.StudyInstanceUID
    rel.SeriesInstanceUID = image.SeriesInstanceUID
    derived.RelatedSeriesSequence = Sequence([rel])
    originals = {image.SOPInstanceUID, image.SeriesInstanceUID, image.StudyInstanceUID,
                 image.FrameOfReferenceUID}

    deidentify(image, DeidContext(secret=SECRET, facility_id=7))
    # A later case of the same patient, a new context: the same secret, the same UIDs.
    deidentify(derived, DeidContext(secret=SECRET, facility_id=7))

    assert derived.SourceImageSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    evidence = derived.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == image.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID
    assert (evidence.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
            .ReferencedSOPInstanceUID == image.SOPInstanceUID)
    assert derived.RelatedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID
    assert derived.FrameOfReferenceUID == image.FrameOfReferenceUID
    assert derived.StudyInstanceUID == image.StudyInstanceUID
    assert derived.file_meta.MediaStorageSOPInstanceUID == derived.SOPInstanceUID
    left = {e.value for d in (image, derived) for e in d.iterall() if e.VR == "UI"}
    assert not originals & left
    assert all(u.startswith("2.25.") for u in (image.SOPInstanceUID, image.FrameOfReferenceUID))


def test_configurable_uid_root_keeps_uids_valid():
    ds = ct()
    ctx = DeidContext(secret=SECRET, facility_id=1, uid_root="1.2.826.0.1.3680043.10.1234")
    deidentify(ds, ctx)
    for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID):
        assert uid.startswith("1.2.826.0.1.3680043.10.1234.") and len(uid) <= 64
        assert uid.is_valid


def _photo_with_gps() -> Dataset:
    image = Image.new("RGB", (32, 24), (200, 30, 30))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 12.0), 3: "W", 4: (0.0, 7.0, 39.0)}  # GPS IFD
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=90)
    jpeg = buffer.getvalue()
    assert b"Exif" in jpeg and b"PhoneMaker" in jpeg
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.5.5.1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"
    ds.SOPInstanceUID = "1.2.5.5.1"
    ds.StudyInstanceUID = "1.2.5.5"
    ds.SeriesInstanceUID = "1.2.5.5.0"
    ds.Modality = "XC"
    ds.PatientID = "PAT-9"
    ds.Rows, ds.Columns = 24, 32
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PlanarConfiguration = 0
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    return ds


def test_photo_exif_and_gps_are_stripped_and_the_image_still_decodes():
    ds = _photo_with_gps()
    deidentify(ds, DeidContext(secret=SECRET, facility_id=1))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert b"Exif" not in frame and b"PhoneMaker" not in frame
    decoded = Image.open(io.BytesIO(frame))
    assert decoded.size == (32, 24) and not decoded.getexif()
    r, g, b = decoded.convert("RGB").getpixel((16, 12))
    assert r > 150 and g < 80


def test_burned_in_text_is_held_for_modalities_and_flag():
    us = ct()
    us.Modality = "US"
    assert "US" in pixels.burned_in_reason(us)
    flagged = ct()
    flagged.BurnedInAnnotation = "YES"
    assert pixels.burned_in_reason(flagged) == "BurnedInAnnotation is YES"
    capture = ct()
    capture.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    assert pixels.burned_in_reason(capture)
    assert pixels.burned_in_reason(ct()) is None


def test_masking_blacks_out_regions_and_sets_the_clean_pixel_data_code():
    ds = ct()
    ds.Modality = "US"
    before = ds.pixel_array.copy()
    pixels.mask_regions(ds, [pixels.Rect(0, 0, 20, 10)])
    deidentify(ds, DeidContext(secret=SECRET, facility_id=1), pixels_cleaned=True)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    buffer.seek(0)
    after = pydicom.dcmread(buffer)
    assert (after.pixel_array[:10, :20] == before.min()).all()
    assert (after.pixel_array[20:, 30:] == before[20:, 30:]).all()
    assert after.BurnedInAnnotation == "NO"
    assert "113101" in [i.CodeValue for i in after.DeidentificationMethodCodeSequence]
    with pytest.raises(ValueError):
        pixels.mask_regions(ct(), [pixels.Rect(500, 0, 10, 10)])


def test_key_image_png_uses_the_window():
    ds = ct()
    png = pixels.render_png(ds)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (128, 128)
    values = np.asarray(image)
    assert values.min() == 0 and values.max() == 255
    ds.WindowCenter, ds.WindowWidth = 40, 400
    windowed = np.asarray(Image.open(io.BytesIO(pixels.render_png(ds))))
    assert not np.array_equal(windowed, values)


def test_dicomdir_is_refused_and_files_to_files_works(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NotAnInstance):
            deidentify_file(SAMPLES / "dicomdirtests" / "DICOMDIR", tmp_path / "x",
                            DeidContext(secret=SECRET, facility_id=1))
    out = tmp_path / "ct.dcm"
    result = deidentify_file(SAMPLES / "CT_small.dcm", out, DeidContext(secret=SECRET, facility_id=1))
    again = pydicom.dcmread(out)
    assert again.SOPInstanceUID == result.sop_uid != result.original_sop_uid
    assert again.file_meta.MediaStorageSOPInstanceUID == result.sop_uid


def test_retain_safe_private_keeps_only_the_safe_list():
    ds = ct()
    block = ds.private_block(0x0019, "SAFE VENDOR", create=True)
    block.add_new(0x10, "DS", "2.5")  # on the safe list: a dose factor, say
    block.add_new(0x11, "LO", "Smith^Alice")  # same creator, not on the list
    other = ds.private_block(0x0021, "OTHER VENDOR", create=True)
    other.add_new(0x10, "DS", "2.5")
    safe = frozenset({("SAFE VENDOR", 0x10)})
    default = ct()
    default.update(ds)
    deidentify(default, DeidContext(secret=SECRET, facility_id=1, safe_private=safe))
    assert not [e for e in default.iterall() if e.tag.is_private]  # the option is off by default
    options = DeidOptions(retain_safe_private=True)
    deidentify(ds, DeidContext(secret=SECRET, facility_id=1, options=options, safe_private=safe))
    kept = {e.tag: e.value for e in ds.iterall() if e.tag.is_private}
    # CT_small has its own private blocks in group 0019: they go, the safe one stays.
    creator_tag = (0x0019 << 16) | (block.block_start >> 8)
    assert kept == {creator_tag: "SAFE VENDOR", block.get_tag(0x10): "2.5"}
    assert "113111" in [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
