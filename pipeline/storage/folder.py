"""The folder store: objects as files under one root (the embedded gateway and the tests).

Writes go through a temp file and a rename, so a reader never sees half an object. A folder
has no storage classes, versions or restores; it still answers ``TieredStore`` (everything
STANDARD and readable) so the storage lifecycle runs on it too.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from pipeline.storage.interface import READ_BLOCK, CopyResult, ObjectHead, ObjectMissing, check_key
from pipeline.storage.sparse import write_with_holes


class FolderStore:
    """Objects as files under ``root``; writes go through a temp file and a rename."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"invalid object key: {key!r}")
        return path

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                size = 0
                while block := stream.read(READ_BLOCK):
                    write_with_holes(out, block)
                    size += len(block)
                out.truncate(size)  # a trailing hole is not written
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as src:
            self.put_stream(key, src)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError as exc:
            raise ObjectMissing(key) from exc

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise ObjectMissing(key) from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def ping(self) -> None:
        if not self.root.is_dir():
            raise OSError(f"storage folder missing: {self.root}")

    # A folder has no storage classes, versions or restores: objects are always readable
    # STANDARD files. The lifecycle still runs on it (the embedded demo): the database
    # records the classes it decided, and the cost report prices them.
    supports_classes = False

    def head(self, key: str, checksum: bool = False) -> ObjectHead:
        digest = None
        if checksum:
            sha = hashlib.sha256()
            with self.open(key) as body:
                while block := body.read(READ_BLOCK):
                    sha.update(block)
            digest = sha.hexdigest()
        return ObjectHead(size=self.size(key), storage_class="STANDARD", checksum_sha256=digest)

    def open_range(self, key: str, offset: int, length: int) -> BinaryIO:
        body = self.open(key)
        body.seek(offset)
        return io.BytesIO(body.read(length)) if length <= READ_BLOCK else _Limited(body, length)

    def put_file_in_class(self, key: str, path: Path, storage_class: str) -> None:
        """A bundle from the spool: linked in when on the same filesystem (the tiering run
        deletes its spool file right after, so nothing writes to the shared inode); a
        bundle of a study's images is not copied a second time."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        link = target.parent / f".link-{uuid.uuid4().hex}"
        try:
            os.link(path, link)
        except OSError:  # another filesystem, or links not allowed: copy
            self.put_file(key, path)
            return
        os.replace(link, target)

    def put_file_verified(self, key: str, path: Path, storage_class: str) -> str | None:
        self.put_file(key, path)
        return self.head(key, checksum=True).checksum_sha256

    def copy_to_class(self, key: str, storage_class: str, size: int | None = None) -> CopyResult:
        if not self.exists(key):
            raise ObjectMissing(key)
        return CopyResult(None, None)

    def delete_version(self, key: str, version_id: str) -> None:
        return None

    def delete_noncurrent(self, key: str, size: int | None = None) -> int:
        return 0

    def delete_all_versions(self, key: str) -> int:
        existed = self.exists(key)
        self.delete(key)
        return int(existed)

    def restore(self, key: str, days: int, tier: str) -> str:
        if not self.exists(key):
            raise ObjectMissing(key)
        return "not_archived"

    def enable_versioning(self) -> None:
        return None

    def versioning_enabled(self) -> bool:
        return False

    def put_lifecycle(self, rules: list[dict]) -> None:
        return None

    def get_lifecycle(self) -> list[dict]:
        return []

    def list_keys(self, prefix: str) -> Iterator[tuple[str, int]]:
        base = self.root / prefix.rstrip("/") if prefix else self.root
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".part-"):
                yield path.relative_to(self.root).as_posix(), path.stat().st_size

    def abort_stale_multipart(self, older_than: datetime) -> int:
        return 0


class _Limited(io.RawIOBase):
    """At most ``length`` bytes of an open file, closing it with itself."""

    def __init__(self, body: BinaryIO, length: int) -> None:
        self.body = body
        self.left = length

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        size = self.left if size is None or size < 0 else min(size, self.left)
        data = self.body.read(size)
        self.left -= len(data)
        return data

    def readinto(self, buffer) -> int:  # noqa: ANN001
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.body.close()
        super().close()
