"""Object storage behind one small interface: a local folder (embedded) or S3 (boto3).

Keys are relative, slash-separated and built by the gateway only (never from user input),
and still checked here so that a bad key can never escape the folder.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlparse

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,511}$")
READ_BLOCK = 1024 * 1024


class ObjectMissing(KeyError):
    """The key does not name a stored object."""


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
                shutil.copyfileobj(stream, out, READ_BLOCK)
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


class S3Store:
    """Objects in one S3 bucket; endpoint and credentials come from boto3's own env vars."""

    def __init__(self, bucket: str, prefix: str = "", client: object | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client(
            "s3", config=Config(retries={"max_attempts": 5, "mode": "adaptive"})
        )

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        # upload_fileobj streams in parts; it never needs the whole body in memory.
        self.client.upload_fileobj(stream, self.bucket, self._key(key))

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def open(self, key: str) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ObjectMissing(key) from exc
            raise

    def size(self, key: str) -> int:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            raise ObjectMissing(key) from exc
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectMissing:
            return False
        return True

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def open_store(url: str) -> ObjectStore:
    """``file:///abs/path`` or ``file://./rel`` for a folder, ``s3://bucket[/prefix]`` for S3."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FolderStore(Path(parsed.netloc + parsed.path))
    if parsed.scheme == "s3":
        store = S3Store(parsed.netloc, parsed.path)
        store.ensure_bucket()
        return store
    raise ValueError(f"unsupported storage URL scheme: {parsed.scheme!r}")


def iter_object(store: ObjectStore, key: str, block: int = READ_BLOCK) -> Iterator[bytes]:
    with store.open(key) as body:
        while chunk := body.read(block):
            yield chunk
