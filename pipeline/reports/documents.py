"""What a report document says: its text, its status, and which earlier document it replaces.

Two kinds come back from a PACS:
- Structured Reports (modality SR, e.g. Basic Text SR 1.2.840.10008.5.1.4.1.1.88.11,
  Enhanced SR .22, Comprehensive SR .33): the content tree is read with pydicom, walking
  ContentSequence and writing one line per item ("Concept: value", containers as headings,
  indented by depth). pydicom rather than highdicom: the gateway only reads text and three
  flags, pydicom is already a runtime dependency, and highdicom would add its own stack
  (numpy, pillow, pillow-jpls...) and refuse SR variants it does not model, while a PACS
  sends whatever its reporting system wrote.
- Encapsulated PDF (modality DOC, 1.2.840.10008.5.1.4.1.1.104.1): the PDF bytes in
  EncapsulatedDocument, text extracted with pypdf.

Status from the document (FHIR DiagnosticReport codes):

    SR CompletionFlag  VerificationFlag   status
    PARTIAL            any                preliminary  (FHIR "partial" is not one of ours:
                                                        preliminary is its narrower code)
    COMPLETE           UNVERIFIED         preliminary
    COMPLETE           VERIFIED           final
    missing            missing            preliminary  (nothing says it is complete)
    any, with a PredecessorDocumentsSequence          amended (and the predecessor is
                                                        superseded, and itself amended)
    Encapsulated PDF                      final        (the IOD has no completion or
                                                        verification flags; a PACS publishes
                                                        a PDF report once it is signed)
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pydicom
from pydicom.dataset import Dataset

from pipeline.models import ReportStatus

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
# Text sizes are bounded: a report is read by people; a multi-megabyte tree is not a report.
MAX_TEXT_CHARS = 200_000
MAX_DEPTH = 50


class UnreadableDocument(ValueError):
    """Not an SR or Encapsulated PDF we can read (the reason says why, without PHI)."""


@dataclass(frozen=True)
class ReportDocument:
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    status: str
    text: str
    content_type: str  # application/dicom (SR) or application/pdf (inside the DICOM object)
    author: str | None = None
    written_at: datetime | None = None
    predecessor_uids: list[str] = field(default_factory=list)

    @property
    def text_sha256(self) -> str:
        return text_sha256(self.text)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def status_from_flags(completion: str | None, verification: str | None, amends: bool) -> str:
    """The mapping in the module docstring."""
    if amends:
        return ReportStatus.AMENDED.value
    if (completion or "").upper() == "COMPLETE" and (verification or "").upper() == "VERIFIED":
        return ReportStatus.FINAL.value
    return ReportStatus.PRELIMINARY.value


def _meaning(item: Dataset, keyword: str) -> str:
    seq = item.get(keyword)
    if not seq:
        return ""
    code = seq[0]
    return str(code.get("CodeMeaning", "") or code.get("CodeValue", ""))


def _value(item: Dataset) -> str:
    kind = str(item.get("ValueType", ""))
    if kind == "TEXT":
        return str(item.get("TextValue", ""))
    if kind == "CODE":
        return _meaning(item, "ConceptCodeSequence")
    if kind == "NUM":
        measured = item.get("MeasuredValueSequence")
        if not measured:
            return ""
        value = measured[0]
        unit = _meaning(value, "MeasurementUnitsCodeSequence")
        return f"{value.get('NumericValue', '')} {unit}".strip()
    if kind == "PNAME":
        return str(item.get("PersonName", ""))
    if kind == "DATE":
        return str(item.get("Date", ""))
    if kind == "TIME":
        return str(item.get("Time", ""))
    if kind == "DATETIME":
        return str(item.get("DateTime", ""))
    if kind == "UIDREF":
        return str(item.get("UID", ""))
    return ""


def sr_text(ds: Dataset) -> str:
    """The content tree as indented lines; the document title first."""
    lines: list[str] = []
    title = _meaning(ds, "ConceptNameCodeSequence")
    if title:
        lines.append(title)

    def walk(items: object, depth: int) -> None:
        if depth > MAX_DEPTH:
            return
        for item in items or []:  # type: ignore[union-attr]
            name = _meaning(item, "ConceptNameCodeSequence")
            value = _value(item)
            indent = "  " * depth
            if str(item.get("ValueType", "")) == "CONTAINER":
                if name:
                    lines.append(f"{indent}{name}")
            elif name and value:
                lines.append(f"{indent}{name}: {value}")
            elif value:
                lines.append(f"{indent}{value}")
            walk(item.get("ContentSequence"), depth + 1)

    walk(ds.get("ContentSequence"), 1 if title else 0)
    return "\n".join(lines)[:MAX_TEXT_CHARS]


def pdf_text(data: bytes) -> str:
    """The PDF's text, page after page (pypdf)."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise UnreadableDocument(f"PDF not readable: {type(exc).__name__}") from exc
    return "\n".join(p.strip() for p in pages if p.strip())[:MAX_TEXT_CHARS]


def _written_at(ds: Dataset) -> datetime | None:
    date, time = str(ds.get("ContentDate", "") or ""), str(ds.get("ContentTime", "") or "")
    if len(date) != 8 or not date.isdigit():
        return None
    clock = (time.split(".")[0] + "000000")[:6] if time[:6].isdigit() else "000000"
    try:
        return datetime.strptime(date + clock, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def _author(ds: Dataset) -> str | None:
    for keyword, name_keyword in (("VerifyingObserverSequence", "VerifyingObserverName"),
                                  ("AuthorObserverSequence", "PersonName")):
        seq = ds.get(keyword)
        if seq and seq[0].get(name_keyword):
            return str(seq[0].get(name_keyword))[:200]
    return None


def _predecessors(ds: Dataset) -> list[str]:
    out = []
    for study in ds.get("PredecessorDocumentsSequence") or []:
        for series in study.get("ReferencedSeriesSequence") or []:
            for sop in series.get("ReferencedSOPSequence") or []:
                uid = sop.get("ReferencedSOPInstanceUID")
                if uid:
                    out.append(str(uid))
    return out


def read_document(data: bytes) -> ReportDocument:
    """Read a Part-10 SR or Encapsulated PDF (UnreadableDocument otherwise)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same for the caller
        raise UnreadableDocument(f"not DICOM: {type(exc).__name__}") from exc
    sop_class = str(ds.get("SOPClassUID", ""))
    common = {"sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
              "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
              "study_instance_uid": str(ds.get("StudyInstanceUID", "")), "sop_class_uid": sop_class,
              "written_at": _written_at(ds)}
    if not common["sop_instance_uid"]:
        raise UnreadableDocument("no SOPInstanceUID")
    if sop_class == ENCAPSULATED_PDF or "EncapsulatedDocument" in ds:
        mime = str(ds.get("MIMETypeOfEncapsulatedDocument", "application/pdf"))
        if mime != "application/pdf":
            raise UnreadableDocument(f"encapsulated {mime}, not a PDF")
        body = bytes(ds.EncapsulatedDocument)
        return ReportDocument(**common, status=ReportStatus.FINAL.value, text=pdf_text(body),
                              content_type="application/pdf")
    if str(ds.get("Modality", "")) != "SR" and "ContentSequence" not in ds:
        raise UnreadableDocument("neither a Structured Report nor an Encapsulated PDF")
    predecessors = _predecessors(ds)
    status = status_from_flags(ds.get("CompletionFlag"), ds.get("VerificationFlag"), bool(predecessors))
    return ReportDocument(**common, status=status, text=sr_text(ds), content_type="application/dicom",
                          author=_author(ds), predecessor_uids=predecessors)
