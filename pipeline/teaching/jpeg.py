"""Metadata segments inside encapsulated JPEG frames (photos, scanned documents).

A camera's JPEG carries EXIF in APP1 (GPS position, the camera's serial number, the time
taken) and XMP in APP1 too; COM segments and other APPn carry free text. The DICOM header is
de-identified by the rule table; these bytes are inside Pixel Data and need their own pass.
Kept: APP0 (JFIF), APP2 ICC profiles (colour) and APP14 (Adobe colour transform), which a
decoder needs to show the right colours. Nothing in the entropy-coded image data changes.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames

# JPEG Baseline, Extended, Lossless, Lossless SV1, JPEG-LS lossless and near-lossless: all
# use JPEG markers (JPEG 2000 has its own codestream and is left alone).
JPEG_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
    }
)

_SOI = b"\xff\xd8"
_SOS = 0xDA
_COM = 0xFE
_APP0, _APP2, _APP14 = 0xE0, 0xE2, 0xEE
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _drop(marker: int, payload: bytes) -> bool:
    if marker == _COM:
        return True
    if 0xE0 <= marker <= 0xEF:
        if marker in (_APP0, _APP14):
            return False
        return not (marker == _APP2 and payload.startswith(b"ICC_PROFILE\x00"))
    return False


def strip_frame(frame: bytes) -> bytes:
    """One JPEG frame without its metadata segments (the header part up to SOS only)."""
    if not frame.startswith(_SOI):
        return frame
    out = bytearray(_SOI)
    i = 2
    n = len(frame)
    while i + 1 < n:
        if frame[i] != 0xFF:
            break
        marker = frame[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == _SOS or marker in _STANDALONE:
            break
        if i + 4 > n:
            break
        length = int.from_bytes(frame[i + 2 : i + 4], "big")
        segment = frame[i : i + 2 + length]
        if not _drop(marker, frame[i + 4 : i + 2 + length]):
            out += segment
        i += 2 + length
    out += frame[i:]
    return bytes(out)


def strip_metadata_segments(ds: Dataset) -> bool:
    """Strip APPn/COM from every frame of encapsulated JPEG Pixel Data; True if changed."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax not in JPEG_TRANSFER_SYNTAXES or "PixelData" not in ds:
        return False
    frames_n = int(ds.get("NumberOfFrames") or 1)
    pixel_data = ds.PixelData
    frames = list(generate_frames(pixel_data, number_of_frames=frames_n))
    cleaned = [strip_frame(f) for f in frames]
    if cleaned == frames:
        return False
    ds.PixelData = encapsulate(cleaned)
    return True
