"""Which DICOM attributes the gateway may edit, at which level of the information model
each one lives, and whether a value a clinic typed fits its VR.

The rules are data, written once here and used by templates, per-patient overrides, study
moves (which copy the patient- and study-level attributes) and the rewriting itself.
Levels follow the DICOM information model (PS3.3 C.7.1-C.7.5, PS3.4 C.6.1.1): the Patient
module is patient-level, General Study and Patient Study are study-level, General Series and
General Equipment are series-level.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Mapping

from pydicom.datadict import (
    dictionary_is_retired,
    dictionary_VM,
    dictionary_VR,
    tag_for_keyword,
)
from pydicom.dataelem import DataElement
from pydicom.tag import Tag


class Level(enum.StrEnum):
    PATIENT = "patient"
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


PATIENT_LEVEL: tuple[str, ...] = (
    "PatientName", "PatientID", "IssuerOfPatientID", "TypeOfPatientID", "PatientBirthDate",
    "PatientBirthTime", "PatientSex", "OtherPatientIDsSequence", "OtherPatientNames",
    "PatientBirthName", "PatientMotherBirthName", "EthnicGroup", "PatientComments",
    "PatientSpeciesDescription", "PatientBreedDescription", "PatientSexNeutered",
    "ResponsiblePerson", "PatientIdentityRemoved", "DeidentificationMethod",
    "PatientAddress", "PatientTelephoneNumbers", "CountryOfResidence", "RegionOfResidence",
)
STUDY_LEVEL: tuple[str, ...] = (
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyID", "StudyDescription", "ReferringPhysicianName",
    "ConsultingPhysicianName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence", "ReasonForPerformedProcedureCodeSequence",
    "AdmittingDiagnosesDescription", "PatientAge", "PatientSize", "PatientWeight",
    "Occupation", "AdditionalPatientHistory", "PregnancyStatus", "SmokingStatus",
    "MedicalAlerts", "Allergies", "PatientState", "LastMenstrualDate",
)
SERIES_LEVEL: tuple[str, ...] = (
    "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDate", "SeriesTime",
    "SeriesDescription", "Laterality", "BodyPartExamined", "ProtocolName",
    "PerformingPhysicianName", "OperatorsName", "PatientPosition",
    "PerformedProcedureStepID", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "PerformedProcedureStepDescription",
    "Manufacturer", "InstitutionName", "InstitutionAddress", "StationName",
    "InstitutionalDepartmentName", "ManufacturerModelName", "DeviceSerialNumber",
    "SoftwareVersions",
)
_LEVELS = {
    **{k: Level.PATIENT for k in PATIENT_LEVEL},
    **{k: Level.STUDY for k in STUDY_LEVEL},
    **{k: Level.SERIES for k in SERIES_LEVEL},
}

# What a move copies from the target study: everything patient- and study-level except the
# study's own UID, which the move sets itself.
INHERITED_ON_MOVE: tuple[str, ...] = tuple(
    k for k in PATIENT_LEVEL + STUDY_LEVEL if k != "StudyInstanceUID"
)

# Never editable by a template or an override, whatever their VR: they describe the pixel
# data or how the file is encoded (an edit would corrupt the image or its meaning), or the
# gateway relies on them (Modality routes and groups; the character set is ours to manage).
PROTECTED: frozenset[str] = frozenset({
    "SpecificCharacterSet", "Modality", "SamplesPerPixel", "PhotometricInterpretation",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "PlanarConfiguration", "NumberOfFrames", "FrameIncrementPointer", "PixelAspectRatio",
    "PixelSpacing", "ImagerPixelSpacing", "SliceThickness", "SpacingBetweenSlices",
    "ImagePositionPatient", "ImageOrientationPatient", "RescaleIntercept", "RescaleSlope",
    "RescaleType", "WindowCenter", "WindowWidth", "VOILUTFunction", "LossyImageCompression",
    "LossyImageCompressionRatio", "LossyImageCompressionMethod", "ImageType",
    "SOPClassUID", "SOPInstanceUID", "PixelData", "FloatPixelData", "DoubleFloatPixelData",
    "PixelPaddingValue", "SmallestImagePixelValue", "LargestImagePixelValue",
})

# A template applies to every patient of a batch: patient identity in it would merge
# patients, and study identity in it would merge studies.
NOT_IN_TEMPLATES: frozenset[str] = frozenset(PATIENT_LEVEL) | {
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "IssuerOfAccessionNumberSequence",
}

_NO_CONTROL = r"[^\x00-\x1f\x7f\\]"
_TEXT = r"[^\x00-\x08\x0b\x0e-\x1f\x7f]"  # LT/ST/UT also allow TAB, LF, FF, CR and backslash


def _date(value: str) -> bool:
    try:
        dt.datetime.strptime(value, "%Y%m%d")
    except ValueError:
        return False
    return True


def _number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


# VR -> (maximum length in characters, pattern of one value, extra check). Only VRs whose
# values are text a person can type: binary, UID and sequence VRs are refused.
TYPABLE_VRS: Mapping[str, tuple[int | None, str, object]] = {
    "AE": (16, r"[\x20-\x5b\x5d-\x7e]*", None),
    "AS": (4, r"[0-9]{3}[DWMY]", None),
    "CS": (16, r"[A-Z0-9 _]*", None),
    "DA": (8, r"[0-9]{8}", _date),
    "DS": (16, r" *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *", _number),
    "DT": (26, r"[0-9]{4}([0-9]{2}([0-9]{2}([0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?)?)?)?"
               r"([+-][0-9]{4})?", None),
    "IS": (12, r" *[+-]?[0-9]+ *", lambda v: -(2**31) <= int(v) < 2**31),
    "LO": (64, f"{_NO_CONTROL}*", None),
    "LT": (10240, f"{_TEXT}*", None),
    # Per component group; "=" separates the alphabetic, ideographic and phonetic groups.
    "PN": (64, f"{_NO_CONTROL}*", None),
    "SH": (16, f"{_NO_CONTROL}*", None),
    "ST": (1024, f"{_TEXT}*", None),
    "TM": (14, r"[0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?", None),
    "UC": (None, f"{_NO_CONTROL}*", None),
    "UR": (None, r"[\x21-\x5b\x5d-\x7e]*", None),
    "UT": (None, f"{_TEXT}*", None),
}

MAX_ATTRIBUTES = 64


class MetadataError(ValueError):
    """A template or override names an attribute or value that cannot be applied."""


def level_of(keyword: str) -> Level:
    return _LEVELS.get(keyword, Level.INSTANCE)


def _check_value(keyword: str, vr: str, value: str) -> None:
    limit, pattern, extra = TYPABLE_VRS[vr]
    parts = value.split("=") if vr == "PN" else [value]
    if vr == "PN" and len(parts) > 3:
        raise MetadataError(f"{keyword}: a person name has at most 3 component groups")
    for part in parts:
        if limit is not None and len(part) > limit:
            raise MetadataError(f"{keyword}: at most {limit} characters for VR {vr}")
        if not re.fullmatch(pattern, part):
            raise MetadataError(f"{keyword}: not a valid {vr} value")
    if value and callable(extra) and not extra(value.strip()):
        raise MetadataError(f"{keyword}: not a valid {vr} value")


def _multiplicity_allows_many(vm: str) -> bool:
    return vm not in ("1", "")


def check_keyword(keyword: object, *, template: bool = False) -> tuple[int, str]:
    """(tag, VR) of an editable attribute, or MetadataError saying why not."""
    if not isinstance(keyword, str) or not keyword:
        raise MetadataError("attribute names must be DICOM keywords (e.g. InstitutionName)")
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise MetadataError(f"{keyword!r} is not a DICOM keyword")
    tag = Tag(tag)
    vr = dictionary_VR(tag)
    if keyword in PROTECTED or tag.group in (0x0000, 0x0002) or tag.group >= 0x7FE0:
        raise MetadataError(f"{keyword} may not be edited (it describes the pixel data, the "
                            "encoding or the object's identity)")
    if vr == "UI":
        raise MetadataError(f"{keyword} is a UID; UIDs are never edited by hand "
                            "(move series or instances to change their study)")
    if dictionary_is_retired(tag):
        raise MetadataError(f"{keyword} is retired from the DICOM standard")
    if vr not in TYPABLE_VRS:
        raise MetadataError(f"{keyword} has VR {vr}, which cannot be set from text")
    if template and keyword in NOT_IN_TEMPLATES:
        raise MetadataError(f"{keyword} identifies a patient or a study; set it per patient "
                            "(an override), not in a template that applies to everyone")
    return tag, vr


def normalise_attributes(values: object, *, template: bool = False,
                         allow_removal: bool = False) -> dict[str, str | list[str] | None]:
    """Validate ``{keyword: value}`` and return it normalised (numbers as text, lists for
    multi-valued attributes). ``None`` as a value (when allowed) means "remove this edit"."""
    if not isinstance(values, Mapping):
        raise MetadataError("attributes must be an object of DICOM keyword -> value")
    if len(values) > MAX_ATTRIBUTES:
        raise MetadataError(f"at most {MAX_ATTRIBUTES} attributes at once")
    out: dict[str, str | list[str] | None] = {}
    for keyword, raw in values.items():
        tag, vr = check_keyword(keyword, template=template)
        if raw is None:
            if not allow_removal:
                raise MetadataError(f"{keyword}: a value is required")
            out[keyword] = None
            continue
        items = raw if isinstance(raw, list) else [raw]
        if isinstance(raw, list) and not _multiplicity_allows_many(dictionary_VM(tag)):
            raise MetadataError(f"{keyword} takes a single value")
        texts = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise MetadataError(f"{keyword}: values must be text")
            if isinstance(item, int | float) and vr not in ("DS", "IS"):
                raise MetadataError(f"{keyword}: VR {vr} takes text, not a number")
            text = str(item)
            _check_value(keyword, vr, text)
            texts.append(text)
        out[keyword] = texts if isinstance(raw, list) else texts[0]
    return out


def element_for(keyword: str, value: str | list[str]) -> DataElement:
    """The data element an already validated value becomes."""
    tag = Tag(tag_for_keyword(keyword))
    return DataElement(tag, dictionary_VR(tag), value)
