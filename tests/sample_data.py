"""Sample DICOM for tests and benchmarks: the real files shipped inside pydicom, and synthetic
studies made from CT_small.dcm with fresh UIDs.

Files are found by globbing pydicom's own ``data/test_files`` folder; ``get_testdata_files()``
is never called because it may download the files that are not shipped.
"""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path

import pydicom

from pipeline.dicom.samples import PYDICOM_FILES, synthetic_study

__all__ = ["bad_dicom_files", "pacs_refused_files", "sample_dicom_files", "synthetic_study"]

TEST_FILES = PYDICOM_FILES

# Part-10 files with Study/Series/SOP Instance UIDs that Orthanc 1.10.1 + DICOMweb 1.7 stored
# when STOW-RS'd one per request into an empty Orthanc (checked one by one). First the small,
# common ones, so ``sample_dicom_files()[:3]`` is CT, MR, RT plan.
ORTHANC_ACCEPTS = (
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "test-SR.dcm",
    "reportsi.dcm",
    "liver_1frame.dcm",
    "image_dfl.dcm",
    "ExplVR_BigEnd.dcm",
    "693_J2KI.dcm",
    "GDCMJ2K_TextGBR.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "JPEG-lossy.dcm",
    "SC_jpeg_no_color_transform.dcm",
    "SC_jpeg_no_color_transform_2.dcm",
    "SC_rgb_dcmtk_+eb+cr.dcm",
    "SC_rgb_dcmtk_+eb+cy+n1.dcm",
    "SC_rgb_dcmtk_+eb+cy+n2.dcm",
    "SC_rgb_dcmtk_+eb+cy+np.dcm",
    "SC_rgb_dcmtk_+eb+cy+s2.dcm",
    "SC_rgb_dcmtk_+eb+cy+s4.dcm",
    "SC_rgb_gdcm_KY.dcm",
    "SC_rgb_jpeg_dcmd.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_jpeg_lossy_gdcm.dcm",
    "SC_rgb_small_odd.dcm",
    "SC_rgb_small_odd_jpeg.dcm",
    "examples_jpeg2k.dcm",
    "examples_overlay.dcm",
    "examples_palette.dcm",
    "examples_rgb_color.dcm",
    "examples_ybr_color.dcm",
    "waveform_ecg.dcm",
    # Same SOPInstanceUID as a file above (other encodings of one image): dropped by the
    # default ``unique=True``.
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
    "JPEG2000.dcm",
    "JPEG2000-embedded-sequence-delimiter.dcm",
    "JPGExtended.dcm",
    "SC_rgb_jpeg_app14_dcmd.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_rle_16bit.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_rle_32bit.dcm",
    "SC_rgb_rle_32bit_2frame.dcm",
    "SC_rgb_small_odd_big_endian.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "badVR.dcm",
    "rtdose_1frame.dcm",
    "rtdose_expb.dcm",
    "rtdose_expb_1frame.dcm",
    "liver_expb_1frame.dcm",
    "reportsi_with_empty_number_tags.dcm",
)

# Truncated: pydicom 3 reads both without an error or a warning (MR_truncated's PixelData
# holds 8130 of the 8192 bytes Rows x Columns x 16 bits need; rtplan_truncated stops inside a
# sequence); Orthanc answers 400 "Cannot parse an invalid DICOM file".
TRUNCATED = ("MR_truncated.dcm", "rtplan_truncated.dcm")

# Part-10, all three UIDs, pydicom reads them, yet Orthanc's STOW-RS refuses them (400, nothing
# stored): a PACS that says no to input the gateway thinks is fine.
ORTHANC_REFUSES = (
    "rtdose_rle.dcm",  # RLE RT Dose; same SOPInstanceUID as rtdose.dcm
    "rtdose_rle_1frame.dcm",
    "SC_rgb_jpeg.dcm",  # explicit VR declared, implicit VR found
)

_UID_KEYWORDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def _is_part10(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _uids(path: Path) -> tuple[str, str, str] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SC_rgb_jpeg.dcm: its VR mismatch is the point
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return None
    values = tuple(str(ds.get(k, "")) for k in _UID_KEYWORDS)
    return values if all(values) else None  # type: ignore[return-value]


@cache
def _valid(names: tuple[str, ...], unique: bool) -> tuple[Path, ...]:
    seen: set[str] = set()
    found = []
    for name in names:
        path = TEST_FILES / name
        if not path.is_file() or not _is_part10(path):
            continue
        uids = _uids(path)
        if uids is None or (unique and uids[0] in seen):
            continue
        seen.add(uids[0])
        found.append(path)
    return tuple(found)


def sample_dicom_files(unique: bool = True) -> list[Path]:
    """Real Part-10 files with all three UIDs that Orthanc stores.

    ``unique=True`` (default) keeps one file per SOPInstanceUID, so "every uploaded instance
    arrived" can be checked by UID; ``unique=False`` adds the other encodings of the same images.
    """
    return list(_valid(ORTHANC_ACCEPTS, unique))


def bad_dicom_files() -> list[Path]:
    """Truncated DICOM files: must be quarantined, never forwarded."""
    return [TEST_FILES / name for name in TRUNCATED if (TEST_FILES / name).is_file()]


def pacs_refused_files() -> list[Path]:
    """Files that look valid to pydicom but that Orthanc refuses over STOW-RS."""
    return list(_valid(ORTHANC_REFUSES, False))
