"""STOW-RS response parsing, status classification and multipart body building.

The parser and the body are pure; the few sender tests at the end use a throw-away HTTP server on
loopback to produce answers Orthanc never gives (503, QIDO-RS missing, 413).
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pipeline.delivery.destinations import (
    InstanceOutcome,
    OutgoingInstance,
    TransientDestinationError,
    make_sender,
)
from pipeline.delivery.destinations.base import failure_is_retryable, is_valid_uid, outcome_for_status
from pipeline.delivery.destinations.stow_response import parse_retry_after, parse_stow_response
from pipeline.delivery.destinations.stowrs import BLOCK_SIZE, MultipartBody

A, B, C = "1.2.3.1", "1.2.3.2", "1.2.3.3"


def uid_element(uid: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [uid]}


def referenced(uid: str, warning: int | None = None) -> dict[str, Any]:
    item = {"00081150": uid_element("1.2.840.10008.5.1.4.1.1.2"), "00081155": uid_element(uid)}
    if warning is not None:
        item["00081196"] = {"vr": "US", "Value": [warning]}
    return item


def failed(uid: str, reason: int | str | None) -> dict[str, Any]:
    item = {"00081150": uid_element("1.2.840.10008.5.1.4.1.1.2"), "00081155": uid_element(uid)}
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


def response(stored: list[dict] | None = None, failures: list[dict] | None = None) -> dict:
    body: dict[str, Any] = {"00080005": {"vr": "CS", "Value": ["ISO_IR 100"]}}
    body["00081199"] = {"vr": "SQ", "Value": stored} if stored else {"vr": "SQ"}
    body["00081198"] = {"vr": "SQ", "Value": failures} if failures else {"vr": "SQ"}
    return body


def by_uid(outcomes: list[InstanceOutcome]) -> dict[str, InstanceOutcome]:
    return {o.sop_instance_uid: o for o in outcomes}


# -- parser -------------------------------------------------------------------------------------


def test_all_stored():
    outcomes, unaccounted = parse_stow_response(200, response([referenced(A), referenced(B)]), [A, B])
    assert unaccounted == []
    assert by_uid(outcomes) == {
        A: InstanceOutcome(A, True, "200", None, False),
        B: InstanceOutcome(B, True, "200", None, False),
    }


def test_partial_failure_classifies_each_reason():
    body = response(
        [referenced(A)],
        [failed(B, 0xA700), failed(C, 0xC000)],
    )
    outcomes, unaccounted = parse_stow_response(202, body, [A, B, C])
    got = by_uid(outcomes)
    assert unaccounted == []
    assert got[A].stored and got[A].status_code == "202"
    assert (got[B].stored, got[B].status_code, got[B].retryable) == (False, "A700", True)
    assert (got[C].stored, got[C].status_code, got[C].retryable) == (False, "C000", False)
    assert "out of resources" in got[B].reason
    assert "cannot understand" in got[C].reason


@pytest.mark.parametrize(
    ("reason", "retryable"),
    [
        (0xA700, True),
        (0xA7FF, True),
        (0x0110, False),
        (0x0122, False),
        (0xA900, False),
        (0xC122, False),
        (0xCFFF, False),
        ("A701", True),  # some servers send the reason as hex text
        ("0xC000", False),
    ],
)
def test_failure_reason_retryability(reason, retryable):
    outcomes, _ = parse_stow_response(409, response(failures=[failed(A, reason)]), [A])
    assert outcomes[0].stored is False
    assert outcomes[0].retryable is retryable


def test_warnings_count_as_stored():
    body = response([referenced(A, 0xB000), referenced(B, 0xB007), referenced(C, 0)])
    got = by_uid(parse_stow_response(202, body, [A, B, C])[0])
    assert got[A] == InstanceOutcome(
        A, True, "B000", "stored with warning: B000 coercion of data elements", False
    )
    assert got[B].stored and got[B].status_code == "B007"
    assert got[C] == InstanceOutcome(C, True, "202", None, False)


def test_409_none_stored():
    body = response(failures=[failed(A, 0x0110), failed(B, 0xA900)])
    outcomes, unaccounted = parse_stow_response(409, body, [A, B])
    assert unaccounted == []
    assert all(not o.stored and not o.retryable for o in outcomes)
    assert {o.status_code for o in outcomes} == {"0110", "A900"}


@pytest.mark.parametrize("body", [None, {}, [], "<html>oops</html>", response()])
def test_400_without_usable_body_accounts_for_nothing(body):
    outcomes, unaccounted = parse_stow_response(400, body, [A, B])
    assert outcomes == []
    assert unaccounted == [A, B]


def test_orthanc_400_lists_some_and_leaves_others_unaccounted():
    # What Orthanc's plugin 1.7 answered here for [good, unparseable, other study]:
    # 400, good part in ReferencedSOPSequence, other-study part failed with 0x0110 (272),
    # the unparseable part nowhere.
    body = response([referenced(A)], [failed(C, 272)])
    outcomes, unaccounted = parse_stow_response(400, body, [A, B, C])
    got = by_uid(outcomes)
    assert got[A].stored and got[A].status_code == "400"
    assert got[C].status_code == "0110" and not got[C].retryable
    assert unaccounted == [B]


def test_contradictions_and_strangers_are_never_trusted():
    body = response([referenced(A), referenced("9.9.9")], [failed(A, 0xC000), failed(B, None)])
    outcomes, unaccounted = parse_stow_response(202, body, [A, B])
    got = by_uid(outcomes)
    assert unaccounted == [A]  # listed both as stored and as failed
    assert "9.9.9" not in got  # not sent by us
    assert got[B] == InstanceOutcome(
        B, False, "202", "refused by the PACS (HTTP 202) without a reason code", False
    )


def test_success_code_inside_failed_sequence_is_not_stored():
    outcomes, _ = parse_stow_response(400, response(failures=[failed(A, 0)]), [A])
    assert outcomes[0].stored is False and outcomes[0].retryable is False


def test_response_wrapped_in_an_array():
    outcomes, unaccounted = parse_stow_response(200, [response([referenced(A)])], [A])
    assert unaccounted == [] and outcomes[0].stored


@pytest.mark.parametrize("status", [401, 403, 404, 415])
def test_configuration_refusals_are_final_for_all(status):
    outcomes, unaccounted = parse_stow_response(status, response([referenced(A)]), [A, B])
    assert unaccounted == []
    assert [(o.stored, o.retryable, o.status_code) for o in outcomes] == [
        (False, False, str(status)),
        (False, False, str(status)),
    ]
    assert outcomes[0].reason.startswith(f"HTTP {status}: ")


def test_duplicate_sent_uids_are_reported_once():
    outcomes, unaccounted = parse_stow_response(200, response([referenced(A)]), [A, A])
    assert len(outcomes) == 1 and unaccounted == []


# -- shared status classification ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "stored", "retryable", "text"),
    [
        (0x0000, True, False, "0000"),
        (0xB000, True, False, "B000"),
        (0xB006, True, False, "B006"),
        (0xB007, True, False, "B007"),
        (0xA701, False, True, "A701"),
        (0x0213, False, True, "0213"),
        (0xA900, False, False, "A900"),
        (0xC000, False, False, "C000"),
        (0x0122, False, False, "0122"),
        (0x0110, False, False, "0110"),
    ],
)
def test_outcome_for_status(code, stored, retryable, text):
    outcome = outcome_for_status(A, code)
    assert (outcome.stored, outcome.retryable, outcome.status_code) == (stored, retryable, text)
    assert failure_is_retryable(code) is (retryable and not stored)


@pytest.mark.parametrize(
    ("uid", "valid"),
    [
        ("1.2.840.10008.1.2", True),
        ("1", True),
        ("1" * 64, True),
        ("1" * 65, False),
        ("", False),
        (".", False),
        ("..", False),
        ("1..2", False),
        (".1", False),
        ("1.", False),
        ("1.2/3", False),
        ("1.2\n", False),
    ],
)
def test_uid_validation(uid, valid):
    assert is_valid_uid(uid) is valid


def test_retry_after():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    # 2015-10-21 07:28:00 GMT is 1445412480 in Unix time.
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 - 30) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 + 30) == 0.0


# -- multipart body -----------------------------------------------------------------------------


def memory_instance(uid: str, data: bytes, opened: list[str] | None = None) -> OutgoingInstance:
    def open_() -> io.BytesIO:
        if opened is not None:
            opened.append(uid)
        return io.BytesIO(data)

    return OutgoingInstance(uid, "1.2.840.10008.5.1.4.1.1.2", None, len(data), open_)


def split_multipart(body: bytes, boundary: str) -> list[tuple[bytes, bytes]]:
    """(headers, content) per part, per RFC 2046 5.1.1."""
    assert body.startswith(f"--{boundary}\r\n".encode())
    assert body.endswith(f"\r\n--{boundary}--\r\n".encode())
    chunks = (b"\r\n" + body).split(f"\r\n--{boundary}".encode())
    assert chunks[0] == b"" and chunks[-1] == b"--\r\n"
    parts = []
    for chunk in chunks[1:-1]:
        headers, _, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        parts.append((headers, content))
    return parts


def test_multipart_round_trip_keeps_bytes_exactly():
    payloads = [
        b"\x00" * 128 + b"DICM" + bytes(range(256)) * 3,
        b"\r\n--not-the-boundary\r\n\r\n" + b"\xff" * 7,  # odd length, CRLFs and dashes inside
        b"",
    ]
    body = MultipartBody([memory_instance(f"1.2.{i}", p) for i, p in enumerate(payloads)])
    assert body.content_type == (f'multipart/related; type="application/dicom"; boundary={body.boundary}')
    parts = split_multipart(b"".join(body), body.boundary)
    assert [content for _, content in parts] == payloads
    assert {headers for headers, _ in parts} == {b"Content-Type: application/dicom"}


def test_boundary_is_random_and_token_safe():
    first, second = MultipartBody([]), MultipartBody([])
    assert first.boundary != second.boundary
    assert set(first.boundary) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert b"".join(first) == f"--{first.boundary}--\r\n".encode()


def test_body_opens_lazily_and_reads_in_blocks():
    opened: list[str] = []
    big = bytes(BLOCK_SIZE * 2 + 5)
    body = iter(MultipartBody([memory_instance(A, big, opened), memory_instance(B, b"x", opened)]))
    assert next(body).startswith(b"--")
    assert opened == []  # nothing opened before its part is due
    sizes = [len(next(body)) for _ in range(3)]
    assert sizes == [BLOCK_SIZE, BLOCK_SIZE, 5]
    assert opened == [A]
    rest = b"".join(body)
    assert opened == [A, B] and b"\r\nx\r\n--" in rest


def test_storage_error_is_kept_for_the_sender():
    def broken() -> io.BytesIO:
        raise FileNotFoundError("object gone")

    body = MultipartBody([OutgoingInstance(A, "1.2", None, 0, broken)])
    with pytest.raises(FileNotFoundError):
        b"".join(body)
    assert isinstance(body.storage_error, FileNotFoundError)


# -- sender behaviour against a throw-away loopback HTTP server -------------------------------


class FakePacs:
    """Scripted answers: `stow(body_bytes)` -> (status, json, headers); `qido(query)` likewise."""

    def __init__(self) -> None:
        self.stow: Callable[[bytes], tuple[int, Any, dict[str, str]]] = lambda b: (200, None, {})
        self.qido: Callable[[str], tuple[int, Any, dict[str, str]]] = lambda q: (200, [], {})
        self.requests: list[tuple[str, str]] = []


@pytest.fixture
def fake_pacs() -> Iterator[tuple[FakePacs, str]]:
    pacs = FakePacs()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: Any, headers: dict[str, str]) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            assert self.headers["Transfer-Encoding"] == "chunked"
            data = b""
            while size := int(self.rfile.readline().strip(), 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            pacs.requests.append(("POST", self.path))
            self._answer(*pacs.stow(data))

        def do_GET(self) -> None:
            pacs.requests.append(("GET", self.path))
            self._answer(*pacs.qido(self.path))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield pacs, f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()


def parts_in(body: bytes) -> int:
    return body.count(b"Content-Type: application/dicom\r\n")


def test_503_raises_transient_with_retry_after(fake_pacs):
    pacs, url = fake_pacs
    pacs.stow = lambda body: (503, None, {"Retry-After": "42"})
    with make_sender("stowrs", {"url": url}) as sender, pytest.raises(TransientDestinationError) as caught:
        sender.send("1.2.3", [memory_instance(A, b"a")])
    assert caught.value.retry_after == 42.0


def test_unaccounted_after_400_are_settled_by_qido(fake_pacs):
    pacs, url = fake_pacs
    pacs.stow = lambda body: (400, None, {})
    pacs.qido = lambda query: (200, [{"00080018": uid_element(A)}], {})
    with make_sender("stowrs", {"url": url}) as sender:
        got = by_uid(sender.send("1.2.3", [memory_instance(A, b"a"), memory_instance(B, b"b")]))
    assert got[A].stored and got[A].status_code == "400"
    assert not got[B].stored and not got[B].retryable
    assert all(
        path.startswith("/dicom-web/studies/1.2.3/instances?") for m, path in pacs.requests if m == "GET"
    )


def test_unaccounted_after_200_and_absent_is_retryable(fake_pacs):
    pacs, url = fake_pacs
    pacs.stow = lambda body: (200, None, {})
    pacs.qido = lambda query: (204, None, {})
    with make_sender("stowrs", {"url": url}) as sender:
        [outcome] = sender.send("1.2.3", [memory_instance(A, b"a")])
    assert (outcome.stored, outcome.retryable) == (False, True)


def test_without_qido_each_unaccounted_instance_is_resent_alone(fake_pacs):
    pacs, url = fake_pacs
    # Refuse any request containing part "bad"; answer without listing anything.
    pacs.stow = lambda body: (400 if b"bad" in body else 200, None, {})
    pacs.qido = lambda query: (404, None, {})
    instances = [memory_instance(A, b"good"), memory_instance(B, b"bad")]
    with make_sender("stowrs", {"url": url}) as sender:
        got = by_uid(sender.send("1.2.3", instances))
    assert got[A].stored and got[A].reason == "stored when resent alone"
    assert not got[B].stored and not got[B].retryable


def test_413_halves_the_batch(fake_pacs):
    pacs, url = fake_pacs
    sizes: list[int] = []

    def stow(body: bytes) -> tuple[int, Any, dict[str, str]]:
        sizes.append(parts_in(body))
        if parts_in(body) > 1:
            return 413, None, {}
        uid = {b"a": A, b"b": B, b"c": C}[body.split(b"\r\n\r\n", 1)[1][:1]]
        return 200, response([referenced(uid)]), {}

    pacs.stow = stow
    instances = [memory_instance(A, b"a"), memory_instance(B, b"b"), memory_instance(C, b"c")]
    with make_sender("stowrs", {"url": url}, batch_size=3) as sender:
        outcomes = sender.send("1.2.3", instances)
    assert [o.sop_instance_uid for o in outcomes] == [A, B, C]
    assert all(o.stored for o in outcomes)
    assert sizes == [3, 1, 2, 1, 1]


def test_batches_and_one_outcome_per_given_instance(fake_pacs):
    pacs, url = fake_pacs
    pacs.stow = lambda body: (200, response([referenced(u) for u in (A, B, C)]), {})
    instances = [memory_instance(A, b"a"), memory_instance(B, b"b"), memory_instance(C, b"c")]
    with make_sender("stowrs", {"url": url}, batch_size=2) as sender:
        outcomes = sender.send("1.2.3", [*instances, instances[0]])
    assert [o.sop_instance_uid for o in outcomes] == [A, B, C, A]
    assert [m for m, _ in pacs.requests] == ["POST", "POST"]


def test_invalid_study_uid_is_never_put_in_a_url(fake_pacs):
    pacs, url = fake_pacs
    with make_sender("stowrs", {"url": url}) as sender:
        [outcome] = sender.send("../../tools", [memory_instance(A, b"a")])
    assert (outcome.stored, outcome.retryable) == (False, False)
    assert pacs.requests == []


def test_bearer_token_and_check(fake_pacs):
    pacs, url = fake_pacs
    pacs.qido = lambda query: (401, None, {})
    with make_sender("stowrs", {"url": url, "token": "t0k"}) as sender:
        assert sender.session.headers["Authorization"] == "Bearer t0k"
        with pytest.raises(TransientDestinationError, match="HTTP 401"):
            sender.check()
    assert pacs.requests == [("GET", "/dicom-web/studies?limit=1")]


def test_unknown_kind_and_missing_option():
    with pytest.raises(ValueError, match="unknown destination kind"):
        make_sender("ftp", {})
    with pytest.raises(ValueError, match="'url'"):
        make_sender("stowrs", {})
