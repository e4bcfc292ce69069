"""DIMSE C-STORE sender (pynetdicom): original bytes over one association per study.

Why it is built the way it is:
- One association per `send()` call, not per instance: negotiation costs a round trip and the
  SCP's per-association setup, which dominates for small instances.
- One presentation context per (SOP class, transfer syntax) pair actually present, each offering
  exactly that transfer syntax, because the bytes are sent as stored and never converted. DICOM
  allows 128 contexts per association (odd context ids 1..255); a study with more pairs than
  that is sent over several associations.
- Raw bytes: pynetdicom's `STORE_SEND_CHUNKED_DATASET` mode sends the data set straight from a
  file path, in PDU-sized reads, without decoding it. Stored objects that are not plain local
  files (S3 bodies) are first spooled to a temporary file in 1 MiB blocks.
- TCP_NODELAY on the association socket: a C-STORE is a short command PDU followed by data PDUs
  and then a wait for the response, the pattern Nagle's algorithm plus delayed ACK stalls
  (10-20 instances/s measured without it, 170-190 with it). pynetdicom has no public
  socket-option hook, so the AE subclass below sets it where pynetdicom creates the socket.
- Statuses map as in `base`: 0000 stored, Bxxx stored with a warning, A7xx/0213 retryable,
  anything else final. A rejected presentation context is final for its instances (0122 SOP
  class, C122 transfer syntax). No association at all raises TransientDestinationError; an
  association lost in the middle of an instance is retried once on a new association, and a
  second loss on the same instance is recorded as that instance's final failure, so one
  malformed file cannot hold the rest of the study hostage.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.filereader import read_dataset, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import AE, _config, build_context
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AddressInformation, AssociationSocket

from pipeline.destinations.base import (
    InstanceOutcome,
    OutgoingInstance,
    TransientDestinationError,
    format_status,
    outcome_for_status,
)

log = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20
MAX_CONTEXTS = 128
META_HEAD_SIZE = 64 * 1024

# A-ASSOCIATE-AC presentation context results (PS3.8 9.3.3.2).
_ABSTRACT_SYNTAX_NOT_SUPPORTED = 0x03
_TRANSFER_SYNTAX_NOT_SUPPORTED = 0x04

Pair = tuple[str, str]  # (SOP class UID, transfer syntax UID)


class _NoDelayAE(AE):
    """An AE whose association sockets have Nagle's algorithm off (see module docstring)."""

    def _create_socket(  # type: ignore[override]
        self,
        assoc: Association,
        address: AddressInformation,
        tls_args: Any,
    ) -> AssociationSocket:
        assoc_socket = super()._create_socket(assoc, address, tls_args)
        if assoc_socket.socket is not None:
            assoc_socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return assoc_socket


def read_transfer_syntax(stream: BinaryIO) -> tuple[str | None, str | None]:
    """(MediaStorageSOPClassUID, TransferSyntaxUID) from a Part-10 file's meta information.

    Raises ValueError when the stream is not a Part-10 file.
    """
    # Object-store bodies cannot seek, and pydicom's reader needs to: the meta group is read
    # from a buffered head of the file (it is a few hundred bytes in practice).
    head = io.BytesIO(stream.read(META_HEAD_SIZE))
    try:
        read_preamble(head, False)
        meta = read_dataset(
            head,
            is_implicit_VR=False,
            is_little_endian=True,
            stop_when=lambda tag, vr, length: tag.group != 2,
        )
    except Exception as exc:
        raise ValueError(f"not a DICOM Part-10 file ({type(exc).__name__})") from exc
    sop_class = meta.get("MediaStorageSOPClassUID")
    syntax = meta.get("TransferSyntaxUID")
    return (str(sop_class) if sop_class else None, str(syntax) if syntax else None)


def _local_path(stream: BinaryIO) -> Path | None:
    """The file behind `stream` when it is a plain local file read from its start."""
    if not isinstance(stream, io.BufferedReader) or not isinstance(stream.raw, io.FileIO):
        return None
    name = stream.name
    if not isinstance(name, str) or not os.path.isfile(name):
        return None
    try:
        if stream.tell() != 0:
            return None
    except OSError:
        return None
    return Path(name)


@contextmanager
def _part10_path(instance: OutgoingInstance) -> Iterator[Path]:
    """A path to the instance's Part-10 bytes: the stored file itself, or a temporary copy."""
    with instance.open() as stream:
        path = _local_path(stream)
        if path is not None:
            yield path
            return
        spool = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed before use, removed below
            prefix="relaypacs-cstore-", suffix=".dcm", delete=False
        )
        try:
            with spool:
                shutil.copyfileobj(stream, spool, BLOCK_SIZE)
            yield Path(spool.name)
        finally:
            os.unlink(spool.name)


@contextmanager
def _padded_copy(path: Path) -> Iterator[Path]:
    """A temporary copy of `path` with one trailing NUL byte."""
    spool = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed before use, removed below
        prefix="relaypacs-cstore-", suffix=".dcm", delete=False
    )
    try:
        with spool, open(path, "rb") as source:
            shutil.copyfileobj(source, spool, BLOCK_SIZE)
            spool.write(b"\x00")
        yield Path(spool.name)
    finally:
        os.unlink(spool.name)


def _chunks_of_pairs(
    instances: Sequence[tuple[OutgoingInstance, Pair]],
) -> list[list[tuple[OutgoingInstance, Pair]]]:
    """Group instances so that each group needs at most MAX_CONTEXTS presentation contexts."""
    pairs = sorted({pair for _, pair in instances})
    group_of = {pair: index // MAX_CONTEXTS for index, pair in enumerate(pairs)}
    groups: list[list[tuple[OutgoingInstance, Pair]]] = [
        [] for _ in range((len(pairs) + MAX_CONTEXTS - 1) // MAX_CONTEXTS)
    ]
    for instance, pair in instances:
        groups[group_of[pair]].append((instance, pair))
    return groups


class DimseSender:
    """Sends studies to one C-STORE SCP."""

    def __init__(
        self,
        aet: str,
        host: str,
        port: int,
        *,
        calling_aet: str = "RELAYPACS",
        timeout: float = 120.0,
    ) -> None:
        self.called_aet = aet
        self.host = host
        self.port = int(port)
        self.calling_aet = calling_aet
        self.timeout = timeout
        # Chunked sending from a path is what keeps the bytes untouched; it is a module-level
        # switch in pynetdicom and only changes send_c_store() calls given a path, which is the
        # only way this project uses pynetdicom as an SCU.
        _config.STORE_SEND_CHUNKED_DATASET = True

    def __enter__(self) -> DimseSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        # Associations live only inside send()/check(); nothing is held between calls.
        pass

    def _make_ae(self) -> AE:
        ae = _NoDelayAE(ae_title=self.calling_aet)
        ae.connection_timeout = min(self.timeout, 15.0)
        ae.acse_timeout = self.timeout
        ae.dimse_timeout = self.timeout
        ae.network_timeout = self.timeout
        return ae

    def _associate(self, ae: AE, contexts: list[Any]) -> Association:
        assoc = ae.associate(self.host, self.port, contexts=contexts, ae_title=self.called_aet)
        if assoc.is_established:
            _keep_own_responses(assoc)
            return assoc
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            # The SCP answered, but accepted none of the contexts, and pynetdicom aborted: that is
            # a per-instance refusal (unsupported SOP classes or transfer syntaxes), not an outage.
            return assoc
        if assoc.is_rejected:
            what = "association rejected"
        elif assoc.is_aborted:
            what = "association aborted"
        else:
            what = "no association (connection refused, unreachable or timed out)"
        raise TransientDestinationError(f"C-STORE SCP {self.called_aet}@{self.host}:{self.port}: {what}")

    def check(self) -> None:
        ae = self._make_ae()
        assoc = self._associate(ae, [build_context(Verification)])
        try:
            if not assoc.is_established:
                raise TransientDestinationError("SCP refused the Verification SOP class (C-ECHO)")
            status = assoc.send_c_echo()
        finally:
            _finish(assoc)
        if not status or status.get("Status") != 0x0000:
            code = format_status(status.Status) if status and "Status" in status else "none"
            raise TransientDestinationError(f"C-ECHO failed (status {code})")

    def send(self, study_instance_uid: str, instances: Sequence[OutgoingInstance]) -> list[InstanceOutcome]:
        if not instances:
            return []
        unique: dict[str, OutgoingInstance] = {}
        for instance in instances:
            unique.setdefault(instance.sop_instance_uid, instance)
        results: dict[str, InstanceOutcome] = {}
        sendable: list[tuple[OutgoingInstance, Pair]] = []
        for instance in unique.values():
            pair_or_outcome = self._pair(instance)
            if isinstance(pair_or_outcome, InstanceOutcome):
                results[instance.sop_instance_uid] = pair_or_outcome
            else:
                sendable.append((instance, pair_or_outcome))
        for group in _chunks_of_pairs(sendable):
            for outcome in self._send_group(group):
                results[outcome.sop_instance_uid] = outcome
        return [results[i.sop_instance_uid] for i in instances]

    def _pair(self, instance: OutgoingInstance) -> Pair | InstanceOutcome:
        sop_class, syntax = instance.sop_class_uid, instance.transfer_syntax_uid
        if not syntax:
            # The catalogue did not record it: the file meta is the authority, and it is small.
            try:
                with instance.open() as stream:
                    meta_class, syntax = read_transfer_syntax(stream)
            except ValueError as exc:
                return InstanceOutcome(instance.sop_instance_uid, False, None, str(exc), False)
            sop_class = sop_class or meta_class or ""
        if not syntax or not sop_class:
            return InstanceOutcome(
                instance.sop_instance_uid,
                False,
                None,
                "SOP class or transfer syntax unknown; cannot negotiate a presentation context",
                False,
            )
        return sop_class, syntax

    def _send_group(self, group: Sequence[tuple[OutgoingInstance, Pair]]) -> list[InstanceOutcome]:
        pairs = sorted({pair for _, pair in group})
        contexts = [build_context(sop, [ts]) for sop, ts in pairs]
        # pynetdicom numbers requested contexts 1, 3, 5... in list order. Results are matched by
        # that id because a rejected context echoes the SCP's transfer syntax, not ours.
        pair_of_id = {2 * index + 1: pair for index, pair in enumerate(pairs)}
        pending = deque(group)
        outcomes: list[InstanceOutcome] = []
        aborted_on: set[str] = set()
        while pending:
            assoc = self._associate(self._make_ae(), contexts)
            try:
                accepted = {pair_of_id.get(cx.context_id) for cx in assoc.accepted_contexts}
                rejected = {pair_of_id.get(cx.context_id): cx.result for cx in assoc.rejected_contexts}
                message_id = 0
                while pending:
                    instance, pair = pending[0]
                    uid = instance.sop_instance_uid
                    if pair not in accepted:
                        outcomes.append(_context_refused(uid, rejected.get(pair)))
                        pending.popleft()
                        continue
                    message_id = message_id % 0xFFFF + 1
                    try:
                        outcomes.append(self._store(assoc, instance, message_id))
                    except _AssociationLost:
                        # DCMTK-based SCPs wait out their timeout and drop the association on
                        # some malformed data sets (one shorter than its element lengths say,
                        # like pydicom's MR_truncated.dcm). Failing the whole study
                        # would retry it forever, so the instance gets one more try on a fresh
                        # association and a second abort is taken as its own fault. A failed
                        # re-association still raises TransientDestinationError.
                        if uid in aborted_on:
                            outcomes.append(_aborted_twice(uid))
                            pending.popleft()
                        aborted_on.add(uid)
                        log.warning("association lost during C-STORE; re-associating")
                        break
                    pending.popleft()
            finally:
                _finish(assoc)
        return outcomes

    def _store(self, assoc: Association, instance: OutgoingInstance, message_id: int) -> InstanceOutcome:
        uid = instance.sop_instance_uid
        if not assoc.is_established:
            raise _AssociationLost
        with _part10_path(instance) as path:
            try:
                meta, offset = split_dataset(path)
            except Exception as exc:
                return InstanceOutcome(
                    uid, False, None, f"not a DICOM Part-10 file ({type(exc).__name__})", False
                )
            # Every DICOM encoding has an even length. An odd data set is a truncated or corrupt
            # file, which a DCMTK-based SCP answers by waiting for the missing byte until its
            # timeout and then aborting; the one legitimate case is a deflated stream whose
            # mandatory pad byte was left out (PS3.5 A.5), and that pad is added here.
            odd = (path.stat().st_size - offset) % 2 == 1
            if odd and meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
                return InstanceOutcome(
                    uid, False, None, "odd-length data set (truncated or corrupt); not sent", False
                )
            with _padded_copy(path) if odd else nullcontext(path) as send_path:
                try:
                    status = assoc.send_c_store(send_path, msg_id=message_id)
                except (AttributeError, ValueError) as exc:
                    # Missing file meta elements, or meta that disagrees with the negotiated pair.
                    log.warning("C-STORE of one instance not attempted: %s", exc)
                    return InstanceOutcome(
                        uid, False, None, f"not sent: file meta unusable ({type(exc).__name__})", False
                    )
        if not status or "Status" not in status:
            # Timeout, abort or an unparseable answer: the association is no longer usable.
            raise _AssociationLost
        return outcome_for_status(uid, int(status.Status))


class _AssociationLost(Exception):
    """The SCP aborted, timed out or answered nonsense in the middle of a C-STORE."""


def _aborted_twice(uid: str) -> InstanceOutcome:
    return InstanceOutcome(
        uid,
        False,
        None,
        "the SCP aborted the association twice while receiving this instance",
        False,
    )


def _context_refused(uid: str, result: int | None) -> InstanceOutcome:
    if result == _ABSTRACT_SYNTAX_NOT_SUPPORTED:
        return InstanceOutcome(
            uid, False, "0122", "SCP does not support this SOP class (context rejected)", False
        )
    if result == _TRANSFER_SYNTAX_NOT_SUPPORTED:
        return InstanceOutcome(
            uid,
            False,
            "C122",
            "SCP does not accept this transfer syntax (context rejected); bytes are never converted",
            False,
        )
    return InstanceOutcome(uid, False, None, f"presentation context rejected (result {result})", False)


def _keep_own_responses(assoc: Association) -> None:
    """Work around a pynetdicom race: its reactor thread may take the C-STORE-RSP our thread
    waits for (the pause handshake is a flag, not a lock), drop it as "unexpected", and leave
    send_c_store() waiting until the SCP's idle timeout aborts. Put such a response back."""
    serve = assoc._serve_request

    def serve_or_requeue(msg: Any, context_id: int) -> None:
        if msg is not None and not msg.is_valid_request and msg.is_valid_response:
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_requeue  # type: ignore[method-assign]


def _finish(assoc: Association) -> None:
    if assoc.is_established:
        assoc.release()
    if assoc.is_established:  # the release was not acknowledged in time
        assoc.abort()
