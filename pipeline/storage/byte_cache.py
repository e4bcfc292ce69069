"""A worker host's local copy of the objects it has just written or read from S3.

An instance's original is written once by assembly and then read by the DICOM parser and
by every forwarding to every destination, usually within seconds and on the same host. Each
of those reads is an S3 GET: a round trip, request signing and response parsing in botocore
(about 1 ms of CPU in the worker), plus the object store's own work. The forwarding
benchmark measured those reads as a third of the gateway's CPU per instance. A DICOM router
keeps a local spool for the same reason; this is ours, with S3 still the only truth:

- only keys that are immutable by construction are kept (an upload's ``original.dcm`` and
  content-addressed renditions); staged chunks, bundles and reports always go to S3;
- writes go to S3 first and are copied here only once S3 has them, so the cache never holds
  bytes S3 lacks; a read that misses fills it;
- files appear atomically (write to a temporary name, then rename), so concurrent pool
  processes on the host share it safely; a reader with a file open keeps its bytes even if
  the file is evicted meanwhile;
- the size is bounded (``RELAYPACS_BYTE_CACHE_MB``, 0 turns it off); the oldest files go
  first. Deleting an object through the store deletes its local copy on this host.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from pipeline.storage import ObjectStore

# Keys whose bytes never change once written: a new upload gets a new id, a rendition's
# name is the digest of its edits.
IMMUTABLE_KEY = re.compile(r"(/original(-[0-9a-f]{16})?\.dcm|/renditions/[0-9a-f]{16,128}\.dcm)$")
# Bigger objects stream from S3 as before: one of them would push out hundreds of instances.
MAX_OBJECT_BYTES = 64 * 1024 * 1024
# Eviction scans the folder, so it runs once per this many writes by a process.
TRIM_EVERY = 256


class ByteCache:
    """Files under ``root`` named by the hash of their key, at most ``max_bytes`` in all."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._writes = 0
        self.hits = 0
        self.misses = 0

    def path_for(self, key: str) -> Path:
        # A hash, not the key: nothing from outside ever becomes part of a local path.
        name = hashlib.sha256(key.encode()).hexdigest()
        return self.root / name[:2] / name

    def open(self, key: str) -> BinaryIO | None:
        try:
            handle = open(self.path_for(key), "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            self.misses += 1
            return None
        self.hits += 1
        return handle

    def put_file(self, key: str, source: Path) -> None:
        with open(source, "rb") as src:
            self._write(key, lambda out: shutil.copyfileobj(src, out, 1024 * 1024))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda out: out.write(data))

    def _write(self, key: str, fill) -> None:  # noqa: ANN001 - a callable writing to a file
        target = self.path_for(key)
        target.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                fill(out)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._writes += 1
        if self._writes % TRIM_EVERY == 0:
            self.trim()

    def discard(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_for(key).unlink()

    def trim(self) -> int:
        """Delete the oldest files until the cache is under 80 % of its size; returns how many."""
        files = []
        total = 0
        for entry in self.root.glob("*/*"):
            with contextlib.suppress(FileNotFoundError):
                stat = entry.stat()
                files.append((stat.st_mtime, stat.st_size, entry))
                total += stat.st_size
        if total <= self.max_bytes:
            return 0
        removed = 0
        files.sort()
        for _, size, entry in files:
            if total <= self.max_bytes * 0.8:
                break
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed += 1
            total -= size
        return removed


def cacheable(key: str, size: int | None = None) -> bool:
    return bool(IMMUTABLE_KEY.search(key)) and (size is None or size <= MAX_OBJECT_BYTES)


class CachedStore:
    """An object store whose immutable objects are also kept in a local ``ByteCache``.

    Everything else, including the storage-lifecycle calls of a tiered store, goes straight
    to the store it wraps.
    """

    def __init__(self, inner: ObjectStore, cache: ByteCache) -> None:
        self.inner = inner
        self.cache = cache

    def __getattr__(self, name: str):  # noqa: ANN204 - delegation to the wrapped store
        return getattr(self.inner, name)

    def put_file(self, key: str, path: Path) -> None:
        self.inner.put_file(key, path)
        if cacheable(key, path.stat().st_size):
            self.cache.put_file(key, path)

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        self.cache.discard(key)
        self.inner.put_stream(key, stream)

    def open(self, key: str) -> BinaryIO:
        if not cacheable(key):
            return self.inner.open(key)
        local = self.cache.open(key)
        if local is not None:
            return local
        return _Filling(self.inner.open(key), self.cache, key)

    def delete(self, key: str) -> None:
        self.cache.discard(key)
        self.inner.delete(key)


class _Filling:
    """An S3 body that copies what is read into the cache; the copy is kept only when the
    body was read to its end (a reader that stops early leaves nothing half-written)."""

    def __init__(self, body: BinaryIO, cache: ByteCache, key: str) -> None:
        self.body = body
        self.cache = cache
        self.key = key
        self.parts: list[bytes] | None = []
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        whole = size is None or size < 0
        data = self.body.read() if whole else self.body.read(size)
        if self.parts is not None:
            if data:
                self.size += len(data)
                if self.size > MAX_OBJECT_BYTES:
                    self.parts = None  # too big to keep
                else:
                    self.parts.append(data)
            if self.parts is not None and (whole or (not data and size != 0)):
                # The end of the object: keep the whole copy.
                self.cache.put_bytes(self.key, b"".join(self.parts))
                self.parts = None
        return data

    def close(self) -> None:
        self.parts = None
        self.body.close()

    def __enter__(self) -> _Filling:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
