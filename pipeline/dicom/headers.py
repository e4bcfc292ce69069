"""Read and validate the header of a stored Part-10 file without decoding pixel data.

pydicom silently accepts truncated files, so besides reading the header we walk the
top-level elements once (values of large elements deferred, not read) and check that every
declared length fits inside the file. The result names the quarantine reason, if any.

Every file is hostile until parsed: whatever goes wrong while reading it ends in a
``Quarantine`` with a reason, never in an exception that fails the task and leaves the upload
waiting. A Deflated Explicit VR Little Endian body (which pydicom inflates whole in memory) is
inflated here instead, a block at a time into a spool file, within ``ParseLimits``: zeros
deflate about 1,000 times, so a 10 MB upload could otherwise take 10 GB.
"""

from __future__ import annotations

import re
import struct
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, data_element_generator, read_dataset, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from config import Settings

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
_INFLATE_BLOCK = 1024 * 1024
# An inflated body up to this size stays in memory; a bigger one spills to the spool folder.
_INFLATED_IN_MEMORY = 4 * 1024 * 1024


@dataclass(frozen=True)
class ParseLimits:
    """Bounds on what reading one header may cost.

    A deflated body is inflated at most to ``inflate_max_bytes``, and past
    ``inflate_ratio_from_bytes`` at most to ``inflate_max_ratio`` times its deflated size:
    real image data deflates 2-10 times, so a bigger ratio on a big body is a bomb, while a
    small body (a blank structured report) may deflate as well as it likes.
    """

    inflate_max_bytes: int = 256 * 1024 * 1024
    inflate_max_ratio: int = 200
    inflate_ratio_from_bytes: int = 8 * 1024 * 1024


    @classmethod
    def from_settings(cls, settings: Settings) -> ParseLimits:
        return cls(inflate_max_bytes=settings.dicom_inflate_max_bytes,
                   inflate_max_ratio=settings.dicom_inflate_max_ratio)


DEFAULT_LIMITS = ParseLimits()


@dataclass(frozen=True)
class InstanceHeader:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str | None
    modality: str | None
    patient_id: str | None
    study_date: str | None
    study_description: str | None
    accession_number: str | None = None
    # Bytes of the stored file, when known (a photo's DICOM file is not its upload's length).
    size: int | None = None


class Quarantine(Exception):
    """The file must not be forwarded; ``reason`` is a stable code, ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _uid(ds: pydicom.Dataset, keyword: str) -> str:
    element = ds.get(keyword)
    if element is not None and ds[keyword].VR not in ("UI", "UN"):
        raise Quarantine("invalid_uid", f"{keyword} has VR {ds[keyword].VR}, not UI")
    value = str(ds.get(keyword, "") or "").strip().rstrip("\x00")
    if not value:
        raise Quarantine("missing_uid", f"{keyword} is missing")
    if len(value) > 64 or not UID_PATTERN.match(value):
        raise Quarantine("invalid_uid", f"{keyword} is not a valid UID")
    return value


def _text(ds: pydicom.Dataset, keyword: str, limit: int) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value)[:limit]


def check_complete(fp: BinaryIO, size: int) -> bool | None:
    """Raise ``Quarantine('truncated', …)`` when an element runs past the end of the file;
    else whether the data set holds pixel data (None: not known here, a deflated body)."""
    fp.seek(0)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    ts = pydicom.uid.UID(str(meta.get("TransferSyntaxUID", ImplicitVRLittleEndian)))
    if ts == DeflatedExplicitVRLittleEndian or not ts.is_transfer_syntax:
        return None  # a deflated body is checked once inflated (read_header)
    return _check_elements(fp, size, ts.is_implicit_VR, ts.is_little_endian)


def _check_elements(fp: BinaryIO, size: int, implicit: bool, little: bool) -> bool:
    """Walk the top-level elements from ``fp``'s position: each must end inside the file, and
    the last one at its end (pydicom stops quietly at a partial element header). Returns
    whether one of them was pixel data."""
    end = fp.tell()
    pixels = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for element in data_element_generator(fp, implicit, little, defer_size=4096):
                if (
                    isinstance(element, RawDataElement)
                    and element.length != _UNDEFINED
                    and element.value_tell + element.length > size
                ):
                    raise Quarantine("truncated", f"element {element.tag} runs past end of file")
                pixels = pixels or element.tag in _PIXEL_DATA_TAGS
                end = fp.tell()
    except Quarantine:
        raise
    except (EOFError, ValueError, OSError, struct.error) as exc:
        raise Quarantine("truncated", f"file ends inside an element ({type(exc).__name__})") from exc
    if end < size:
        raise Quarantine("truncated", f"file ends inside an element header ({size - end} bytes left)")
    return pixels


def _check_image_has_pixels(ds: pydicom.Dataset, pixels: bool | None) -> None:
    """An image whose file holds no pixel data was cut between two elements: every element
    ends inside the file, yet Pixel Data is required of every image. An image: an "... Image
    Storage" SOP class, or Rows and Columns (MR spectroscopy, whose data is Spectroscopy Data,
    apart). Seen: a CT cut 3,072 bytes in, just after an element, read as a whole header."""
    if pixels is not False:
        return
    sop_class = pydicom.uid.UID(str(ds.get("SOPClassUID", "")))
    image = "Image Storage" in sop_class.name or ("Rows" in ds and "Columns" in ds)
    if image and "SpectroscopyData" not in ds:
        raise Quarantine("truncated", f"an image ({sop_class.name or 'Rows, Columns'}) with no pixel "
                                      "data: the file ends between two elements before it")


def inflate(source: BinaryIO, target: BinaryIO, limits: ParseLimits = DEFAULT_LIMITS) -> int:
    """Inflate the raw deflate stream from ``source`` to ``target`` a block at a time, within
    ``limits``; returns the inflated size. Raises ``Quarantine`` for a bomb or a bad stream."""
    start = source.tell()
    deflated = source.seek(0, 2) - start
    source.seek(start)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = 0
    try:
        while not inflater.eof:
            data = inflater.unconsumed_tail or source.read(_INFLATE_BLOCK)
            if not data:
                raise Quarantine("truncated", "deflated data set ends before its end marker")
            block = inflater.decompress(data, _INFLATE_BLOCK)
            inflated += len(block)
            _check_inflated(inflated, deflated, limits)
            target.write(block)
    except zlib.error as exc:
        raise Quarantine("unreadable", "deflated data set is not a valid deflate stream") from exc
    return inflated


def _check_inflated(inflated: int, deflated: int, limits: ParseLimits) -> None:
    if inflated > limits.inflate_max_bytes:
        raise Quarantine("inflate_limit", f"deflated data set inflates past {limits.inflate_max_bytes} "
                                          f"bytes (from {deflated} deflated)")
    if inflated > limits.inflate_ratio_from_bytes and inflated > limits.inflate_max_ratio * max(deflated, 1):
        raise Quarantine("inflate_limit", f"deflated data set inflates more than "
                                          f"{limits.inflate_max_ratio} times ({deflated} bytes deflated)")


def _stop_at_pixels(tag: int, _vr: str | None, _length: int) -> bool:
    return tag in _PIXEL_DATA_TAGS


def _read_deflated(fp: BinaryIO, limits: ParseLimits) -> tuple[pydicom.Dataset, bool]:
    """The data set of a Deflated Explicit VR Little Endian file, inflated within ``limits``
    into a spool file (never whole in memory), its elements checked like any other file's;
    and whether it holds pixel data."""
    with tempfile.SpooledTemporaryFile(max_size=_INFLATED_IN_MEMORY) as body:
        size = inflate(fp, body, limits)
        body.seek(0)
        pixels = _check_elements(body, size, False, True)
        body.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read_dataset(body, False, True, stop_when=_stop_at_pixels), pixels


def read_header(fp: BinaryIO, size: int, limits: ParseLimits = DEFAULT_LIMITS) -> InstanceHeader:
    """Parse the header of a Part-10 file; raise ``Quarantine`` when it must not go out.

    Any failure to read the file is a ``Quarantine`` with a reason: the bytes are what they
    are, and reading them again would fail again."""
    if size < 132:
        raise Quarantine("not_dicom", "file is too short to be DICOM")
    fp.seek(128)
    if fp.read(4) != b"DICM":
        fp.seek(0)
        raise Quarantine("not_dicom", "no DICM preamble marker (not a DICOM Part-10 file)")
    try:
        return _read_header(fp, size, limits)
    except Quarantine:
        raise
    except RecursionError as exc:
        raise Quarantine("too_deep", "sequences are nested too deeply to read") from exc
    except MemoryError:
        raise  # the host's state, not necessarily the file's: the caller counts such failures
    except Exception as exc:  # noqa: BLE001 - whatever a malformed file makes pydicom raise
        raise Quarantine("unreadable", f"header cannot be parsed ({type(exc).__name__})") from exc


def _read_header(fp: BinaryIO, size: int, limits: ParseLimits) -> InstanceHeader:
    fp.seek(0)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    ts = meta.get("TransferSyntaxUID")
    if ts is not None and pydicom.uid.UID(str(ts)) == DeflatedExplicitVRLittleEndian:
        ds, pixels = _read_deflated(fp, limits)
    else:
        fp.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(fp, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, ValueError, KeyError, OSError) as exc:
            raise Quarantine("unreadable", f"header cannot be parsed ({type(exc).__name__})") from exc
        pixels = check_complete(fp, size)
    header = InstanceHeader(
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        sop_class_uid=_uid(ds, "SOPClassUID"),
        study_instance_uid=_uid(ds, "StudyInstanceUID"),
        series_instance_uid=_uid(ds, "SeriesInstanceUID"),
        transfer_syntax_uid=str(ts) if ts else None,
        modality=_text(ds, "Modality", 16),
        patient_id=_text(ds, "PatientID", 64),
        study_date=_text(ds, "StudyDate", 8),
        study_description=_text(ds, "StudyDescription", 200),
        accession_number=_text(ds, "AccessionNumber", 16),
    )
    _check_image_has_pixels(ds, pixels)  # after the UIDs: their reasons are the more telling
    return header
