"""STOW-RS sender (PS3.18 10.5): original Part-10 bytes as multipart/related, streamed.

This module owns the HTTP side: the request body, batching, whole-request failures and the
verification of instances an answer leaves unaccounted for. What an answer says about each
instance is read by `stow_response`.

One `requests.Session` per sender keeps connections alive across batches. A study is split into
requests of `batch_size` instances; each request body is a generator that reads one instance at a
time in 1 MiB blocks, so memory stays flat whatever the study size (chunked transfer encoding).

The response is trusted only as far as it goes. Orthanc's DICOMweb plugin 1.7, for one, answers
400 to a batch in which one part was unparseable although the other parts WERE stored, and does
not mention the unparseable part at all; other servers answer 200 or 400 with no body, or with
XML. Every instance the response does not account for is therefore looked up with QIDO-RS; when
the PACS cannot answer QIDO-RS, each such instance is resent alone, whose single-part answer is
unambiguous (a duplicate counts as stored).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator, Sequence
from typing import Any

import requests

from pipeline.delivery.destinations.base import (
    InstanceOutcome,
    OutgoingInstance,
    TransientDestinationError,
    is_valid_uid,
)
from pipeline.delivery.destinations.stow_response import (
    CONFIGURATION_REFUSALS,
    SOP_INSTANCE_UID,
    first_value,
    is_transient,
    parse_retry_after,
    parse_stow_response,
)

log = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20
DICOM_JSON = "application/dicom+json"

# When more instances than this are unaccounted for, one study listing is cheaper than one
# QIDO query per instance.
_LIST_STUDY_THRESHOLD = 3


class MultipartBody:
    """A multipart/related; type="application/dicom" body, produced part by part.

    Iterating opens each instance only when its turn comes and yields its bytes unchanged.
    A failure to read our own storage is kept in `storage_error`, because requests reports any
    OSError raised while sending as a connection error, and a missing object is not a PACS
    outage.
    """

    def __init__(self, instances: Sequence[OutgoingInstance], boundary: str | None = None) -> None:
        self.instances = instances
        # Random, so it cannot occur in the parts by accident (RFC 2046 5.1.1).
        self.boundary = boundary or f"relaypacs-{secrets.token_hex(16)}"
        self.storage_error: BaseException | None = None

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def __iter__(self) -> Iterator[bytes]:
        part_header = f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        for instance in self.instances:
            yield part_header
            try:
                with instance.open() as stream:
                    while block := stream.read(BLOCK_SIZE):
                        yield block
            except Exception as exc:
                self.storage_error = exc
                raise
            yield b"\r\n"
        yield f"--{self.boundary}--\r\n".encode("ascii")


# -- sender -------------------------------------------------------------------------------------


class _QidoUnavailable(Exception):
    """The PACS cannot answer QIDO-RS here (not implemented, different path, refused)."""


class StowRsSender:
    """Sends studies to one DICOMweb STOW-RS endpoint (`url` is the DICOMweb root)."""

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        verify: bool | str = True,
        timeout: float = 120.0,
        batch_size: int = 40,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.url = url.rstrip("/")
        self.batch_size = batch_size
        # A short connect timeout: an unreachable PACS should fail fast and be retried later,
        # while a slow one may legitimately take `timeout` to answer a large batch.
        self.timeout = (min(timeout, 15.0), timeout)
        self.session = requests.Session()
        self.session.verify = verify
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        elif user is not None:
            self.session.auth = (user, password or "")

    def __enter__(self) -> StowRsSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def check(self) -> None:
        try:
            response = self.session.get(
                f"{self.url}/studies",
                params={"limit": "1"},
                headers={"Accept": DICOM_JSON},
                timeout=(self.timeout[0], min(self.timeout[1], 30.0)),
            )
        except requests.RequestException as exc:
            raise TransientDestinationError(f"DICOMweb endpoint unreachable: {type(exc).__name__}") from exc
        with response:
            if response.status_code in (200, 204):
                return
            # A destination that refuses us is as unusable as one that is down; the message says
            # which, and the HTTP status is kept for the operator.
            detail = CONFIGURATION_REFUSALS.get(response.status_code, "unexpected answer")
            raise TransientDestinationError(
                f"DICOMweb health check answered HTTP {response.status_code}: {detail}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )

    def send(self, study_instance_uid: str, instances: Sequence[OutgoingInstance]) -> list[InstanceOutcome]:
        if not instances:
            return []
        if not is_valid_uid(study_instance_uid):
            return [
                InstanceOutcome(i.sop_instance_uid, False, None, "invalid StudyInstanceUID; not sent", False)
                for i in instances
            ]
        # Each distinct instance goes once; a UID given twice gets the same outcome twice.
        unique: dict[str, OutgoingInstance] = {}
        for instance in instances:
            unique.setdefault(instance.sop_instance_uid, instance)
        results: dict[str, InstanceOutcome] = {}
        distinct = list(unique.values())
        for start in range(0, len(distinct), self.batch_size):
            batch = distinct[start : start + self.batch_size]
            for outcome in self._send_batch(study_instance_uid, batch):
                results[outcome.sop_instance_uid] = outcome
        return [results[i.sop_instance_uid] for i in instances]

    # -- one request ----------------------------------------------------------------------------

    def _post(self, study_instance_uid: str, batch: Sequence[OutgoingInstance]) -> tuple[int, Any]:
        body = MultipartBody(batch)
        try:
            response = self.session.post(
                f"{self.url}/studies/{study_instance_uid}",
                data=iter(body),
                headers={"Content-Type": body.content_type, "Accept": DICOM_JSON},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            if body.storage_error is not None:
                raise body.storage_error from None
            raise TransientDestinationError(f"STOW-RS request failed: {type(exc).__name__}") from exc
        with response:
            status = response.status_code
            if is_transient(status):
                raise TransientDestinationError(
                    f"STOW-RS answered HTTP {status}",
                    retry_after=parse_retry_after(response.headers.get("Retry-After")),
                )
            return status, _json_or_none(response)

    def _send_batch(
        self, study_instance_uid: str, batch: Sequence[OutgoingInstance]
    ) -> list[InstanceOutcome]:
        status, json_body = self._post(study_instance_uid, batch)
        if status == 413 and len(batch) > 1:
            # The PACS caps request size: halve until the parts fit rather than fail the study.
            middle = len(batch) // 2
            return self._send_batch(study_instance_uid, batch[:middle]) + self._send_batch(
                study_instance_uid, batch[middle:]
            )
        outcomes, unaccounted = parse_stow_response(status, json_body, [i.sop_instance_uid for i in batch])
        if unaccounted:
            log.info(
                "STOW-RS HTTP %s left %d of %d instances unaccounted for; verifying",
                status,
                len(unaccounted),
                len(batch),
            )
            by_uid = {i.sop_instance_uid: i for i in batch}
            outcomes += self._resolve_unaccounted(
                study_instance_uid, status, [by_uid[uid] for uid in unaccounted]
            )
        return outcomes

    def _resolve_unaccounted(
        self, study_instance_uid: str, status: int, instances: Sequence[OutgoingInstance]
    ) -> list[InstanceOutcome]:
        uids = [i.sop_instance_uid for i in instances]
        try:
            present = self._find_stored(study_instance_uid, uids)
        except _QidoUnavailable as exc:
            log.warning("QIDO-RS unavailable (%s); resending unaccounted instances one by one", exc)
            return [self._send_alone(study_instance_uid, instance) for instance in instances]
        code = str(status)
        outcomes = []
        for uid in uids:
            if uid in present:
                outcomes.append(
                    InstanceOutcome(
                        uid,
                        True,
                        code,
                        "not listed in the STOW-RS response; found in the PACS by QIDO-RS",
                        False,
                    )
                )
            elif 200 <= status < 300:
                # Acknowledged yet absent: a PACS that indexes asynchronously (202) may still
                # be processing it; sending again is harmless because duplicates count as stored.
                outcomes.append(
                    InstanceOutcome(
                        uid,
                        False,
                        code,
                        f"HTTP {status} but not found in the PACS by QIDO-RS",
                        True,
                    )
                )
            else:
                outcomes.append(
                    InstanceOutcome(
                        uid,
                        False,
                        code,
                        f"refused by the PACS (HTTP {status}) without a per-instance reason; "
                        "not found by QIDO-RS",
                        False,
                    )
                )
        return outcomes

    def _send_alone(self, study_instance_uid: str, instance: OutgoingInstance) -> InstanceOutcome:
        uid = instance.sop_instance_uid
        status, json_body = self._post(study_instance_uid, [instance])
        outcomes, unaccounted = parse_stow_response(status, json_body, [uid])
        if outcomes:
            return outcomes[0]
        # One part per request: the HTTP status is the answer for that part.
        if 200 <= status < 300:
            return InstanceOutcome(uid, True, str(status), "stored when resent alone", False)
        return InstanceOutcome(
            uid,
            False,
            str(status),
            f"refused by the PACS (HTTP {status}) when resent alone, without a reason code",
            False,
        )

    # -- QIDO-RS --------------------------------------------------------------------------------

    def _find_stored(self, study_instance_uid: str, uids: Sequence[str]) -> set[str]:
        """The subset of `uids` the PACS holds in this study, asked through QIDO-RS."""
        wanted = set(uids)
        found: set[str] = set()
        if len(wanted) > _LIST_STUDY_THRESHOLD:
            found = self._qido_instances(study_instance_uid, {}) & wanted
        # A study listing may be cut short by a server-side result limit, so every instance not
        # seen yet is confirmed by its own query before being called missing.
        for uid in sorted(wanted - found):
            if uid in self._qido_instances(study_instance_uid, {"SOPInstanceUID": uid}):
                found.add(uid)
        return found

    def _qido_instances(self, study_instance_uid: str, params: dict[str, str]) -> set[str]:
        try:
            response = self.session.get(
                f"{self.url}/studies/{study_instance_uid}/instances",
                params={**params, "includefield": SOP_INSTANCE_UID},
                headers={"Accept": DICOM_JSON},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise TransientDestinationError(f"QIDO-RS verification failed: {type(exc).__name__}") from exc
        with response:
            status = response.status_code
            if is_transient(status):
                raise TransientDestinationError(
                    f"QIDO-RS verification answered HTTP {status}",
                    retry_after=parse_retry_after(response.headers.get("Retry-After")),
                )
            if status == 204:
                return set()
            if status != 200:
                raise _QidoUnavailable(f"HTTP {status}")
            body = _json_or_none(response)
        if not isinstance(body, list):
            raise _QidoUnavailable("answer is not a DICOM JSON array")
        found = (first_value(item, SOP_INSTANCE_UID) for item in body if isinstance(item, dict))
        return {uid for uid in found if isinstance(uid, str)}


def _json_or_none(response: requests.Response) -> Any:
    # Status decides what happened; a missing or non-JSON body (an HTML error page, XML)
    # only means the response accounts for nothing.
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None
