"""Rewrite the metadata of a Part-10 file, keeping its transfer syntax and the exact bytes
of its pixel data.

The header (every element before Pixel Data) is parsed, edited and encoded again in the
file's own transfer syntax; the Pixel Data element and whatever follows it are copied from
the original byte for byte. Nothing is decoded or recompressed, so lossy images lose nothing
more and odd-but-valid encapsulations stay as they were. Only a deflated file, whose whole
dataset is one compressed stream, is re-encoded as a whole (its pixel values unchanged).

Edits are ``{keyword: DataElement | None}``: set the element, or remove the attribute.
"""

from __future__ import annotations

import codecs
import copy
import hashlib
import shutil
import warnings
from collections.abc import Iterator, Mapping
from typing import BinaryIO

import pydicom
from pydicom import filewriter
from pydicom.charset import convert_encodings
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.tag import Tag
from pydicom.valuerep import PersonName

Edits = Mapping[str, DataElement | None]

# Part of every rendition's digest: a change in how files are rewritten makes new objects
# instead of reusing ones written by the old code.
REWRITE_VERSION = "1"
UTF8 = "ISO_IR 192"
COPY_BLOCK = 1024 * 1024


class RewriteError(ValueError):
    """The file cannot be rewritten (pydicom cannot encode its header again)."""


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str | PersonName):
        yield str(value)
    elif isinstance(value, Dataset):
        for element in value:
            yield from _strings(element.value)
    elif isinstance(value, list | tuple) or hasattr(value, "__iter__") and not isinstance(
        value, bytes | bytearray
    ):
        for item in value:
            yield from _strings(item)


def _encodable(texts: list[str], character_set: object) -> bool:
    if all(t.isascii() for t in texts):
        return True
    names = [character_set] if isinstance(character_set, str) else list(character_set)
    if len(names) != 1 or not names[0]:
        return False  # ISO 2022 code extensions or the default repertoire: ASCII only
    try:
        python_codec = convert_encodings([str(names[0])])[0]
        for text in texts:
            codecs.encode(text, python_codec)
    except (LookupError, UnicodeError):
        return False
    return True


def apply_edits(ds: Dataset, edits: Edits) -> None:
    """Apply ``edits`` to a parsed dataset; switch it to UTF-8 when a new value cannot be
    written in its character set (every text element is then decoded and re-encoded)."""
    new_texts = [t for e in edits.values() if e is not None for t in _strings(e.value)]
    if not _encodable(new_texts, ds.get("SpecificCharacterSet", "")):
        ds.decode()  # raw text elements to str in the OLD character set, before switching
        ds.SpecificCharacterSet = UTF8
    for keyword, element in edits.items():
        tag = Tag(tag_for_keyword(keyword))
        if element is None:
            if tag in ds:
                del ds[tag]
        else:
            ds[tag] = copy.deepcopy(element)


def edits_digest(original_sha256: str, edits: Edits) -> str:
    """A stable name for "this original with these edits": the element bytes in one fixed
    encoding, so values that print alike but encode differently ("1.5"/"1.50") differ."""
    digest = hashlib.sha256(f"relaypacs-rendition/{REWRITE_VERSION}/{original_sha256}".encode())
    for keyword in sorted(edits):
        element = edits[keyword]
        digest.update(b"\0" + keyword.encode() + b"=")
        if element is None:
            digest.update(b"<removed>")
            continue
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, False
        filewriter.write_data_element(out, element, ["utf_8"])
        digest.update(out.getvalue())
    return digest.hexdigest()


def read_header(source: BinaryIO) -> tuple[Dataset, int]:
    """The dataset up to Pixel Data, and the file offset where Pixel Data starts (or the
    end of the file when there is none)."""
    source.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(source, stop_before_pixels=True)
    return ds, source.tell()


def rewrite_part10(source: BinaryIO, target: BinaryIO, edits: Edits) -> None:
    """Write ``source`` (a seekable Part-10 file) to ``target`` with ``edits`` applied."""
    try:
        ds, pixel_offset = read_header(source)
        transfer_syntax = ds.file_meta.get("TransferSyntaxUID")
        if transfer_syntax is None:
            raise RewriteError("the file declares no transfer syntax")
        # Some writers leave these out of the meta group; a rewritten file states them.
        for meta_keyword, keyword in (("MediaStorageSOPClassUID", "SOPClassUID"),
                                      ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):
            if not ds.file_meta.get(meta_keyword) and ds.get(keyword):
                setattr(ds.file_meta, meta_keyword, ds[keyword].value)
        if transfer_syntax.is_deflated:
            _rewrite_whole(source, target, edits)
            return
        apply_edits(ds, edits)
        meta = DicomBytesIO()
        meta.write(ds.preamble or b"\0" * 128)
        meta.write(b"DICM")
        filewriter.write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
        body = DicomBytesIO()
        body.is_little_endian = transfer_syntax.is_little_endian
        body.is_implicit_VR = transfer_syntax.is_implicit_VR
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            filewriter.write_dataset(body, ds)
    except RewriteError:
        raise
    except Exception as exc:  # pydicom raises many kinds; all mean "cannot rewrite this file"
        raise RewriteError(f"header cannot be rewritten ({type(exc).__name__})") from exc
    target.write(meta.getvalue())
    target.write(body.getvalue())
    source.seek(pixel_offset)
    shutil.copyfileobj(source, target, COPY_BLOCK)


def _rewrite_whole(source: BinaryIO, target: BinaryIO, edits: Edits) -> None:
    source.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(source)
        apply_edits(ds, edits)
        ds.save_as(target, enforce_file_format=True)


def elements_of(ds: Dataset, keywords: tuple[str, ...]) -> dict[str, DataElement | None]:
    """``{keyword: element or None}`` for ``keywords``: what a move copies, absent ones
    included (as removals), so the moved instance ends up exactly like its target."""
    out: dict[str, DataElement | None] = {}
    for keyword in keywords:
        tag = Tag(tag_for_keyword(keyword))
        out[keyword] = copy.deepcopy(ds[tag]) if tag in ds else None
    return out
