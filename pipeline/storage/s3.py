"""The S3 store: objects in one bucket (under an optional key prefix), through boto3.

Besides plain reads and writes it implements ``TieredStore`` for the storage lifecycle:
copies into another storage class (multipart above CopyObject's 5 GB), noncurrent versions,
restores from archive classes, bucket versioning and lifecycle rules, stale multipart uploads.
"""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from pipeline.storage.interface import CopyResult, ObjectArchived, ObjectHead, ObjectMissing, check_key

# Below boto3's default multipart threshold a file goes up in one PUT.
SINGLE_PUT_BYTES = 8 * 1024 * 1024


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

    # --- tiered storage (TieredStore): storage classes, versions, restores, bucket rules

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

