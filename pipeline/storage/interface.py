"""The object storage contract every store keeps, and its errors.

``ObjectStore`` is what intake, delivery and exports read and write through. ``TieredStore``
adds what the storage lifecycle needs on top (storage classes, versions, restores, bucket
rules); a folder store answers it as a store with only STANDARD. Keys are relative,
slash-separated and built by the gateway only (never from user input), and still checked
here (``check_key``) so that a bad key can never escape a folder or a bucket prefix.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,511}$")
READ_BLOCK = 1024 * 1024


class ObjectMissing(KeyError):
    """The key does not name a stored object."""


class ObjectArchived(ObjectMissing):
    """The object is in an archive class (GLACIER, DEEP_ARCHIVE) and must be restored first.

    A kind of ObjectMissing, so code that only knows "cannot read it" keeps working; ``reason``
    and ``status`` say what happened, for whoever records the failure (pipeline/lifecycle/restore.py)."""

    status = "archived"

    def __init__(self, key: str, storage_class: str | None = None, reason: str | None = None) -> None:
        super().__init__(key)
        self.key = key
        self.storage_class = storage_class
        self.reason = reason or f"object is in {storage_class or 'an archive class'}; restore it first"

    def __str__(self) -> str:
        return self.reason


def check_key(key: str) -> str:
    if not _KEY.match(key) or ".." in key.split("/") or "//" in key:
        raise ValueError(f"invalid object key: {key!r}")
    return key


class ObjectStore(Protocol):
    def put_stream(self, key: str, stream: BinaryIO) -> None: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def ping(self) -> None: ...


@dataclass(frozen=True)
class ObjectHead:
    size: int
    storage_class: str
    version_id: str | None = None
    # S3's x-amz-restore: None when no restore was asked for.
    restore_ongoing: bool | None = None
    restore_expiry: datetime | None = None
    checksum_sha256: str | None = None  # hex, when the store keeps one


@dataclass(frozen=True)
class CopyResult:
    version_id: str | None  # the new current version
    previous_version_id: str | None  # now noncurrent: the same bytes, in the old class


class TieredStore(ObjectStore, Protocol):
    """What the storage lifecycle (tiering, bundles, restores, replication) needs on top of
    plain object storage."""

    supports_classes: bool

    def head(self, key: str, checksum: bool = False) -> ObjectHead: ...
    def open_range(self, key: str, offset: int, length: int) -> BinaryIO: ...
    def put_file_in_class(self, key: str, path: Path, storage_class: str) -> None: ...
    def put_file_verified(self, key: str, path: Path, storage_class: str) -> str | None: ...
    def copy_to_class(self, key: str, storage_class: str, size: int | None = None) -> CopyResult: ...
    def delete_version(self, key: str, version_id: str) -> None: ...
    def delete_noncurrent(self, key: str, size: int | None = None) -> int: ...
    def delete_all_versions(self, key: str) -> int: ...
    def restore(self, key: str, days: int, tier: str) -> str: ...
    def enable_versioning(self) -> None: ...
    def versioning_enabled(self) -> bool: ...
    def put_lifecycle(self, rules: list[dict]) -> None: ...
    def get_lifecycle(self) -> list[dict]: ...
    def list_keys(self, prefix: str) -> Iterator[tuple[str, int]]: ...
    def abort_stale_multipart(self, older_than: datetime) -> int: ...


def iter_object(store: ObjectStore, key: str, block: int = READ_BLOCK) -> Iterator[bytes]:
    with store.open(key) as body:
        while chunk := body.read(block):
            yield chunk
