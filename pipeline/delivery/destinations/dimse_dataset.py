"""The data set a DIMSE sender puts in a C-STORE: an instance's Part-10 bytes as stored.

This module owns reading a Part-10 file for sending: its file meta (what the data set is and
in which transfer syntax) and the data set bytes after it, never decoded by pydicom and never
converted. Objects up to IN_MEMORY_BYTES are read into memory (the forwarding prefetch usually
has them there already); bigger ones are sent from a file path in PDU-sized reads: the stored
file itself, or, for object-store bodies, a temporary copy spooled in 1 MiB blocks.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

from pipeline.delivery.destinations.base import OutgoingInstance

BLOCK_SIZE = 1 << 20
META_HEAD_SIZE = 64 * 1024
# Objects up to this size are sent from memory; bigger ones stream from a file.
IN_MEMORY_BYTES = 64 * 1024 * 1024


def _split_part10(stream: BinaryIO) -> tuple[Dataset, int]:
    """The file meta information of a Part-10 stream and the offset of its data set."""
    read_preamble(stream, False)
    meta = read_dataset(
        stream,
        is_implicit_VR=False,
        is_little_endian=True,
        stop_when=lambda tag, vr, length: tag.group != 2,
    )
    return meta, stream.tell()


def read_transfer_syntax(stream: BinaryIO) -> tuple[str | None, str | None]:
    """(MediaStorageSOPClassUID, TransferSyntaxUID) from a Part-10 file's meta information.

    Raises ValueError when the stream is not a Part-10 file.
    """
    # Object-store bodies cannot seek, and pydicom's reader needs to: the meta group is read
    # from a buffered head of the file (it is a few hundred bytes in practice).
    head = io.BytesIO(stream.read(META_HEAD_SIZE))
    try:
        meta, _ = _split_part10(head)
    except Exception as exc:
        raise ValueError(f"not a DICOM Part-10 file ({type(exc).__name__})") from exc
    sop_class = meta.get("MediaStorageSOPClassUID")
    syntax = meta.get("TransferSyntaxUID")
    return (str(sop_class) if sop_class else None, str(syntax) if syntax else None)


def _local_path(stream: BinaryIO) -> Path | None:
    """The file behind `stream` when it is a plain local file read from its start."""
    if not isinstance(stream, io.BufferedReader) or not isinstance(stream.raw, io.FileIO):
        return None
    name = stream.name
    if not isinstance(name, str) or not os.path.isfile(name):
        return None
    try:
        if stream.tell() != 0:
            return None
    except OSError:
        return None
    return Path(name)


@contextlib.contextmanager
def _part10_path(stream: BinaryIO) -> Iterator[Path]:
    """A path to the Part-10 bytes of `stream`: the stored file itself, or a temporary copy."""
    path = _local_path(stream)
    if path is not None:
        yield path
        return
    spool = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed before use, removed below
        prefix="relaypacs-cstore-", suffix=".dcm", delete=False
    )
    try:
        with spool:
            shutil.copyfileobj(stream, spool, BLOCK_SIZE)
        yield Path(spool.name)
    finally:
        os.unlink(spool.name)


@contextlib.contextmanager
def _padded_copy(path: Path) -> Iterator[Path]:
    """A temporary copy of `path` with one trailing NUL byte."""
    spool = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed before use, removed below
        prefix="relaypacs-cstore-", suffix=".dcm", delete=False
    )
    try:
        with spool, open(path, "rb") as source:
            shutil.copyfileobj(source, spool, BLOCK_SIZE)
            spool.write(b"\x00")
        yield Path(spool.name)
    finally:
        os.unlink(spool.name)


class Unsendable(Exception):
    """The instance's bytes cannot go out as a C-STORE; the message is its final reason."""


@dataclass(frozen=True)
class DataSet:
    """One instance's data set as stored, and the file meta that says what it is."""

    meta: Dataset
    data: bytes | None = None  # the data set bytes, for objects sent from memory
    path: tuple[Path, int] | None = None  # (Part-10 file, offset of the data set) otherwise


@contextlib.contextmanager
def open_data_set(instance: OutgoingInstance) -> Iterator[DataSet]:
    """The instance's data set, unchanged but for the pad byte a deflated stream may lack.

    Every DICOM encoding has an even length. An odd data set is a truncated or corrupt file,
    which a DCMTK-based SCP answers by waiting for the missing byte until its timeout and then
    aborting; the one legitimate case is a deflated stream whose mandatory pad byte was left
    out (PS3.5 A.5), and that pad is added here.
    """
    with instance.open() as stream:
        if instance.size <= IN_MEMORY_BYTES:
            raw = stream.read()
            meta, offset = _file_meta(io.BytesIO(raw))
            data = raw[offset:]
            yield DataSet(meta, data=data + b"\x00" if _needs_pad(meta, len(data)) else data)
            return
        with _part10_path(stream) as path:
            with open(path, "rb") as fh:
                meta, offset = _file_meta(fh)
            if not _needs_pad(meta, path.stat().st_size - offset):
                yield DataSet(meta, path=(path, offset))
                return
            with _padded_copy(path) as padded:
                yield DataSet(meta, path=(padded, offset))


def _file_meta(stream: BinaryIO) -> tuple[Dataset, int]:
    try:
        return _split_part10(stream)
    except Exception as exc:
        raise Unsendable(f"not a DICOM Part-10 file ({type(exc).__name__})") from exc


def _needs_pad(meta: Dataset, length: int) -> bool:
    """Whether a data set of ``length`` bytes needs its deflate pad byte; refuses an empty one
    and an odd one that is not deflated."""
    if not length:
        raise Unsendable("no data set after the file meta; not sent")
    if length % 2 and meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        raise Unsendable("odd-length data set (truncated or corrupt); not sent")
    return bool(length % 2)
