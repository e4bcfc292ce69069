import io
import tracemalloc
from pathlib import Path

import pydicom
import pytest

from pipeline.dicom.headers import ParseLimits, Quarantine, read_header
from tests.hostile_files import broken_corpus, deep_nesting, deflate_bomb

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


# -- hostile files: every one ends in a Quarantine with a reason, within bounded memory


def test_deflate_bomb_is_quarantined_without_inflating_it_whole():
    bomb = deflate_bomb(50 * 1024 * 1024)  # ~50 KB deflated, 50 MB inflated
    assert len(bomb) < 100 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(Quarantine) as q:
            header_of(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert q.value.reason == "inflate_limit"
    assert "times" in q.value.detail
    assert peak < 16 * 1024 * 1024, f"{peak} bytes allocated while reading a 50 KB file"


def test_inflate_size_bound_is_a_setting():
    data = deflate_bomb(2 * 1024 * 1024)  # under the ratio floor: only the size bound applies
    assert header_of(data).sop_instance_uid
    with pytest.raises(Quarantine) as q:
        read_header(io.BytesIO(data), len(data), ParseLimits(inflate_max_bytes=1024 * 1024))
    assert q.value.reason == "inflate_limit"
    assert "1048576" in q.value.detail


def test_real_deflated_file_reads_as_pydicom_reads_it():
    path = SAMPLES / "image_dfl.dcm"
    header = header_of(path.read_bytes())
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert (header.sop_instance_uid, header.study_instance_uid, header.modality) == (
        ds.SOPInstanceUID, ds.StudyInstanceUID, ds.Modality)
    assert header.transfer_syntax_uid == pydicom.uid.DeflatedExplicitVRLittleEndian


def test_truncated_deflated_file_is_quarantined():
    data = (SAMPLES / "image_dfl.dcm").read_bytes()
    with pytest.raises(Quarantine) as q:
        header_of(data[:-500])
    assert q.value.reason == "truncated"


def test_deep_nesting_is_quarantined():
    data = deep_nesting(3000)
    with pytest.raises(Quarantine) as q:
        header_of(data)
    assert q.value.reason == "too_deep"


CORPUS = broken_corpus()


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_broken_file_is_quarantined_with_a_reason(name):
    with pytest.raises(Quarantine) as q:
        header_of(CORPUS[name])
    assert q.value.reason in {"truncated", "unreadable", "not_dicom", "missing_uid", "invalid_uid"}
    assert q.value.detail


def test_corpus_has_every_kind_of_damage():
    truncations = [n for n in CORPUS if n.startswith("truncated_at_")]
    size = len((SAMPLES / "CT_small.dcm").read_bytes())
    assert len(truncations) == size // 1024  # every 1 KB step of a real file
    for kind in ("wrong_vr_", "undefined_length_", "huge_length_", "dicm_then_"):
        assert any(n.startswith(kind) for n in CORPUS), kind


def test_uid_with_a_wrong_vr_is_invalid():
    with pytest.raises(Quarantine) as q:
        header_of(CORPUS["wrong_vr_uid_as_us"])
    assert (q.value.reason, q.value.detail) == ("invalid_uid", "SOPInstanceUID has VR US, not UI")


def test_an_image_cut_between_two_elements_is_quarantined():
    # Every top-level element boundary of a real CT before its pixel data: the file ends
    # cleanly, yet an image with no Pixel Data is a cut file (the broken corpus, whose UIDs
    # are random, landed on one such boundary at 3,072 bytes about one time in thirty).
    data = (SAMPLES / "CT_small.dcm").read_bytes()
    fp = io.BytesIO(data)
    pydicom.filereader.read_preamble(fp, False)
    pydicom.filereader._read_file_meta_info(fp)
    boundaries = []
    for element in pydicom.filereader.data_element_generator(fp, False, True, defer_size=4096):
        if element.tag == 0x7FE00010:
            break
        if element.tag > 0x0020000E:  # past the last UID: only the missing pixel data is wrong
            boundaries.append(fp.tell())
    assert len(boundaries) > 20
    for cut in boundaries:
        with pytest.raises(Quarantine) as q:
            header_of(data[:cut])
        assert q.value.reason == "truncated" and "no pixel data" in q.value.detail, cut
    # A complete image still reads.
    assert header_of(data).sop_instance_uid
