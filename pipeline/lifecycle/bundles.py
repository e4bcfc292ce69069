"""Bundles: a study's instances under the bundle threshold (pipeline.lifecycle.policy says why 8 MiB)
as one tar object with an index, and single instances read back from it by byte range.

Why tar: any operator can open one with standard tools, and its layout is fixed by the member
sizes alone (a 512-byte header per member, data padded to 512), so the offset of every member
is known before a byte is written. The database keeps each member's offset; the archive also
ends with ``index.json`` (every member's instance id, SOPInstanceUID, offset, size, sha256), so
a bundle explains itself without the database.

The key is derived from the study and the member ids, so a run killed while writing rewrites
the same object, byte for byte, instead of leaving a second one behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pipeline.storage import READ_BLOCK, ObjectStore, TieredStore, write_with_holes

BLOCK = 512
RECORD = 20 * BLOCK  # tarfile pads the archive to whole records
INDEX_NAME = "index.json"
FORMAT = "relaypacs-bundle/1"
_UNSAFE = re.compile(r"[^0-9A-Za-z.]")


class BundleError(Exception):
    """A member could not be bundled as recorded (changed or unreadable in storage)."""

    def __init__(self, instance_id: int | None, message: str) -> None:
        super().__init__(message)
        self.instance_id = instance_id


@dataclass(frozen=True)
class Member:
    object_id: int  # the catalogue row: an instance re-sent with new bytes has two
    instance_id: int
    sop_instance_uid: str
    object_key: str
    size: int
    sha256: str

    @property
    def name(self) -> str:
        return f"{self.object_id}_{_UNSAFE.sub('_', self.sop_instance_uid)[:80]}.dcm"


@dataclass(frozen=True)
class Placed:
    member: Member
    offset: int  # of the member's data in the archive


@dataclass(frozen=True)
class BundleLayout:
    placed: tuple[Placed, ...]
    index: bytes
    index_offset: int
    size: int


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def bundle_key(facility_id: int, study_id: int, object_ids: Sequence[int]) -> str:
    """Stable per-study home of what is kept: ``studies/F/S/bundles/<digest>.tar``."""
    digest = hashlib.sha256(",".join(str(i) for i in sorted(object_ids)).encode()).hexdigest()[:20]
    return f"studies/{facility_id}/{study_id}/bundles/{digest}.tar"


def layout(facility_id: int, study_id: int, members: Sequence[Member]) -> BundleLayout:
    """Where every member's data lands, and the archive's exact size, from sizes alone
    (the benchmark prices bundles with this same function without writing them)."""
    members = sorted(members, key=lambda m: m.object_id)
    offset = 0
    placed = []
    for member in members:
        placed.append(Placed(member, offset + BLOCK))
        offset += BLOCK + _padded(member.size)
    index = json.dumps({
        "format": FORMAT,
        "facility_id": facility_id,
        "study_id": study_id,
        "members": [
            {"object_id": p.member.object_id, "instance_id": p.member.instance_id,
             "sop_instance_uid": p.member.sop_instance_uid, "name": p.member.name,
             "offset": p.offset, "size": p.member.size, "sha256": p.member.sha256}
            for p in placed
        ],
    }, sort_keys=True).encode()
    index_offset = offset + BLOCK
    offset += BLOCK + _padded(len(index))
    offset += 2 * BLOCK  # end-of-archive marker
    return BundleLayout(tuple(placed), index, index_offset, -(-offset // RECORD) * RECORD)


class _Hashing(io.RawIOBase):
    """A member's body as tarfile reads it, hashed and counted on the way."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.digest = hashlib.sha256()
        self.position = 0

    def _seen(self, data: bytes) -> bytes:
        self.digest.update(data)
        self.position += len(data)
        return data

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._seen(self.inner.read(size))


def _info(name: str, size: int) -> tarfile.TarInfo:
    # Fixed owner, mode and time: the same members always give the same bytes.
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    return info


def _add_member(tar: tarfile.TarFile, store: ObjectStore, placed: Placed) -> None:
    member = placed.member
    what = f"instance {member.instance_id}"
    if tar.offset != placed.offset - BLOCK:
        raise BundleError(None, "tar layout differs from the computed one")
    with store.open(member.object_key) as body:
        reader = _Hashing(body)
        try:
            tar.addfile(_info(member.name, member.size), reader)
        except OSError as exc:  # tarfile: "unexpected end of data"
            raise BundleError(member.instance_id, f"{what}: shorter than recorded") from exc
        if reader.read(1):
            raise BundleError(member.instance_id, f"{what}: longer than recorded")
    if reader.digest.hexdigest() != member.sha256:
        raise BundleError(member.instance_id, f"{what}: sha256 differs from the record")
    if tar.offset != placed.offset + _padded(member.size):  # a longer header (pax) would shift it
        raise BundleError(None, "tar layout differs from the computed one")


class _Spool(_Hashing):
    """The archive's spool file, hashed as it is written. Whole zero blocks (blank pixel
    regions, tar padding) are skipped with a seek and left as holes: the bytes read back are
    the same, and a folder of sparse test images does not turn into real disk."""

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def write(self, data: bytes) -> int:  # type: ignore[override]
        write_with_holes(self.inner, self._seen(data))
        return len(data)

    def finish(self) -> str:
        """Fix the file's length (a trailing hole is not written) and return its sha256."""
        self.inner.truncate(self.position)
        self.inner.flush()
        return self.digest.hexdigest()


def write(store: ObjectStore, plan: BundleLayout, spool_dir: Path) -> tuple[Path, str]:
    """Write the archive to a local file, each member re-hashed on the way and checked
    against its recorded sha256; returns (path, sha256 of the archive). The caller stores
    the file and deletes it."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=spool_dir, prefix="bundle-", suffix=".tar")
    path = Path(name)
    try:
        with open(fd, "wb") as out:
            spool = _Spool(out)
            with tarfile.open(fileobj=spool, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                tar.copybufsize = READ_BLOCK  # tarfile's own 16 KiB means a call per 16 KiB
                for placed in plan.placed:
                    _add_member(tar, store, placed)
                tar.addfile(_info(INDEX_NAME, len(plan.index)), io.BytesIO(plan.index))
            digest = spool.finish()
        if path.stat().st_size != plan.size:
            raise BundleError(None, f"bundle is {path.stat().st_size} bytes, layout says {plan.size}")
        return path, digest
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def read_member(store: TieredStore, key: str, offset: int, size: int, sha256: str) -> bytes:
    """One instance's bytes from a bundle by byte range, verified against its sha256."""
    with store.open_range(key, offset, size) as body:
        data = body.read()
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        raise BundleError(None, f"bundle {key}: member at {offset} does not match its sha256")
    return data


def read_index(store: TieredStore, key: str, size: int) -> dict:
    """The bundle's own index (its last member), reading only the archive's tail."""
    tail_size = min(size, 64 * 1024)
    while True:
        with store.open_range(key, size - tail_size, tail_size) as body:
            tail = body.read()
        # The index header is the last header before the zero blocks that end the archive.
        end = len(tail.rstrip(b"\0"))
        start = tail.rfind(INDEX_NAME.encode(), 0, end)
        while start > 0 and start % BLOCK:
            start = tail.rfind(INDEX_NAME.encode(), 0, start)
        if start >= 0 and start % BLOCK == 0:
            header = tarfile.TarInfo.frombuf(tail[start:start + BLOCK], "utf-8", "surrogateescape")
            if header.name == INDEX_NAME and start + BLOCK + header.size <= len(tail):
                return json.loads(tail[start + BLOCK:start + BLOCK + header.size])
        if tail_size == size:
            raise BundleError(None, f"bundle {key}: no index")
        tail_size = min(size, tail_size * 4)
