"""Object storage behind one small interface: a local folder (embedded) or S3 (boto3).

Keys are relative, slash-separated and built by the gateway only (never from user input),
and still checked here so that a bad key can never escape the folder.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlparse

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,511}$")
READ_BLOCK = 1024 * 1024
# Below boto3's default multipart threshold a file goes up in one PUT.
SINGLE_PUT_BYTES = 8 * 1024 * 1024


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
    """What the storage lifecycle (issue 6) needs on top of plain object storage."""

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


HOLE_BLOCK = 4096  # a filesystem block
_ZEROS = bytes(HOLE_BLOCK)


def write_with_holes(out: BinaryIO, data: bytes) -> None:
    """Write ``data`` at the file's position, seeking over zero blocks instead of writing
    them: they read back as zeros, and a file of blank images (or a test's sparse ones) takes
    no disk for them. The caller truncates the file to its length at the end."""
    view = memoryview(data)
    if not len(view):
        return
    if not view[0] and not view[-1] and data == bytes(len(view)):
        out.seek(len(view), io.SEEK_CUR)
        return
    pending = 0  # start of the run of data blocks not written yet
    for start in range(0, len(view) - HOLE_BLOCK + 1, HOLE_BLOCK):
        block = view[start:start + HOLE_BLOCK]
        if not block[0] and not block[-1] and block.tobytes() == _ZEROS:
            out.write(view[pending:start])
            out.seek(HOLE_BLOCK, io.SEEK_CUR)
            pending = start + HOLE_BLOCK
    out.write(view[pending:])


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
        if path.stat().st_size < SINGLE_PUT_BYTES:
            # One PUT: boto3's transfer manager (threads, futures, a HEAD-less multipart
            # planner) costs several times the CPU of the request itself for a 40 KB instance.
            with open(path, "rb") as body:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body)
            return
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def _get(self, key: str, **extra: str) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)["Body"]
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") in ("NoSuchKey", "404"):
                raise ObjectMissing(key) from exc
            if error.get("Code") == "InvalidObjectState":
                raise ObjectArchived(key, error.get("StorageClass")) from exc
            raise

    def open(self, key: str) -> BinaryIO:
        return self._get(key)

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

    # --- storage lifecycle (issue 6)

    supports_classes = True
    # CopyObject copies at most 5 GB; above that, a multipart copy of ranges.
    copy_threshold = 5 * 1024**3
    copy_part_size = 512 * 1024**2

    def head(self, key: str, checksum: bool = False) -> ObjectHead:
        from botocore.exceptions import ClientError

        extra = {"ChecksumMode": "ENABLED"} if checksum else {}
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key), **extra)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise ObjectMissing(key) from exc
            raise
        ongoing, expiry = _parse_restore(head.get("Restore"))
        digest = head.get("ChecksumSHA256")
        return ObjectHead(
            size=int(head["ContentLength"]),
            # S3 leaves the header out for STANDARD.
            storage_class=head.get("StorageClass") or "STANDARD",
            version_id=_version(head.get("VersionId")),
            restore_ongoing=ongoing,
            restore_expiry=expiry,
            checksum_sha256=base64.b64decode(digest).hex() if digest and "-" not in digest else None,
        )

    def open_range(self, key: str, offset: int, length: int) -> BinaryIO:
        if length <= 0:
            return io.BytesIO(b"")
        return self._get(key, Range=f"bytes={offset}-{offset + length - 1}")

    def put_file_in_class(self, key: str, path: Path, storage_class: str) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key),
                                ExtraArgs={"StorageClass": storage_class})

    def put_file_verified(self, key: str, path: Path, storage_class: str) -> str | None:
        """One PUT with a SHA-256 the server checks against the body it received (S3 refuses
        a mismatch); returns the checksum the store now keeps, hex, for the caller to compare."""
        with open(path, "rb") as body:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body,
                                   ChecksumAlgorithm="SHA256", StorageClass=storage_class)
        return self.head(key, checksum=True).checksum_sha256

    def copy_to_class(self, key: str, storage_class: str, size: int | None = None) -> CopyResult:
        """Copy the object onto itself in ``storage_class``. With versioning on, the old
        version stays behind (still billed) until the caller deletes it."""
        from botocore.exceptions import ClientError

        full = self._key(key)
        source = {"Bucket": self.bucket, "Key": full}
        try:
            if size is None or size > self.copy_threshold:
                head = self.client.head_object(Bucket=self.bucket, Key=full)
                size = int(head["ContentLength"])
                if size > self.copy_threshold:
                    return self._multipart_copy(full, head, storage_class)
            result = self.client.copy_object(Bucket=self.bucket, Key=full, CopySource=source,
                                             StorageClass=storage_class, MetadataDirective="COPY")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise ObjectMissing(key) from exc
            raise
        return _copied(result.get("VersionId"), result.get("CopySourceVersionId"))

    def _multipart_copy(self, full: str, head: dict, storage_class: str) -> CopyResult:
        size = int(head["ContentLength"])
        previous = head.get("VersionId")
        # At most 10,000 parts per upload.
        part_size = max(self.copy_part_size, -(-size // 10_000))
        source = {"Bucket": self.bucket, "Key": full}
        if _version(previous):
            source["VersionId"] = previous
        upload = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=full, StorageClass=storage_class,
            ContentType=head.get("ContentType", "binary/octet-stream"), Metadata=head.get("Metadata", {}),
        )
        parts = []
        try:
            for number, start in enumerate(range(0, size, part_size), start=1):
                end = min(start + part_size, size) - 1
                result = self.client.upload_part_copy(
                    Bucket=self.bucket, Key=full, UploadId=upload["UploadId"], PartNumber=number,
                    CopySource=source, CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]})
            done = self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload["UploadId"])
            raise
        return _copied(done.get("VersionId"), previous)

    def delete_version(self, key: str, version_id: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key), VersionId=version_id)

    def _versions(self, key: str) -> Iterator[dict]:
        full = self._key(key)
        pages = self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=full)
        for page in pages:
            for version in page.get("Versions", []) + page.get("DeleteMarkers", []):
                if version["Key"] == full:  # the prefix also matches longer keys
                    yield version

    def delete_noncurrent(self, key: str, size: int | None = None) -> int:
        """Delete noncurrent versions of ``key`` (of ``size`` bytes, when given). The gateway
        never overwrites a kept key, so these are copies of the current bytes in older classes."""
        deleted = 0
        for version in list(self._versions(key)):
            if version.get("IsLatest") or not version.get("VersionId"):
                continue
            if size is not None and "Size" in version and int(version["Size"]) != size:
                continue
            self.delete_version(key, version["VersionId"])
            deleted += 1
        return deleted

    def delete_all_versions(self, key: str) -> int:
        """Gone for good: every version (a plain delete on a versioned bucket only hides the
        object, which stays billed). HEAD then delete the current version until none is left:
        objects here have one or two versions, and a listing per key is slow on some stores."""
        from botocore.exceptions import ClientError

        deleted = 0
        for _ in range(1000):  # bounded: a key never has that many versions here
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                    break
                raise
            # "null" is a real version id: the object stored before versioning was on.
            self.delete_version(key, head.get("VersionId") or "null")
            deleted += 1
        if deleted == 0:
            # Nothing current: a delete marker may still hide older versions; only a listing
            # finds them.
            for version in list(self._versions(key)):
                self.delete_version(key, version.get("VersionId") or "null")
                deleted += 1
        return deleted

    def restore(self, key: str, days: int, tier: str) -> str:
        """Ask for a temporary readable copy: ``started``, ``in_progress`` (asked before),
        or ``not_archived`` (readable as it is)."""
        from botocore.exceptions import ClientError

        try:
            self.client.restore_object(
                Bucket=self.bucket, Key=self._key(key),
                RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}},
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "RestoreAlreadyInProgress":
                return "in_progress"
            if code == "InvalidObjectState":
                return "not_archived"
            if code in ("NoSuchKey", "404"):
                raise ObjectMissing(key) from exc
            raise
        return "started"

    def enable_versioning(self) -> None:
        self.client.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})

    def versioning_enabled(self) -> bool:
        return self.client.get_bucket_versioning(Bucket=self.bucket).get("Status") == "Enabled"

    def put_lifecycle(self, rules: list[dict]) -> None:
        self.client.put_bucket_lifecycle_configuration(
            Bucket=self.bucket, LifecycleConfiguration={"Rules": rules}
        )

    def get_lifecycle(self) -> list[dict]:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket).get("Rules", [])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
                return []
            raise

    def list_keys(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Keys under one prefix (relative to the store's own prefix), with sizes."""
        full = self._key(prefix.rstrip("/")) + "/" if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(f"{self.prefix}/") if self.prefix else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            for item in page.get("Contents", []):
                yield item["Key"][strip:], int(item["Size"])

    def abort_stale_multipart(self, older_than: datetime) -> int:
        """Abort multipart uploads started before ``older_than``: their parts are billed and
        never become an object (a worker died mid-upload)."""
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else ""):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < older_than:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
                    aborted += 1
        return aborted


def _version(value: str | None) -> str | None:
    # An unversioned bucket answers the version "null".
    return None if value in (None, "", "null") else value


def _copied(new: str | None, source: str | None) -> CopyResult:
    """Only a versioned bucket answers a new version id; a source without one is then the
    object stored before versioning was turned on, whose id is "null"."""
    new = _version(new)
    if new is None:
        return CopyResult(None, None)  # unversioned: the copy replaced the object
    source = source or "null"
    return CopyResult(new, None if source == new else source)


def _parse_restore(header: str | None) -> tuple[bool | None, datetime | None]:
    """``ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"``."""
    if not header:
        return None, None
    from email.utils import parsedate_to_datetime

    ongoing = 'ongoing-request="true"' in header
    expiry = None
    marker = 'expiry-date="'
    if marker in header:
        raw = header.split(marker, 1)[1].split('"', 1)[0]
        with contextlib.suppress(TypeError, ValueError):
            expiry = parsedate_to_datetime(raw)
    return ongoing, expiry


def open_s3_store(url: str, *, endpoint_url: str | None = None, access_key_id: str | None = None,
                  secret_access_key: str | None = None, region: str | None = None) -> S3Store:
    """An S3 store on its own endpoint and credentials (the disaster-recovery bucket), not
    boto3's environment defaults; the bucket is created if missing."""
    import boto3
    from botocore.config import Config

    parsed = urlparse(url)
    if parsed.scheme != "s3":
        raise ValueError(f"expected an s3:// URL, got {url!r}")
    client = boto3.client(
        "s3", endpoint_url=endpoint_url or None, aws_access_key_id=access_key_id or None,
        aws_secret_access_key=secret_access_key or None, region_name=region or None,
        config=Config(retries={"max_attempts": 5, "mode": "adaptive"}),
    )
    store = S3Store(parsed.netloc, parsed.path, client=client)
    store.ensure_bucket()
    return store


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
