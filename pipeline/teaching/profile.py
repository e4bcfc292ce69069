"""The de-identification rule table: DICOM PS3.15 Annex E Table E.1-1 and the options a
teaching file uses, resolved to one action per attribute.

The Basic Profile column comes from the ``dicom-anonymizer`` package (KitwareMedical), which
ships Table E.1-1 parsed from each edition of the standard (``dicomfields_2026c`` here); we
do not keep our own copy of that column. The option columns are rules written from the
option definitions of PS3.15 E.3 (what each option retains or cleans), checked in the tests
against an independent copy of the whole table taken from another source.

Effective actions (one per attribute, after the chosen options):
``X`` remove, ``Z`` empty, ``D`` dummy value, ``U`` consistent UID, ``K`` keep,
``SHIFT`` dates moved by the patient's secret offset (times kept),
``CLEAN`` descriptor text with identifying words taken out,
``USEQ`` sequence kept with every UID inside replaced (the X/Z/U* references).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag

# The edition of Table E.1-1 the Basic Profile column is read from.
STANDARD_EDITION = "dicomfields_2026c"

# CID 7050 codes (De-identification Method): the profile and each option we apply.
CODE_BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CODE_CLEAN_PIXEL_DATA = ("113101", "Clean Pixel Data Option")
CODE_CLEAN_DESCRIPTORS = ("113105", "Clean Descriptors Option")
CODE_RETAIN_MODIFIED_DATES = (
    "113107",
    "Retain Longitudinal Temporal Information Modified Dates Option",
)
CODE_RETAIN_PATIENT_CHARACTERISTICS = ("113108", "Retain Patient Characteristics Option")
CODE_RETAIN_SAFE_PRIVATE = ("113111", "Retain Safe Private Option")


@dataclass(frozen=True)
class DeidOptions:
    """The Annex E options chosen for one case (the Basic Profile always applies)."""

    retain_modified_dates: bool = True
    retain_patient_characteristics: bool = True
    clean_descriptors: bool = True
    retain_safe_private: bool = False

    def codes(self, *, pixels_cleaned: bool = False) -> list[tuple[str, str]]:
        codes = [CODE_BASIC_PROFILE]
        if pixels_cleaned:
            codes.append(CODE_CLEAN_PIXEL_DATA)
        if self.clean_descriptors:
            codes.append(CODE_CLEAN_DESCRIPTORS)
        if self.retain_modified_dates:
            codes.append(CODE_RETAIN_MODIFIED_DATES)
        if self.retain_patient_characteristics:
            codes.append(CODE_RETAIN_PATIENT_CHARACTERISTICS)
        if self.retain_safe_private:
            codes.append(CODE_RETAIN_SAFE_PRIVATE)
        return codes


# Retain Patient Characteristics (PS3.15 E.3.4): sex, age, size, weight and the other
# physical characteristics are kept; free-text ones about the patient are cleaned.
PATIENT_CHARACTERISTICS_KEEP = frozenset(
    {
        "PatientSex",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "EthnicGroup",
        "SmokingStatus",
        "PregnancyStatus",
        "PatientSexNeutered",
        "EthnicGroupCodeSequence",
        # An age a hanging protocol selects on is a patient characteristic too.
        "SelectorASValue",
    }
)
PATIENT_CHARACTERISTICS_CLEAN = frozenset(
    {"Allergies", "SpecialNeeds", "PatientState", "PreMedication"}
)

_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})
# Clean Descriptors (PS3.15 E.3.5): the descriptions, comments and labels an operator typed.
_DESCRIPTOR_SUFFIXES = (
    "Description",
    "Descriptions",
    "Comments",
    "Comment",
    "Purpose",
    "Reason",
    "Notes",
)
_DESCRIPTOR_NAMES = frozenset(
    {
        "ProtocolName",
        "AdditionalPatientHistory",
        "ReasonForStudy",
        "ReasonForTheRequestedProcedure",
        "ReasonForTheImagingServiceRequest",
        "RequestedContrastAgent",
        "ContrastBolusAgent",
        "PerformedProcedureStepDescription",
        "MedicalAlerts",
        "Occupation",
        "ScheduledProcedureStepDescription",
        "IdentifyingComments",
        "DischargeDiagnosisDescription",
        "AdmittingDiagnosesDescription",
        "ServiceEpisodeDescription",
        "VisitComments",
    }
)
# Named like descriptors but not cleaned by the option in Table E.1-1 (device identity,
# annotation text, image-level comments): removed even with Clean Descriptors. Found by the
# conformance test against the independent table.
_NOT_DESCRIPTORS = frozenset(
    {
        "DeviceDescription",
        "ModifiedImageDescription",
        "ImagePresentationComments",
        "ConfidentialityConstraintOnPatientDataDescription",
        "TextComments",
        "TextString",
    }
)

# The birth date and time identify; GPS (EXIF) timestamps locate: the dates option keeps
# neither (E.3.6 retains the timeline of the studies, not these).
_NEVER_RETAINED_TIMES = frozenset({"PatientBirthDate", "PatientBirthTime"})
_GPS_GROUP = 0x0016

# The X/Z/D style compound actions: the strongest choice that keeps the object valid.
# Z keeps a Type 2 attribute present; D keeps a Type 1 attribute non-empty.
_COMPOUND = {"X/Z": "Z", "Z/D": "D", "X/D": "D", "X/Z/D": "D", "X/Z/U*": "USEQ"}


@dataclass(frozen=True)
class RuleTable:
    """Effective action per exact tag, plus masked rules for repeating groups."""

    exact: dict[int, str]
    masked: tuple[tuple[int, int, int, int, str], ...]
    private: str

    def for_tag(self, tag: int) -> str | None:
        action = self.exact.get(tag)
        if action is not None:
            return action
        group, element = tag >> 16, tag & 0xFFFF
        for g, e, gmask, emask, act in self.masked:
            if group & gmask == g and element & emask == e:
                return act
        return None


@functools.lru_cache(maxsize=1)
def basic_profile() -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...]]:
    """Table E.1-1's Basic Profile column as {tag: action} and the repeating-group rules."""
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    categories = dicom_anonymization_database_selector(STANDARD_EDITION)
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, tags in categories.items():
        if category == "ALL_TAGS":
            continue
        action = category.removesuffix("_TAGS").replace("_STAR", "*").replace("_", "/")
        for entry in tags:
            if len(entry) == 2:
                exact[(entry[0] << 16) | entry[1]] = action
            else:
                g, e, gmask, emask = entry
                masked.append((g & gmask, e & emask, gmask, emask, action))
    return exact, tuple(masked)


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return ""


def _is_descriptor(tag: int, vr: str) -> bool:
    keyword = keyword_for_tag(tag)
    if keyword in _NOT_DESCRIPTORS:
        return False
    if keyword in _DESCRIPTOR_NAMES:
        return True
    return vr in _TEXT_VRS and keyword.endswith(_DESCRIPTOR_SUFFIXES)


@functools.lru_cache(maxsize=16)
def rule_table(options: DeidOptions) -> RuleTable:
    """Resolve Table E.1-1 for ``options`` into one effective action per attribute."""
    exact_basic, masked_basic = basic_profile()
    exact: dict[int, str] = {}
    for tag, basic in exact_basic.items():
        vr = _vr(tag)
        action = _COMPOUND.get(basic, basic)
        keyword = keyword_for_tag(tag)
        if basic in ("U", "K"):
            pass
        elif options.retain_patient_characteristics and keyword in PATIENT_CHARACTERISTICS_KEEP:
            action = "K"
        elif options.retain_modified_dates and (
            keyword in _NEVER_RETAINED_TIMES or tag >> 16 == _GPS_GROUP
        ):
            pass
        elif options.retain_modified_dates and vr in ("DA", "DT"):
            action = "SHIFT"
        elif options.retain_modified_dates and vr == "TM":
            # Whole days move; the time of day is kept.
            action = "K"
        elif options.clean_descriptors and (
            _is_descriptor(tag, vr)
            or (
                options.retain_patient_characteristics
                and keyword in PATIENT_CHARACTERISTICS_CLEAN
            )
        ):
            # Cleaning falls back to the Basic Profile action when nothing safe is left.
            action = "CLEAN:" + action
        elif action == "USEQ" and vr != "SQ":
            action = "U" if vr == "UI" else "X"
        exact[tag] = action
    masked = tuple(
        (g, e, gm, em, _COMPOUND.get(a, a)) for g, e, gm, em, a in masked_basic
    )
    return RuleTable(exact=exact, masked=masked, private="X")
