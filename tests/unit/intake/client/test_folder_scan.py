from pipeline.dicom.samples import PYDICOM_FILES, synthetic_study
from pipeline.intake.client.folder_scan import scan_folder


def test_recognises_dicom_by_content_and_lists_skipped(tmp_path):
    for i, data in enumerate(synthetic_study(3), 1):
        (tmp_path / f"IMG{i}").write_bytes(data)
    (tmp_path / "notes.dcm").write_text("not an image")
    (tmp_path / "DICOMDIR").write_bytes((PYDICOM_FILES / "dicomdirtests" / "DICOMDIR").read_bytes())
    scan = scan_folder(tmp_path)
    assert scan.summary() == {"patients": 1, "studies": 1, "series": 1, "files": 3,
                              "bytes": sum(f.size for f in scan.files), "skipped": 2}
    reasons = {s.path.name: s.reason for s in scan.skipped}
    assert reasons["notes.dcm"] == "not a DICOM Part-10 file"
    assert reasons["DICOMDIR"].startswith("DICOMDIR")


def test_warns_about_mixed_patients_in_one_study(tmp_path):
    study = synthetic_study(2, study_uid="1.2.3.4", patient_id="P1")
    other = synthetic_study(1, study_uid="1.2.3.4", patient_id="P2")
    for i, data in enumerate(study + other):
        (tmp_path / f"f{i}").write_bytes(data)
    assert scan_folder(tmp_path).mixed_patient_studies() == {"1.2.3.4": {"P1", "P2"}}
