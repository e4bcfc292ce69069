"""Report documents as a PACS would hold them, for tests: a Basic Text SR (with completion and
verification flags, optionally amending an earlier one) and an Encapsulated PDF, written with
pydicom (the PDF drawn with fpdf2), Part-10 bytes."""

from __future__ import annotations

import io

from fpdf import FPDF
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def _code(value: str, meaning: str, scheme: str = "DCM") -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def _base(sop_class: str, study_uid: str, modality: str, sop_uid: str | None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName, ds.PatientID = "Test^Report", "RPT-1"
    ds.StudyDate, ds.ContentDate, ds.ContentTime = "20260101", "20260102", "101500"
    ds.SeriesNumber, ds.InstanceNumber = 99, 1
    return ds


def _part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def basic_text_sr(study_uid: str, findings: str, *, completion: str = "COMPLETE",
                  verification: str = "VERIFIED", amends: tuple[str, str, str] | None = None,
                  sop_uid: str | None = None) -> tuple[str, bytes]:
    """(SOPInstanceUID, bytes). ``amends``: (study, series, SOP instance UID) of the earlier SR."""
    ds = _base(BASIC_TEXT_SR, study_uid, "SR", sop_uid)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "Diagnostic Imaging Report", "LN")])
    ds.CompletionFlag, ds.VerificationFlag = completion, verification
    if verification == "VERIFIED":
        observer = Dataset()
        observer.VerifyingObserverName = "Reader^Rita"
        observer.VerifyingOrganization = "Hospital"
        observer.VerificationDateTime = "20260102101500"
        observer.VerifyingObserverIdentificationCodeSequence = Sequence()
        ds.VerifyingObserverSequence = Sequence([observer])
    findings_item = Dataset()
    findings_item.RelationshipType, findings_item.ValueType = "CONTAINS", "TEXT"
    findings_item.ConceptNameCodeSequence = Sequence([_code("121071", "Finding")])
    findings_item.TextValue = findings
    impression = Dataset()
    impression.RelationshipType, impression.ValueType = "CONTAINS", "CONTAINER"
    impression.ContinuityOfContent = "SEPARATE"
    impression.ConceptNameCodeSequence = Sequence([_code("121076", "Conclusions")])
    conclusion = Dataset()
    conclusion.RelationshipType, conclusion.ValueType = "CONTAINS", "TEXT"
    conclusion.ConceptNameCodeSequence = Sequence([_code("121077", "Conclusion")])
    conclusion.TextValue = "See findings."
    impression.ContentSequence = Sequence([conclusion])
    ds.ContentSequence = Sequence([findings_item, impression])
    if amends:
        ref_sop = Dataset()
        ref_sop.ReferencedSOPClassUID, ref_sop.ReferencedSOPInstanceUID = BASIC_TEXT_SR, amends[2]
        series = Dataset()
        series.SeriesInstanceUID, series.ReferencedSOPSequence = amends[1], Sequence([ref_sop])
        study = Dataset()
        study.StudyInstanceUID, study.ReferencedSeriesSequence = amends[0], Sequence([series])
        ds.PredecessorDocumentsSequence = Sequence([study])
    return ds.SOPInstanceUID, _part10(ds)


def pdf_bytes(text: str) -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def encapsulated_pdf(study_uid: str, text: str, *, sop_uid: str | None = None) -> tuple[str, bytes]:
    ds = _base(ENCAPSULATED_PDF, study_uid, "DOC", sop_uid)
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.DocumentTitle = "Radiology report"
    ds.BurnedInAnnotation = "YES"
    ds.ConceptNameCodeSequence = Sequence()
    body = pdf_bytes(text)
    ds.EncapsulatedDocument = body + (b"\0" if len(body) % 2 else b"")
    return ds.SOPInstanceUID, _part10(ds)


def series_uid_of(data: bytes) -> str:
    import pydicom

    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SeriesInstanceUID)
