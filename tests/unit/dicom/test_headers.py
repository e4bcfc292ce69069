import io
from pathlib import Path

import pydicom
import pytest

from pipeline.dicom.headers import Quarantine, read_header

SAMPLES = Path(pydicom.__file__).parent / "data" / "test_files"


def header_of(data: bytes):
    return read_header(io.BytesIO(data), len(data))


def test_reads_uids_without_pixel_data():
    header = header_of((SAMPLES / "CT_small.dcm").read_bytes())
    ds = pydicom.dcmread(SAMPLES / "CT_small.dcm", stop_before_pixels=True)
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.study_instance_uid == ds.StudyInstanceUID
    assert header.modality == "CT"


@pytest.mark.parametrize("cut", [100, 1000, 5000])
def test_truncated_file_is_quarantined(cut):
    data = (SAMPLES / "CT_small.dcm").read_bytes()
    with pytest.raises(Quarantine) as q:
        header_of(data[:-cut])
    assert q.value.reason == "truncated"


def test_shipped_truncated_samples():
    for name in ("rtplan_truncated.dcm", "MR_truncated.dcm"):
        with pytest.raises(Quarantine) as q:
            header_of((SAMPLES / name).read_bytes())
        assert q.value.reason == "truncated"


def test_not_dicom():
    with pytest.raises(Quarantine) as q:
        header_of(b"%PDF-1.4 " + b"x" * 500)
    assert q.value.reason == "not_dicom"


def test_missing_uid():
    ds = pydicom.dcmread(SAMPLES / "CT_small.dcm")
    del ds.StudyInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(Quarantine) as q:
        header_of(buf.getvalue())
    assert q.value.reason == "missing_uid"
