"""What a STOW-RS answer says about each instance sent (PS3.18 10.5.3): pure parsing, no I/O.

This module owns reading the store-instances response (ReferencedSOPSequence: stored, with an
optional WarningReason; FailedSOPSequence: refused, with a FailureReason that is a PS3.4
C-STORE status, classified by `base.outcome_for_status`), the mapping of whole-request HTTP
statuses (transient, or a refusal of the destination's configuration) and Retry-After.

The response is trusted only as far as it goes: an instance it lists neither as stored nor as
failed, or as both, is returned as unaccounted for, and the sender (`stowrs`) finds out what
happened to it instead of assuming.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Sequence
from typing import Any

from pipeline.delivery.destinations.base import (
    InstanceOutcome,
    describe_status,
    format_status,
    outcome_for_status,
)

# DICOM JSON tags of the store-instances response (PS3.18 Table 10.5.3-1).
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
SOP_INSTANCE_UID = "00080018"

# Whole-request answers that a later attempt can get past (5xx as well).
TRANSIENT_STATUSES = frozenset({408, 425, 429})

# Whole-request refusals that concern the destination's configuration, not the instances.
CONFIGURATION_REFUSALS = {
    401: "the PACS refused the credentials (check the destination's user/password/token)",
    403: "the PACS refused access for these credentials (check the destination's permissions)",
    404: "the STOW-RS URL does not exist (check the destination URL)",
    405: "the URL does not accept STOW-RS (check the destination URL)",
    413: "the request is larger than the PACS accepts",
    415: "the PACS refused the multipart/related application/dicom media type",
}


def is_transient(status: int) -> bool:
    """A whole-request HTTP status worth retrying later (5xx, 408, 425, 429)."""
    return status >= 500 or status in TRANSIENT_STATUSES


def _sequence_items(dataset: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = dataset.get(tag)
    if not isinstance(element, dict):
        return []
    value = element.get("Value")
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def first_value(item: dict[str, Any], tag: str) -> Any:
    """The first value of a DICOM JSON element of `item`, or None when it has none."""
    element = item.get(tag)
    if isinstance(element, dict):
        value = element.get("Value")
        if isinstance(value, list) and value:
            return value[0]
    return None


def _status_value(raw: Any) -> int | None:
    """A FailureReason/WarningReason: US in DICOM JSON, but some servers send hex text."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw & 0xFFFF
    if isinstance(raw, str):
        text = raw.strip().lower().removeprefix("0x")
        try:
            return int(text, 16) & 0xFFFF
        except ValueError:
            return None
    return None


def _response_dataset(json_body: Any) -> dict[str, Any]:
    # PS3.18 answers one dataset; a few servers wrap it in a one-element array.
    if isinstance(json_body, list) and json_body and isinstance(json_body[0], dict):
        return json_body[0]
    if isinstance(json_body, dict):
        return json_body
    return {}


def parse_stow_response(
    status: int, json_body: Any, sent_uids: Sequence[str]
) -> tuple[list[InstanceOutcome], list[str]]:
    """Turn one STOW-RS answer into outcomes for the instances it accounts for.

    Returns (outcomes, unaccounted_uids): every sent UID is in exactly one of the two. An
    instance is unaccounted when the response neither lists it as stored nor as failed, or
    lists it as both; the caller must find out what happened to it rather than assume.
    Transient statuses (5xx, 429...) are the caller's business and never reach here.
    """
    wanted = list(dict.fromkeys(sent_uids))
    code = str(status)

    if status in CONFIGURATION_REFUSALS:
        reason = f"HTTP {status}: {CONFIGURATION_REFUSALS[status]}"
        return [InstanceOutcome(uid, False, code, reason, False) for uid in wanted], []

    dataset = _response_dataset(json_body)
    stored: dict[str, InstanceOutcome] = {}
    failed: dict[str, InstanceOutcome] = {}
    for item in _sequence_items(dataset, REFERENCED_SOP_SEQUENCE):
        uid = first_value(item, REFERENCED_SOP_INSTANCE_UID)
        if not isinstance(uid, str):
            continue
        warning = _status_value(first_value(item, WARNING_REASON))
        if warning is not None and warning != 0:
            # Whatever the code reads, ReferencedSOPSequence means the PACS kept the instance.
            label = f"{format_status(warning)} {describe_status(warning)}"
            stored[uid] = InstanceOutcome(
                uid, True, format_status(warning), f"stored with warning: {label}", False
            )
        else:
            stored[uid] = InstanceOutcome(uid, True, code, None, False)
    for item in _sequence_items(dataset, FAILED_SOP_SEQUENCE):
        uid = first_value(item, REFERENCED_SOP_INSTANCE_UID)
        if not isinstance(uid, str):
            continue
        reason_code = _status_value(first_value(item, FAILURE_REASON))
        if reason_code is None:
            failed[uid] = InstanceOutcome(
                uid,
                False,
                code,
                f"refused by the PACS (HTTP {status}) without a reason code",
                False,
            )
        else:
            outcome = outcome_for_status(uid, reason_code)
            # A "failure" whose code reads as success is contradictory: never count it stored.
            failed[uid] = (
                outcome
                if not outcome.stored
                else InstanceOutcome(
                    uid,
                    False,
                    outcome.status_code,
                    f"listed as failed with reason {outcome.status_code}",
                    False,
                )
            )

    outcomes: list[InstanceOutcome] = []
    unaccounted: list[str] = []
    for uid in wanted:
        in_stored, in_failed = uid in stored, uid in failed
        if in_stored and not in_failed:
            outcomes.append(stored[uid])
        elif in_failed and not in_stored:
            outcomes.append(failed[uid])
        else:
            unaccounted.append(uid)
    return outcomes, unaccounted


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
