"""Addenda: the PDF that shows a report's original text and each addendum with its author and
time, and that PDF as a DICOM Encapsulated PDF instance filed in the report's study.

The original text is never rewritten: an addendum is its own row, and the PDF quotes the
original as it is (``text_sha256`` is what proves it unchanged). The DICOM object takes the
patient and study attributes from an instance of the study as it went out to the PACS, so
the PACS files it in the same study; its own Series and SOP Instance UIDs are made under the
gateway's addendum prefix, which is how the report poll knows its own objects and never takes
them for new reports.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fpdf import FPDF
from pydicom import Dataset, FileMetaDataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
DOCUMENT_TITLE = "Report addendum"
# Patient- and study-level attributes copied from the study's instance, so the PACS files
# the PDF with the study (PS3.3 C.7.1.1, C.7.2.1; C.24.2 Encapsulated Document module).
COPIED_FROM_STUDY = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                     "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
                     "AccessionNumber", "ReferringPhysicianName", "StudyID", "StudyDescription")
# fpdf2's core fonts are Latin-1 only; a report in another script needs a Unicode font.
# DejaVu ships with most Linux systems (Debian fonts-dejavu-core); without it the PDF falls
# back to Helvetica and shows characters outside Latin-1 as "?".
UNICODE_FONTS = (Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
                 Path("/usr/share/fonts/dejavu/DejaVuSans.ttf"))


def text_sha256(text: str) -> str:
    """The original report text's digest: the same before and after any addendum."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One block of the PDF: the original report or an addendum."""

    author: str
    at: datetime
    text: str


def _font(pdf: FPDF) -> tuple[str, bool]:
    for path in UNICODE_FONTS:
        if path.exists():
            pdf.add_font("body", fname=str(path))
            return "body", True
    return "Helvetica", False


def addendum_pdf(original: Entry, addenda: Sequence[Entry], *, status: str,
                 title: str = DOCUMENT_TITLE) -> bytes:
    """The PDF: the original report verbatim, then every addendum in order, each headed by
    its author and time (UTC)."""
    pdf = FPDF(format="A4")
    pdf.set_title(title)
    pdf.set_creator("RelayPACS Gateway")
    pdf.add_page()
    family, unicode_ok = _font(pdf)

    def clean(value: str) -> str:
        return value if unicode_ok else value.encode("latin-1", "replace").decode("latin-1")

    def block(heading: str, entry: Entry) -> None:
        pdf.set_font(family, size=11)
        pdf.set_text_color(30, 60, 120)
        pdf.multi_cell(0, 6, clean(f"{heading} - {entry.author}, "
                                   f"{entry.at.strftime('%Y-%m-%d %H:%M UTC')}"),
                       new_x="LMARGIN", new_y="NEXT")
        pdf.set_text_color(0, 0, 0)
        pdf.set_font(family, size=10)
        pdf.multi_cell(0, 5, clean(entry.text), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(4)

    pdf.set_font(family, size=16)
    pdf.cell(0, 10, clean(title), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(family, size=9)
    pdf.cell(0, 6, clean(f"Report status: {status}. The original report is reproduced unchanged."),
             new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    block("Original report", original)
    for number, entry in enumerate(addenda, start=1):
        block(f"Addendum {number}", entry)
    return bytes(pdf.output())


@dataclass(frozen=True)
class EncapsulatedPdf:
    part10: bytes
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str


def encapsulated_pdf(pdf: bytes, study: Dataset, *, new_uid: Callable[[], str], now: datetime,
                     study_instance_uid: str | None = None, title: str = DOCUMENT_TITLE,
                     series_number: int = 9001, instance_number: int = 1) -> EncapsulatedPdf:
    """The PDF as a Part-10 Encapsulated PDF instance in ``study`` (a header of an instance
    of the study as the PACS holds it), its Series and SOP Instance UIDs from ``new_uid`` (the
    gateway's addendum UIDs). ``study_instance_uid`` overrides the header's."""
    ds = Dataset()
    for keyword in COPIED_FROM_STUDY:
        if keyword in study:
            ds[keyword] = study[keyword]
    if study_instance_uid:
        ds.StudyInstanceUID = study_instance_uid
    if "StudyInstanceUID" not in ds:
        raise ValueError("the study header has no StudyInstanceUID")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        if keyword not in ds:
            setattr(ds, keyword, "")  # type 2: present, may be empty
    sop_uid = new_uid()
    series_uid = new_uid()
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "DOC"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ConversionType = "WSD"  # workstation: made by software, not scanned
    ds.Manufacturer = "RelayPACS Gateway"
    stamp_date, stamp_time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.ContentDate, ds.ContentTime = stamp_date, stamp_time
    ds.InstanceCreationDate, ds.InstanceCreationTime = stamp_date, stamp_time
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.SeriesDescription = title
    ds.DocumentTitle = title
    ds.BurnedInAnnotation = "YES"  # the PDF shows who the patient is, as any report does
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    # OB of even length: pad with a NUL (PS3.3 C.24.2.1, Encapsulated Document Length keeps
    # the true size).
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
    ds.SpecificCharacterSet = "ISO_IR 192"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return EncapsulatedPdf(out.getvalue(), sop_uid, series_uid, str(ds.StudyInstanceUID))


def pdf_from_part10(part10: bytes) -> bytes:
    """The PDF bytes inside an Encapsulated PDF instance, without the pad byte."""
    ds = dcmread(io.BytesIO(part10))
    data = bytes(ds.EncapsulatedDocument)
    length = int(ds.get("EncapsulatedDocumentLength", len(data)))
    return data[:length]
