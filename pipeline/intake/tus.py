"""The tus 1.0.0 wire format: header parsing and validation, free of any web framework.

Supported extensions: creation, creation-with-upload, checksum (sha1, sha256),
termination, expiration.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,checksum,termination,expiration"
CHECKSUM_ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
# Headers a browser client must be allowed to read (CORS Access-Control-Expose-Headers).
EXPOSED_HEADERS = (
    "Location, Upload-Offset, Upload-Length, Upload-Metadata, Upload-Expires, "
    "Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm"
)
ALLOWED_HEADERS = (
    "Authorization, Content-Type, Tus-Resumable, Upload-Length, Upload-Offset, "
    "Upload-Metadata, Upload-Checksum, Upload-Defer-Length, Upload-Concat, X-Request-ID, "
    "X-HTTP-Method-Override"
)


class TusError(Exception):
    """A request that breaks the protocol; carries the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    digest: bytes

    def new_hasher(self):  # noqa: ANN201 - hashlib has no public hasher type
        return CHECKSUM_ALGORITHMS[self.algorithm]()


def parse_metadata(header: str | None) -> dict[str, str]:
    """``key b64value,key2 b64value2`` -> dict. Keys without value map to ''."""
    result: dict[str, str] = {}
    if not header:
        return result
    for pair in header.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, value = pair.partition(" ")
        if not key or not key.isascii() or " " in key:
            raise TusError(400, f"malformed Upload-Metadata key {key!r}")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise TusError(400, f"Upload-Metadata value for {key!r} is not base64 UTF-8") from exc
        result[key] = decoded
    return result


def parse_checksum(header: str | None) -> Checksum | None:
    if header is None:
        return None
    algorithm, _, value = header.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise TusError(400, f"unsupported checksum algorithm {algorithm!r}; use sha1 or sha256")
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except binascii.Error as exc:
        raise TusError(400, "Upload-Checksum value is not base64") from exc
    if len(digest) != CHECKSUM_ALGORITHMS[algorithm]().digest_size:
        raise TusError(400, f"Upload-Checksum has the wrong length for {algorithm}")
    return Checksum(algorithm, digest)


def is_ascii_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() and int() also take '²', '١٢' or full-width digits."""
    return text.isascii() and text.isdigit()


def parse_non_negative(header: str | None, name: str) -> int:
    if header is None or header == "":
        raise TusError(400, f"{name} header is required")
    if not is_ascii_number(header) or len(header) > 19:
        raise TusError(400, f"{name} must be a non-negative integer")
    return int(header)


def check_version(header: str | None) -> None:
    if header != TUS_VERSION:
        raise TusError(412, f"Tus-Resumable: {TUS_VERSION} is required")


def clean_filename(name: str | None) -> str:
    """A display name only: never used to build a path. Control chars and dirs dropped."""
    if not name:
        return "unnamed"
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:255]
    return name or "unnamed"
