"""Which attributes a template or an override may set, and which values fit their VR."""

from __future__ import annotations

import pytest

from pipeline.dicom.attributes import INHERITED_ON_MOVE, Level, MetadataError, level_of, normalise_attributes


def test_typical_template_values_are_accepted_and_normalised():
    got = normalise_attributes({
        "InstitutionName": "Clinic North",
        "ReferringPhysicianName": "Who^Doctor",
        "StudyDescription": "CT head",
        "PatientWeight": 72.5,
        "SeriesNumber": 3,
        "OperatorsName": ["Smith^Ann", "Jones^Bob"],
    }, template=True)
    assert got["PatientWeight"] == "72.5"
    assert got["SeriesNumber"] == "3"
    assert got["OperatorsName"] == ["Smith^Ann", "Jones^Bob"]


@pytest.mark.parametrize("values, message", [
    ({"NotAKeyword": "x"}, "not a DICOM keyword"),
    ({"SOPInstanceUID": "1.2.3"}, "may not be edited"),
    ({"SOPClassUID": "1.2.3"}, "may not be edited"),
    ({"StudyInstanceUID": "1.2.3"}, "UID"),
    ({"SeriesInstanceUID": "1.2.3"}, "UID"),
    ({"TransferSyntaxUID": "1.2.840.10008.1.2"}, "may not be edited"),
    ({"PixelData": "x"}, "may not be edited"),
    ({"Rows": "512"}, "may not be edited"),
    ({"PhotometricInterpretation": "MONOCHROME2"}, "may not be edited"),
    ({"Modality": "MR"}, "may not be edited"),
    ({"SpecificCharacterSet": "ISO_IR 192"}, "may not be edited"),
    ({"OtherPatientIDs": "X"}, "retired"),
    ({"OtherPatientIDsSequence": []}, "VR SQ"),
    ({"PregnancyStatus": "1"}, "VR US"),
    ({"PatientBirthDate": "1990-01-01"}, "at most 8 characters for VR DA"),
    ({"PatientBirthDate": "19900231"}, "not a valid DA"),
    ({"PatientSex": "male"}, "not a valid CS"),
    ({"PatientAge": "42"}, "not a valid AS"),
    ({"PatientWeight": "heavy"}, "not a valid DS"),
    ({"SeriesNumber": "1.5"}, "not a valid IS"),
    ({"StudyTime": "25:00"}, "not a valid TM"),
    ({"AccessionNumber": "A" * 17}, "at most 16"),
    ({"InstitutionName": "A" * 65}, "at most 64"),
    ({"InstitutionName": "a\\b"}, "not a valid LO"),
    ({"InstitutionName": "line\nbreak"}, "not a valid LO"),
    ({"PatientName": "A=B=C=D"}, "3 component groups"),
    ({"StudyDescription": ["a", "b"]}, "single value"),
    ({"StudyDescription": 5}, "not a number"),
    ({"StudyDescription": None}, "value is required"),
    ({"StudyDescription": {"x": 1}}, "must be text"),
])
def test_refused(values, message):
    with pytest.raises(MetadataError, match=message):
        normalise_attributes(values)


@pytest.mark.parametrize("keyword", ["PatientName", "PatientID", "PatientBirthDate",
                                     "AccessionNumber", "StudyDate"])
def test_templates_may_not_carry_patient_or_study_identity(keyword):
    value = {"PatientName": "A^B", "PatientID": "1", "PatientBirthDate": "19900101",
             "AccessionNumber": "A1", "StudyDate": "20240101"}[keyword]
    normalise_attributes({keyword: value})  # fine in an override
    with pytest.raises(MetadataError, match="override"):
        normalise_attributes({keyword: value}, template=True)


def test_removal_only_where_allowed():
    assert normalise_attributes({"PatientName": None}, allow_removal=True) == {"PatientName": None}


def test_not_an_object():
    with pytest.raises(MetadataError):
        normalise_attributes(["PatientName"])


def test_levels_are_written_once():
    assert level_of("PatientName") is Level.PATIENT
    assert level_of("AccessionNumber") is Level.STUDY
    assert level_of("PatientWeight") is Level.STUDY  # Patient Study module: per study
    assert level_of("InstitutionName") is Level.SERIES
    assert level_of("InstanceNumber") is Level.INSTANCE
    assert "PatientName" in INHERITED_ON_MOVE and "StudyDate" in INHERITED_ON_MOVE
    assert "StudyInstanceUID" not in INHERITED_ON_MOVE
    assert "SeriesDescription" not in INHERITED_ON_MOVE
