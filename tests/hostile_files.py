"""Hostile and broken DICOM files for tests, built from pydicom's CT_small.dcm at test time.

- ``deflate_bomb``: a Deflated Explicit VR Little Endian file whose body inflates about
  1,000 times (zeros compress that well), as a clinic or an attacker could send it.
- ``deep_nesting``: sequences nested thousands of levels deep, a few dozen KB.
- ``broken_corpus``: a real file truncated at every 1 KB step, wrong VRs, undefined lengths
  that never end, huge declared lengths, and non-DICOM bodies behind a DICM magic.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from pipeline.dicom.samples import PYDICOM_FILES

CT_SMALL = Path(PYDICOM_FILES) / "CT_small.dcm"
_UNDEFINED = 0xFFFFFFFF


def _ct(**changes: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(CT_SMALL)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = changes.get("study_uid") or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    return ds


def _meta_bytes(ds: pydicom.Dataset, transfer_syntax: str) -> bytes:
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, ds.file_meta, enforce_standard=True)
    return out.getvalue()


def _body_bytes(ds: pydicom.Dataset) -> bytes:
    """The data set without its pixel data, Explicit VR Little Endian."""
    ds = ds.copy()
    if "PixelData" in ds:
        del ds.PixelData
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


def deflate_bomb(inflated_bytes: int = 1024**3, **changes: str) -> bytes:
    """A valid Deflated Explicit VR Little Endian CT whose pixel data is ``inflated_bytes``
    zeros: ~1 MB on the wire per GB in memory when a reader inflates it whole."""
    ds = _ct(**changes)
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [_meta_bytes(ds, DeflatedExplicitVRLittleEndian)]
    parts.append(squeeze.compress(_body_bytes(ds)))
    length = inflated_bytes - inflated_bytes % 2
    parts.append(squeeze.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, length)))
    block = b"\x00" * (8 * 1024 * 1024)
    left = length
    while left:
        step = min(left, len(block))
        parts.append(squeeze.compress(block[:step]))
        left -= step
    parts.append(squeeze.flush())
    return b"".join(parts)


def deep_nesting(levels: int = 3000, **changes: str) -> bytes:
    """A CT with a private-free sequence (ReferencedImageSequence) nested ``levels`` deep,
    undefined lengths throughout: about 20 bytes a level."""
    ds = _ct(**changes)
    body = _body_bytes(ds)
    opening = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, _UNDEFINED) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, _UNDEFINED)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    nested = opening * levels + closing * levels
    # Put it where (0008,1140) belongs in tag order: after the (0008,xxxx) group of the body.
    split = _group_end(body, 0x0008, 0x1140)
    return _meta_bytes(ds, ExplicitVRLittleEndian) + body[:split] + nested + body[split:]


def _group_end(body: bytes, group: int, element: int) -> int:
    """Offset of the first top-level element at or after (group, element) in an Explicit VR
    Little Endian body."""
    pos = 0
    while pos < len(body):
        g, e, vr = struct.unpack_from("<HH2s", body, pos)
        if (g, e) >= (group, element):
            return pos
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"OV", b"UC", b"UR", b"SV", b"UV"):
            length = struct.unpack_from("<I", body, pos + 8)[0]
            pos += 12 + length
        else:
            length = struct.unpack_from("<H", body, pos + 6)[0]
            pos += 8 + length
    return pos


def _explicit(group: int, element: int, vr: bytes, value: bytes, *, length: int | None = None) -> bytes:
    declared = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, element, vr, 0, declared) + value
    return struct.pack("<HH2sH", group, element, vr, declared) + value


def broken_corpus(step: int = 1024) -> dict[str, bytes]:
    """name -> bytes of a file that must be quarantined, never forwarded and never crash a
    parse: truncations of a real file at every ``step`` bytes, and hand-made malformations."""
    real = io.BytesIO()
    ds = _ct()
    ds.save_as(real, enforce_file_format=True)
    data = real.getvalue()
    meta = _meta_bytes(_ct(), ExplicitVRLittleEndian)
    body = _body_bytes(ds)
    corpus: dict[str, bytes] = {}
    for cut in range(step, len(data), step):
        corpus[f"truncated_at_{cut}"] = data[:cut]
    # Wrong VRs: a UID written as a US, a date as OB, and a VR that does not exist.
    sop_at = body.find(b"\x08\x00\x18\x00")
    corpus["wrong_vr_unknown"] = meta + body[:sop_at] + _explicit(0x0008, 0x0018, b"ZZ", b"1.2.3\x00")
    after_sop = sop_at + 8 + struct.unpack_from("<H", body, sop_at + 6)[0]
    corpus["wrong_vr_uid_as_us"] = (
        meta + body[:sop_at] + _explicit(0x0008, 0x0018, b"US", b"\x01\x00") + body[after_sop:])
    # Undefined lengths that never end: a sequence and an item opened, the file ends.
    corpus["undefined_length_never_ends"] = meta + body[:sop_at] + (
        struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, _UNDEFINED)
        + struct.pack("<HHI", 0xFFFE, 0xE000, _UNDEFINED) + b"\x08\x00\x50\x11UI\x04\x001.2\x00" * 50)
    corpus["undefined_length_pixel_data_never_ends"] = (
        meta + body + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, _UNDEFINED)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0) + b"\x00" * 2000)
    # Huge declared lengths: a short text and a private OB that claim gigabytes.
    corpus["huge_length_text"] = (
        meta + body[:sop_at] + _explicit(0x0008, 0x0016, b"UT", b"1.2", length=0xFFFFFFF0))
    corpus["huge_length_ob"] = meta + body + _explicit(0x0009, 0x0010, b"OB", b"\x00" * 64, length=0x7FFFFFF0)
    # Not DICOM behind the magic: random bytes, a PDF, a ZIP, an empty meta group.
    corpus["dicm_then_random"] = b"\x00" * 128 + b"DICM" + bytes(range(256)) * 40
    corpus["dicm_then_pdf"] = b"\x00" * 128 + b"DICM" + b"%PDF-1.7\n" + b"x" * 5000
    corpus["dicm_then_zip"] = b"\x00" * 128 + b"DICM" + b"PK\x03\x04" + b"\xff" * 5000
    corpus["dicm_only"] = b"\x00" * 128 + b"DICM"
    corpus["meta_group_length_huge"] = b"\x00" * 128 + b"DICM" + struct.pack(
        "<HH2sHI", 0x0002, 0x0000, b"UL", 4, 0xFFFFFFF0) + meta[132 + 12:]
    corpus["deflated_not_deflate"] = _meta_bytes(_ct(), DeflatedExplicitVRLittleEndian) + b"\xff\xfe" * 4000
    return corpus
