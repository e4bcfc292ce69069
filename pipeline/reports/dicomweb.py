"""Asking a PACS for report documents over DICOMweb: QIDO-RS (search) and WADO-RS (the
original object, byte for byte).

requests directly, as the STOW-RS sender does: dicomweb-client's retrieve decodes every part
into a pydicom Dataset, and the gateway keeps the object exactly as the PACS sent it. Only the
status of an answer matters to the poll: ``DestinationUnavailable`` means "this PACS did not
answer QIDO/WADO as it should" (connection refused, timeout, 5xx, 401/403, 501, not JSON); the
poll then backs off that destination as a whole. A 404 for one study is an answer (the PACS does
not have it, or no longer): nothing to read there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import requests

DICOM_JSON = "application/dicom+json"
# Report modalities: Structured Reports and Encapsulated Documents (PDF).
REPORT_MODALITIES = ("SR", "DOC")
# Studies asked about in one QIDO-RS query (UID list matching): 40 UIDs of up to 64
# characters keep the request line near 3 KB, under every server's limit we know of.
LIST_BATCH = 40
_TAG = {"StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E", "SOPInstanceUID": "00080018",
        "SOPClassUID": "00080016", "Modality": "00080060", "ModalitiesInStudy": "00080061"}


class DestinationUnavailable(Exception):
    """The PACS did not answer as DICOMweb should; the message has no PHI (status, class)."""


def value(item: dict, keyword: str) -> Any:
    """First value of ``keyword`` in a DICOM JSON object (PS3.18 F.2), or None."""
    values = (item.get(_TAG[keyword]) or {}).get("Value") or []
    return values[0] if values else None


class DicomWebReader:
    def __init__(self, url: str, *, user: str | None = None, password: str | None = None,
                 token: str | None = None, verify: bool | str = True, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        # Fail fast on an unreachable PACS (the poll comes back later); allow a slow answer.
        self.timeout = (min(timeout, 5.0), timeout)
        self.session = requests.Session()
        self.session.verify = verify
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        elif user is not None:
            self.session.auth = (user, password or "")

    def close(self) -> None:
        self.session.close()

    def _get(self, path: str, params: dict | None, accept: str, stream: bool = False) -> requests.Response:
        try:
            response = self.session.get(f"{self.url}{path}", params=params, headers={"Accept": accept},
                                        timeout=self.timeout, stream=stream)
        except requests.RequestException as exc:
            raise DestinationUnavailable(f"no answer: {type(exc).__name__}") from exc
        if response.status_code >= 500 or response.status_code in (401, 403, 405, 406, 501):
            raise DestinationUnavailable(f"HTTP {response.status_code}")
        return response

    def _search(self, path: str, params: dict) -> list[dict]:
        response = self._get(path, params, DICOM_JSON)
        if response.status_code in (204, 404):  # no match / no such study
            return []
        if response.status_code != 200:
            raise DestinationUnavailable(f"HTTP {response.status_code}")
        if not response.content.strip():
            return []
        try:
            found = response.json()
        except ValueError as exc:
            raise DestinationUnavailable("QIDO answer is not JSON") from exc
        if not isinstance(found, list):
            raise DestinationUnavailable("QIDO answer is not a list")
        return found

    def study_has_reports(self, study_uid: str) -> bool | None:
        """True/False from ModalitiesInStudy (one cheap query), None when the PACS does not
        say (then the caller asks at instance level)."""
        found = self._search("/studies", {"StudyInstanceUID": study_uid, "includefield": "ModalitiesInStudy"})
        # One UID can answer as several studies: Orthanc keys a study by PatientID too, so a
        # report written under another PatientID is a study entry of its own. Look at all.
        answer: bool | None = False
        for entry in found:
            modalities = (entry.get(_TAG["ModalitiesInStudy"]) or {}).get("Value")
            if not modalities:
                answer = None
            elif any(m in REPORT_MODALITIES for m in modalities):
                return True
        return answer

    def studies_with_reports(self, study_uids: Sequence[str]) -> dict[str, bool | None]:
        """One QIDO-RS query for many studies (UID list matching, PS3.18 8.3.4.1: the UIDs
        joined by commas in the query; Orthanc's plugin answers nothing for the backslash
        form of C-FIND): for each study the PACS answered about, True/False from
        ModalitiesInStudy, None when it does not say. A study missing from the answer (a PACS
        without list matching, a truncated answer, a study it no longer holds) is left out,
        and so is every study when the PACS refuses the query (4xx): the caller then asks
        about each of those alone, so batching never decides anything a single query would
        not have."""
        if not study_uids:
            return {}
        wanted = set(study_uids)
        try:
            found = self._search("/studies", {"StudyInstanceUID": ",".join(study_uids),
                                              "includefield": "ModalitiesInStudy"})
        except DestinationUnavailable as exc:
            if str(exc) in ("HTTP 400", "HTTP 413", "HTTP 414"):  # the list refused: not an outage
                return {}
            raise
        out: dict[str, bool | None] = {}
        for entry in found:
            uid = value(entry, "StudyInstanceUID")
            if uid not in wanted or out.get(uid) is True:
                continue
            # Several entries for one UID (Orthanc keys studies by PatientID too): any
            # report makes True; otherwise any entry that does not say makes None.
            modalities = (entry.get(_TAG["ModalitiesInStudy"]) or {}).get("Value")
            if not modalities:
                out[uid] = None
            elif any(m in REPORT_MODALITIES for m in modalities):
                out[uid] = True
            else:
                out.setdefault(uid, False)
        return out

    def report_instances(self, study_uid: str) -> list[dict]:
        """The study's SR and DOC instances (DICOM JSON, with the UIDs and SOP class)."""
        out: list[dict] = []
        for modality in REPORT_MODALITIES:
            out.extend(self._search(f"/studies/{study_uid}/instances",
                                    {"Modality": modality,
                                     "includefield": "SOPClassUID,SeriesInstanceUID,Modality"}))
        return out

    def retrieve(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """The stored Part-10 object, as the PACS has it (any transfer syntax)."""
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        response = self._get(f"/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}", None, accept)
        if response.status_code != 200:
            raise DestinationUnavailable(f"WADO-RS HTTP {response.status_code}")
        content_type = response.headers.get("Content-Type", "")
        if content_type.startswith("application/dicom"):  # some servers skip the multipart
            return response.content
        parts = list(multipart_parts(response.content, content_type))
        if len(parts) != 1:
            raise DestinationUnavailable(f"WADO-RS answered {len(parts)} parts for one instance")
        return parts[0]


def multipart_parts(body: bytes, content_type: str) -> Iterator[bytes]:
    """The bodies of a multipart/related message (RFC 2046), each exactly as sent."""
    boundary = None
    for param in content_type.split(";")[1:]:
        key, _, val = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = val.strip().strip('"')
    if not boundary:
        raise DestinationUnavailable("multipart answer without a boundary")
    delimiter = b"--" + boundary.encode()
    chunks = body.split(delimiter)
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):  # the close delimiter
            break
        head, sep, rest = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        # The CRLF before the next delimiter belongs to the delimiter, not to the part.
        yield rest[:-2] if rest.endswith(b"\r\n") else rest
