"""Read and validate the header of a stored Part-10 file without decoding pixel data.

pydicom silently accepts truncated files, so besides reading the header we walk the
top-level elements once (values of large elements deferred, not read) and check that every
declared length fits inside the file. The result names the quarantine reason, if any.
"""

from __future__ import annotations

import re
import struct
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, data_element_generator, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True)
class InstanceHeader:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str | None
    modality: str | None
    patient_id: str | None
    study_date: str | None
    study_description: str | None
    accession_number: str | None = None


class Quarantine(Exception):
    """The file must not be forwarded; ``reason`` is a stable code, ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _uid(ds: pydicom.Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip().rstrip("\x00")
    if not value:
        raise Quarantine("missing_uid", f"{keyword} is missing")
    if len(value) > 64 or not UID_PATTERN.match(value):
        raise Quarantine("invalid_uid", f"{keyword} is not a valid UID")
    return value


def _text(ds: pydicom.Dataset, keyword: str, limit: int) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value)[:limit]


def check_complete(fp: BinaryIO, size: int) -> None:
    """Raise ``Quarantine('truncated', …)`` when an element runs past the end of the file."""
    fp.seek(0)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    ts = pydicom.uid.UID(str(meta.get("TransferSyntaxUID", ImplicitVRLittleEndian)))
    if ts == DeflatedExplicitVRLittleEndian or not ts.is_transfer_syntax:
        return  # a deflated body has no element lengths to check without inflating it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for element in data_element_generator(
                fp, ts.is_implicit_VR, ts.is_little_endian, defer_size=4096
            ):
                if (
                    isinstance(element, RawDataElement)
                    and element.length != _UNDEFINED
                    and element.value_tell + element.length > size
                ):
                    raise Quarantine("truncated", f"element {element.tag} runs past end of file")
    except Quarantine:
        raise
    except (EOFError, ValueError, OSError, struct.error) as exc:
        raise Quarantine("truncated", f"file ends inside an element ({type(exc).__name__})") from exc


def read_header(fp: BinaryIO, size: int) -> InstanceHeader:
    """Parse the header of a Part-10 file; raise ``Quarantine`` when it must not go out."""
    if size < 132:
        raise Quarantine("not_dicom", "file is too short to be DICOM")
    fp.seek(128)
    if fp.read(4) != b"DICM":
        fp.seek(0)
        raise Quarantine("not_dicom", "no DICM preamble marker (not a DICOM Part-10 file)")
    fp.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError) as exc:
        raise Quarantine("unreadable", f"header cannot be parsed ({type(exc).__name__})") from exc
    check_complete(fp, size)
    ts = ds.file_meta.get("TransferSyntaxUID")
    return InstanceHeader(
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        sop_class_uid=_uid(ds, "SOPClassUID"),
        study_instance_uid=_uid(ds, "StudyInstanceUID"),
        series_instance_uid=_uid(ds, "SeriesInstanceUID"),
        transfer_syntax_uid=str(ts) if ts else None,
        modality=_text(ds, "Modality", 16),
        patient_id=_text(ds, "PatientID", 64),
        study_date=_text(ds, "StudyDate", 8),
        study_description=_text(ds, "StudyDescription", 200),
        accession_number=_text(ds, "AccessionNumber", 16),
    )
