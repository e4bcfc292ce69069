"""Sample studies for the demo and benchmarks: real files shipped inside pydicom, and
synthetic studies made from its CT with fresh UIDs.

pydicom's ``get_testdata_files()`` may download files that are not shipped, so the folder
is read directly.
"""

from __future__ import annotations

import copy
import io
from functools import cache
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

# Small, varied, valid instances (CT, MR, RT plan/dose, SR, NM, secondary capture).
DEMO_SAMPLES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm", "test-SR.dcm",
                "SC_rgb_small_odd.dcm", "examples_palette.dcm", "waveform_ecg.dcm")
# Shipped broken: pydicom reads it without complaint, but it stops inside a sequence.
DEMO_BROKEN = ("rtplan_truncated.dcm",)


def shipped(names: tuple[str, ...]) -> list[Path]:
    return [PYDICOM_FILES / n for n in names if (PYDICOM_FILES / n).is_file()]


@cache
def _ct_template() -> pydicom.Dataset:
    return pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")


def synthetic_study(
    n: int, study_uid: str | None = None, series_uid: str | None = None,
    patient_id: str | None = None,
) -> list[bytes]:
    """``n`` Part-10 CT instances (copies of CT_small.dcm, ~39 KB each) of one new study and
    series, each with a new SOPInstanceUID and InstanceNumber 1..n."""
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    template = _ct_template()
    out = []
    for number in range(1, n + 1):
        ds = copy.deepcopy(template)
        sop_uid = generate_uid()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.InstanceNumber = number
        if patient_id:
            ds.PatientID = patient_id
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out
