"""The contract every PACS destination implements, and the status classification they share.

A sender delivers the ORIGINAL Part-10 bytes of a study's instances to one destination and
reports one `InstanceOutcome` per instance. It never re-encodes: byte-identical forwarding is
what makes a delivery auditable and what keeps compressed or odd-but-valid files intact.
Every sender module imports this one and this one imports no sender: the factory that builds
a sender for a destination row is the package's `make_sender`.

Failure classification is shared by STOW-RS and DIMSE because both report the same PS3.4 status
codes (STOW-RS FailureReason/WarningReason values are C-STORE statuses):

- a whole request that failed for reasons outside the instances (no connection, timeout, HTTP
  5xx/429, association rejected or aborted) raises `TransientDestinationError`: the caller retries
  the whole study later, which is harmless because PACS count duplicates as stored;
- a per-instance failure is retryable only when the PACS says it is short of resources (A7xx, and
  the DIMSE 0213 "resource limitation"); every other failure (A9xx, Cxxx, 0110, 0122, 0124...) is
  a refusal of those bytes that a later attempt would repeat, so it is final and needs a human.
  0110 "processing failure" is final on purpose: Orthanc's DICOMweb plugin uses it for
  deterministic refusals (an instance from another study), and resending identical bytes to a
  PACS that could not process them loops until the retry cap anyway.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

__all__ = [
    "InstanceOutcome",
    "OutgoingInstance",
    "Sender",
    "TransientDestinationError",
    "describe_status",
    "failure_is_retryable",
    "format_status",
    "is_valid_uid",
    "is_warning",
    "outcome_for_status",
]


@dataclass(frozen=True)
class OutgoingInstance:
    """One stored instance to deliver; `open` yields its Part-10 bytes, which are sent as-is."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str | None
    size: int
    open: Callable[[], BinaryIO]


@dataclass(frozen=True)
class InstanceOutcome:
    """What the destination did with one instance.

    `status_code` is an HTTP status ("200", "400"...) when the destination gave nothing more
    precise, else the DICOM status/reason as four upper-case hex digits ("A700", "B000", "0110").
    `reason` is for operators and never contains patient data.
    """

    sop_instance_uid: str
    stored: bool
    status_code: str | None
    reason: str | None
    retryable: bool


class TransientDestinationError(Exception):
    """The whole request failed in a way worth retrying later (connection error, timeout, 5xx,
    429, 503...). `retry_after` is the server's Retry-After in seconds, when it gave one."""

    retry_after: float | None

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Sender(Protocol):
    def send(
        self, study_instance_uid: str, instances: Sequence[OutgoingInstance]
    ) -> list[InstanceOutcome]: ...

    def check(self) -> None: ...

    def close(self) -> None: ...


# PS3.5 UIDs are digits and dots, at most 64 characters. Requiring non-empty components as well
# rejects ".", ".." and leading/trailing dots, so a UID can never climb out of a folder or
# change the meaning of a URL path.
_UID_CHARS = re.compile(r"[0-9.]{1,64}")


def is_valid_uid(uid: str) -> bool:
    return bool(_UID_CHARS.fullmatch(uid)) and all(uid.split("."))


def format_status(code: int) -> str:
    """A DICOM status as the four hex digits PS3.4 prints ("A700", "0110")."""
    return f"{code & 0xFFFF:04X}"


# Failure statuses that say "not now" rather than "not these bytes".
_RETRYABLE_EXACT = frozenset({0x0213})  # DIMSE resource limitation


def failure_is_retryable(code: int) -> bool:
    """True when a failure status means a later attempt may succeed (out of resources)."""
    return (code & 0xFF00) == 0xA700 or code in _RETRYABLE_EXACT


_FAILURE_NAMES: dict[int, str] = {
    0x0110: "processing failure",
    0x0117: "invalid SOP instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorised",
    0x0210: "duplicate invocation",
    0x0211: "unrecognised operation",
    0x0212: "mistyped argument",
    0x0213: "resource limitation",
    0xC122: "transfer syntax not supported",
}

_WARNING_NAMES: dict[int, str] = {
    0x0001: "attribute list error",
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP class",
}


def describe_status(code: int) -> str:
    """A short operator-facing name for a PS3.4 storage status."""
    if code in _FAILURE_NAMES:
        return _FAILURE_NAMES[code]
    if code in _WARNING_NAMES:
        return _WARNING_NAMES[code]
    high = code & 0xFF00
    if high == 0xA700:
        return "out of resources"
    if high == 0xA900:
        return "data set does not match SOP class"
    if (code & 0xF000) == 0xC000:
        return "cannot understand"
    return "status"


def is_warning(code: int) -> bool:
    # 0x0001 and Bxxx are warnings in PS3.7 Annex C: the instance was stored.
    return code == 0x0001 or (code & 0xF000) == 0xB000


def outcome_for_status(sop_instance_uid: str, code: int) -> InstanceOutcome:
    """Classify one C-STORE status (or STOW-RS reason) into an outcome."""
    if code == 0x0000:
        return InstanceOutcome(sop_instance_uid, True, format_status(code), None, False)
    label = f"{format_status(code)} {describe_status(code)}"
    if is_warning(code):
        return InstanceOutcome(
            sop_instance_uid, True, format_status(code), f"stored with warning: {label}", False
        )
    return InstanceOutcome(
        sop_instance_uid,
        False,
        format_status(code),
        f"refused by the PACS: {label}",
        failure_is_retryable(code),
    )
