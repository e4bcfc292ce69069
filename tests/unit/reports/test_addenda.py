"""The addendum PDF and its DICOM Encapsulated PDF wrapper."""

import io
from datetime import UTC, datetime

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from pypdf import PdfReader

from pipeline.reports import addenda

AT = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
PREFIX = "1.2.826.0.1.3680043.10.999.7."


def _uid() -> str:
    return generate_uid(prefix=PREFIX)


def _text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def test_pdf_shows_the_original_and_each_addendum_with_author_and_time():
    original = addenda.Entry("dr.read@example.org", AT, "No acute findings. Lungs clear.")
    more = [addenda.Entry("consult.neuro@example.org", AT.replace(hour=11), "Agree; small cyst."),
            addenda.Entry("consult.chest@example.org", AT.replace(hour=12), "Nodule follow-up in 6 months.")]
    text = _text(addenda.addendum_pdf(original, more, status="appended"))
    assert "No acute findings. Lungs clear." in text
    assert "Addendum 1 - consult.neuro@example.org, 2026-03-02 11:30 UTC" in text
    assert "Addendum 2 - consult.chest@example.org, 2026-03-02 12:30 UTC" in text
    assert text.index("Original report") < text.index("Addendum 1") < text.index("Addendum 2")


def test_text_hash_is_of_the_text_alone():
    assert addenda.text_sha256("abc") == addenda.text_sha256("abc") != addenda.text_sha256("abc ")


def _study() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P1"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.StudyDate = "20260301"
    ds.AccessionNumber = "A1"
    ds.Rows = 512  # an image attribute: never copied
    return ds


def test_encapsulated_pdf_is_filed_in_the_study_under_the_prefix():
    pdf = addenda.addendum_pdf(addenda.Entry("a", AT, "x"), [], status="final")
    made = addenda.encapsulated_pdf(pdf, _study(), new_uid=_uid, now=AT)
    ds = dcmread(io.BytesIO(made.part10))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == made.sop_instance_uid
    assert ds.StudyInstanceUID == "1.2.3.4" and ds.PatientID == "P1" and ds.Modality == "DOC"
    assert made.sop_instance_uid.startswith(PREFIX) and made.series_instance_uid.startswith(PREFIX)
    assert "Rows" not in ds
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert addenda.pdf_from_part10(made.part10) == pdf
    moved = addenda.encapsulated_pdf(pdf, _study(), new_uid=_uid, now=AT, study_instance_uid="9.9")
    assert moved.study_instance_uid == "9.9"


def test_a_header_without_a_study_uid_is_refused():
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        addenda.encapsulated_pdf(b"%PDF", Dataset(), new_uid=_uid, now=AT)
