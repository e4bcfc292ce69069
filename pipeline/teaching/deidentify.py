"""De-identify one DICOM instance for the teaching file (PS3.15 Annex E Basic Profile and
the options of ``profile.DeidOptions``), in place, and say what was replaced.

What this module owns:
- every attribute, at every depth of nested sequences, gets the action of the rule table;
- UIDs are replaced by an HMAC of the original under a configurable root, so the same
  original UID becomes the same new UID in every case of every patient (references between
  instances still resolve) and nothing can turn a new UID back without the secret;
- dates move by one secret whole-day offset per patient (a PatientID within one facility);
- private attributes go unless the Retain Safe Private option is chosen and the attribute is
  on the safe list; curves (50xx) go, overlay data and comments (60xx) go;
- encapsulated JPEG frames lose their APP1 (EXIF, GPS, XMP) and other metadata segments;
- PatientIdentityRemoved, DeidentificationMethod(CodeSequence) and
  LongitudinalTemporalInformationModified record what was done.

A DICOMDIR is never de-identified: a case's DICOMDIR is rebuilt from its de-identified
instances (``pipeline.teaching.packaging``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

from pipeline.teaching import jpeg
from pipeline.teaching.profile import DeidOptions, rule_table

DICOMDIR_CLASS_UID = "1.2.840.10008.1.3.10"

# A whole-day shift, always into the past, between one and eleven years.
_SHIFT_MIN_DAYS = 365
_SHIFT_SPAN_DAYS = 3650

_DUMMY_TEXT = "ANONYMIZED"
_DUMMY_BY_VR: dict[str, object] = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000D",
    "IS": "0",
    "DS": "0",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "AT": 0,
    "UR": "urn:anonymized",
    "OB": b"\x00\x00",
    "OW": b"\x00\x00",
    "OD": b"\x00" * 8,
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
    "UN": b"\x00\x00",
}

_STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
     "UR", "UT"}
)

# UI attributes outside the table that name a kind of thing, not a thing: never replaced.
_UID_KEEP_SUFFIXES = ("ClassUID", "TransferSyntaxUID", "CodingSchemeUID")


class NotAnInstance(ValueError):
    """The file is a DICOMDIR (rebuilt, never de-identified) or has no SOP Instance UID."""


@dataclass
class DeidContext:
    """One de-identification run (a case): the secret, the UID root, the options and the
    identifiers replaced so far (kept for the admin-only mapping table)."""

    secret: bytes
    facility_id: int
    options: DeidOptions = field(default_factory=DeidOptions)
    uid_root: str = "2.25"
    # (private creator, element byte) pairs kept by the Retain Safe Private option.
    safe_private: frozenset[tuple[str, int]] = frozenset()
    uid_map: dict[str, str] = field(default_factory=dict)

    def new_uid(self, original: str) -> str:
        known = self.uid_map.get(original)
        if known is not None:
            return known
        digest = hmac.new(self.secret, b"uid\x00" + original.encode(), hashlib.sha256).digest()
        number = int.from_bytes(digest[:16], "big")
        root = self.uid_root.rstrip(".")
        if root == "2.25":
            new = f"2.25.{number}"
        else:
            room = 64 - len(root) - 1
            new = f"{root}.{number % (10 ** room) or 1}"
        self.uid_map[original] = new
        return new

    def shift_days(self, patient_id: str) -> int:
        return date_shift_days(self.secret, self.facility_id, patient_id)


def date_shift_days(secret: bytes, facility_id: int, patient_id: str) -> int:
    """The secret whole-day offset for one patient (a PatientID within one facility)."""
    message = f"shift\x00{facility_id}\x00{patient_id}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return -(_SHIFT_MIN_DAYS + int.from_bytes(digest[:8], "big") % _SHIFT_SPAN_DAYS)


_PATIENT_ID = 0x00100020


def patient_pseudonym(secret: bytes, facility_id: int, patient_id: str) -> str:
    """The dummy PatientID (Table E.1-1: Z/D): one per patient, so a viewer still groups a
    patient's teaching cases, and meaningless without the secret."""
    message = f"patient\x00{facility_id}\x00{patient_id}".encode()
    return "TF-" + hmac.new(secret, message, hashlib.sha256).hexdigest()[:12].upper()


@dataclass(frozen=True)
class DeidResult:
    """The original and new identifiers of one instance (for the mapping table)."""

    original_patient_id: str
    original_accession: str
    original_study_uid: str
    original_series_uid: str
    original_sop_uid: str
    study_uid: str
    series_uid: str
    sop_uid: str
    shift_days: int | None


def _shift_date(value: str, days: int) -> str:
    value = value.strip()
    if len(value) < 8 or not value[:8].isdigit():
        return ""
    try:
        moved = date(int(value[:4]), int(value[4:6]), int(value[6:8])) + timedelta(days=days)
    except ValueError:
        return ""
    return moved.strftime("%Y%m%d") + value[8:]


def _shift_value(value: object, days: int) -> object:
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        return [_shift_date(str(v), days) for v in value]
    if value is None or value == "":
        return value
    return _shift_date(str(value), days)


_DATE_LIKE = re.compile(
    r"\b(\d{4}[-/.]?\d{2}[-/.]?\d{2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})\b"
)
_LONG_NUMBER = re.compile(r"\b[A-Za-z]{0,3}\d{5,}[A-Za-z0-9]*\b")


class _Cleaner:
    """Clean Descriptors: take out of free text the patient's name parts, identifiers and
    anything shaped like a date or a long number; what is left is kept."""

    def __init__(self, ds: Dataset):
        words: set[str] = set()
        for keyword in (
            "PatientName",
            "PatientID",
            "OtherPatientNames",
            "PatientBirthName",
            "PatientMotherBirthName",
            "AccessionNumber",
            "ReferringPhysicianName",
            "PerformingPhysicianName",
            "OperatorsName",
            "InstitutionName",
            "StudyID",
        ):
            elem = ds.data_element(keyword) if keyword in ds else None
            if elem is None or elem.value in (None, ""):
                continue
            values = elem.value if elem.VM > 1 else [elem.value]
            for item in values:
                for part in re.split(r"[\^=\s,]+", str(item)):
                    if len(part) >= 2:
                        words.add(part.lower())
        self._pattern = (
            re.compile(
                r"\b(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b",
                re.IGNORECASE,
            )
            if words
            else None
        )

    def clean(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(" ", text)
        text = _DATE_LIKE.sub(" ", text)
        text = _LONG_NUMBER.sub(" ", text)
        return " ".join(text.split())


def _is_standard_uid(value: str) -> bool:
    return value in UID_dictionary


class _Walker:
    def __init__(self, ctx: DeidContext, shift: int, cleaner: _Cleaner, pseudonym: str):
        self.ctx = ctx
        self.pseudonym = pseudonym
        self.table = rule_table(ctx.options)
        self.shift = shift
        self.cleaner = cleaner

    def walk(self, ds: Dataset) -> None:
        table = self.table
        creators: dict[tuple[int, int], str] | None = None
        for tag in list(ds.keys()):
            t = int(tag)
            group = t >> 16
            element = t & 0xFFFF
            if element == 0:
                # Group lengths are recomputed, never needed.
                del ds[tag]
                continue
            if group & 1:
                if creators is None:
                    creators = self._private_creators(ds)
                self._private(ds, t, creators)
                continue
            action = table.for_tag(t)
            if action is None or action == "K":
                self._keep(ds, tag, t)
                continue
            self._apply(ds, tag, t, action)

    def _keep(self, ds: Dataset, tag, t: int) -> None:
        raw = ds.get_item(tag)
        vr = raw.VR
        # Implicit VR, or a known attribute written as UN: pydicom converts it on access.
        if vr is None or vr == "UN":
            try:
                vr = dictionary_VR(t)
            except KeyError:
                return
        if vr == "SQ":
            for item in ds[tag].value:
                self.walk(item)
        elif vr == "UI":
            elem = ds[tag]
            if elem.value and not keyword_for_tag(t).endswith(_UID_KEEP_SUFFIXES):
                elem.value = self._uids(elem.value, keep_standard=True)

    def _uids(self, value, *, keep_standard: bool):
        if isinstance(value, (list, pydicom.multival.MultiValue)):
            return [self._uids(v, keep_standard=keep_standard) for v in value]
        if not value or (keep_standard and _is_standard_uid(value)):
            return value
        return self.ctx.new_uid(str(value))

    def _apply(self, ds: Dataset, tag, t: int, action: str) -> None:
        if action == "X":
            del ds[tag]
            return
        elem = ds[tag]
        if action == "Z":
            if elem.VR == "SQ":
                elem.value = Sequence()
            elif elem.VR in _STRING_VRS:
                elem.value = ""
            else:
                elem.value = None
        elif action == "U":
            if elem.VR == "SQ":
                for item in elem.value:
                    self.walk(item)
            elif elem.value:
                elem.value = self._uids(elem.value, keep_standard=False)
        elif action == "USEQ":
            if elem.VR == "SQ":
                for item in elem.value:
                    self.walk(item)
            else:
                del ds[tag]
        elif action == "SHIFT":
            if elem.VR in ("DA", "DT"):
                elem.value = _shift_value(elem.value, self.shift)
            else:
                self._dummy(elem)
        elif action.startswith("CLEAN:"):
            if elem.VR == "SQ":
                for item in elem.value:
                    self.walk(item)
                return
            if isinstance(elem.value, str) and elem.value:
                cleaned = self.cleaner.clean(elem.value)
                if cleaned:
                    elem.value = cleaned
                    return
            fallback = action.removeprefix("CLEAN:")
            if fallback in ("X", "Z", "D"):
                self._apply(ds, tag, t, fallback)
            else:
                del ds[tag]
        else:  # D
            self._dummy(elem)

    def _dummy(self, elem: DataElement) -> None:
        vr = elem.VR
        if elem.tag == _PATIENT_ID:
            elem.value = self.pseudonym
        elif vr == "UI":
            original = elem.value or str(elem.tag)
            elem.value = self._uids(original, keep_standard=False)
        elif vr == "SQ":
            elem.value = Sequence([Dataset()])
        elif vr in _DUMMY_BY_VR:
            elem.value = _DUMMY_BY_VR[vr]
        else:
            elem.value = _DUMMY_TEXT

    @staticmethod
    def _private_creators(ds: Dataset) -> dict[tuple[int, int], str]:
        creators: dict[tuple[int, int], str] = {}
        for tag in list(ds.keys()):
            t = int(tag)
            if t >> 16 & 1 and 0x10 <= (t & 0xFFFF) <= 0xFF:
                value = ds[tag].value
                creators[(t >> 16, t & 0xFF)] = str(value).strip() if value else ""
        return creators

    def _private(self, ds: Dataset, t: int, creators: dict[tuple[int, int], str]) -> None:
        group, element = t >> 16, t & 0xFFFF
        if self.ctx.options.retain_safe_private and self.ctx.safe_private:
            if 0x10 <= element <= 0xFF:
                if any(creator == creators.get((group, element)) for creator, _ in self.ctx.safe_private):
                    return
            elif element > 0xFF:
                creator = creators.get((group, element >> 8))
                if creator is not None and (creator, element & 0xFF) in self.ctx.safe_private:
                    elem = ds[t]
                    if elem.VR == "SQ":
                        for item in elem.value:
                            self.walk(item)
                    return
        del ds[t]


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


def deidentify(
    ds: Dataset, ctx: DeidContext, *, pixels_cleaned: bool = False
) -> DeidResult:
    """De-identify ``ds`` in place (its file meta too) and return what was replaced."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("MediaStorageSOPClassUID") == DICOMDIR_CLASS_UID:
        raise NotAnInstance("a DICOMDIR is rebuilt from the de-identified instances, never de-identified")
    original_sop = _text(ds, "SOPInstanceUID")
    if not original_sop:
        raise NotAnInstance("no SOP Instance UID")
    patient_id = _text(ds, "PatientID")
    accession = _text(ds, "AccessionNumber")
    study = _text(ds, "StudyInstanceUID")
    series = _text(ds, "SeriesInstanceUID")
    shift = ctx.shift_days(patient_id)
    cleaner = _Cleaner(ds) if ctx.options.clean_descriptors else _Cleaner(Dataset())

    jpeg.strip_metadata_segments(ds)
    _Walker(ctx, shift, cleaner, patient_pseudonym(ctx.secret, ctx.facility_id, patient_id)).walk(ds)
    # Overlay data/comments and curves, whatever the table's masks say: a 60xx group without
    # its data is meaningless, so the whole overlay goes.
    for tag in list(ds.keys()):
        if not tag.group & 1 and t_is_curve_or_overlay(int(tag)):
            del ds[tag]

    ds.PatientIdentityRemoved = "YES"
    codes = ctx.options.codes(pixels_cleaned=pixels_cleaned)
    ds.DeidentificationMethod = ["RelayPACS teaching file: PS3.15 E.1-1"] + [
        meaning[:64] for _, meaning in codes[1:]
    ]
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = (
        "MODIFIED" if ctx.options.retain_modified_dates else "REMOVED"
    )
    if pixels_cleaned:
        ds.BurnedInAnnotation = "NO"

    new_sop = _text(ds, "SOPInstanceUID")
    if meta is not None:
        if "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = new_sop
        # The sending station's AE title says where the study came from.
        for keyword in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                        "ReceivingApplicationEntityTitle", "PrivateInformationCreatorUID",
                        "PrivateInformation"):
            if keyword in meta:
                del meta[keyword]
    return DeidResult(
        original_patient_id=patient_id,
        original_accession=accession,
        original_study_uid=study,
        original_series_uid=series,
        original_sop_uid=original_sop,
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        sop_uid=new_sop,
        shift_days=shift if ctx.options.retain_modified_dates else None,
    )


def t_is_curve_or_overlay(tag: int) -> bool:
    group = tag >> 16
    if 0x5000 <= group <= 0x50FF:
        return True
    return 0x6000 <= group <= 0x60FF


def deidentify_file(
    source: str | Path, destination: str | Path, ctx: DeidContext, *, pixels_cleaned: bool = False
) -> DeidResult:
    """Read a Part-10 file, de-identify it and write it (files to files, as a CLI would)."""
    ds = pydicom.dcmread(source, force=True)
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    result = deidentify(ds, ctx, pixels_cleaned=pixels_cleaned)
    ds.save_as(destination, enforce_file_format=False)
    return result
