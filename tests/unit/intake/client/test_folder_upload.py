"""``relaypacs upload --override FILE``: CSV or JSON per-patient values, shape checked."""

from __future__ import annotations

import pytest

from pipeline.intake.client.folder_upload import OverrideFileError, load_overrides


def test_csv_with_patient_id_and_keyword_columns(tmp_path):
    path = tmp_path / "fix.csv"
    path.write_text("PatientID,PatientName,PatientBirthDate\n"
                    "P1,Doe^Jane,19800101\n"
                    "P2,Roe^Ann,\n", encoding="utf-8")
    assert load_overrides(path) == {
        "P1": {"PatientName": "Doe^Jane", "PatientBirthDate": "19800101"},
        "P2": {"PatientName": "Roe^Ann"},  # an empty cell changes nothing
    }


def test_json_mapping(tmp_path):
    path = tmp_path / "fix.json"
    path.write_text('{"P1": {"PatientName": "Müller^Jürgen"}}', encoding="utf-8")
    assert load_overrides(path) == {"P1": {"PatientName": "Müller^Jürgen"}}


@pytest.mark.parametrize("name, text", [
    ("a.csv", "PatientName\nDoe^Jane\n"),
    ("a.csv", "PatientID,PatientName\n,Doe^Jane\n"),
    ("a.csv", "PatientID,PatientName\nP1,A^B,extra\n"),
    ("a.csv", "PatientID,PatientName\nP1,A^B\nP1,C^D\n"),
    ("a.json", '["P1"]'),
    ("a.json", '{"P1": "Doe^Jane"}'),
    ("a.json", "{not json"),
])
def test_malformed_files(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(OverrideFileError):
        load_overrides(path)
