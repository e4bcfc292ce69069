"""DIMSE C-STORE sender (pynetdicom): original bytes over one association per study.

This module owns the association (negotiation, reuse, release), the C-STORE flow over it and
the outcome of each instance. The data set it sends is read by `dimse_dataset`; the command
set and the P-DATA-TF PDUs are encoded and written by `dimse_pdu`.

Why it is built the way it is:
- One association per sender (one forwarding run of a study), kept open across its `send()`
  calls and released by `close()`, not one per instance or per batch: negotiation costs a round
  trip, two pynetdicom threads and the SCP's per-association setup. Orthanc spent ~2 ms of CPU
  per instance more with an association per 40 instances than with one per 500 (measured).
- One presentation context per (SOP class, transfer syntax) pair actually present, each offering
  exactly that transfer syntax, because the bytes are sent as stored and never converted. DICOM
  allows 128 contexts per association (odd context ids 1..255); a study with more pairs than
  that is sent over several associations. A batch needing a pair the open association lacks
  gets a new association.
- The C-STORE requests of an association are sent with its reactor thread paused once, not
  around each request as `send_c_store()` does: that pause waits for a thread that checks in
  once a millisecond (sleeping 0.1 ms steps meanwhile), and resuming it between requests is
  what let it take our C-STORE-RSP and drop it (see `_keep_own_responses`). pynetdicom's
  per-message logging handlers (INFO lines, debug strings built for every PDU) are unbound.
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

import contextlib
import logging
import select
import socket
import time
from collections import deque
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AddressInformation, AssociationSocket

from pipeline.delivery.destinations.base import (
    InstanceOutcome,
    OutgoingInstance,
    TransientDestinationError,
    format_status,
    outcome_for_status,
)
from pipeline.delivery.destinations.dimse_dataset import (
    DataSet,
    Unsendable,
    open_data_set,
    read_transfer_syntax,
)
from pipeline.delivery.destinations.dimse_pdu import (
    COMMAND_PDV,
    DATA_PDV,
    LAST_COMMAND_PDV,
    LAST_DATA_PDV,
    c_store_command,
    file_pdvs,
    fragment_size,
    pdvs,
    send_pdvs,
)

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128
# How long the DUL thread's readiness check waits for incoming data (see _WaitingSocket).
SOCKET_WAIT = 0.01

# A-ASSOCIATE-AC presentation context results (PS3.8 9.3.3.2).
_ABSTRACT_SYNTAX_NOT_SUPPORTED = 0x03
_TRANSFER_SYNTAX_NOT_SUPPORTED = 0x04

# pynetdicom's "standard" logging handlers, bound to every association it makes.
_STANDARD_LOGGING = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)

Pair = tuple[str, str]  # (SOP class UID, transfer syntax UID)


class _WaitingSocket(AssociationSocket):
    """An association socket whose readiness check waits for data (up to SOCKET_WAIT seconds)
    instead of answering at once: pynetdicom's DUL thread calls it in a loop and otherwise
    sleeps 1 ms between polls, which cost an idle association 2.6 % of a core (measured) and
    the C-STORE-RSP up to a millisecond before it was read. Primitives queued for the DUL
    (release, abort) wait at most SOCKET_WAIT; the C-STORE PDUs do not go through its queue
    (see `dimse_pdu.send_pdvs`)."""

    @property
    def ready(self) -> bool:
        if self.socket is not None and self._is_connected:
            # A closed connection is reported to the DUL by the check below.
            with contextlib.suppress(OSError, ValueError):
                select.select([self.socket], [], [], SOCKET_WAIT)
        return bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]


class _NoDelayAE(AE):
    """An AE whose association sockets have Nagle's algorithm off and wait for data instead of
    polling, and whose associations skip pynetdicom's per-message logging (module docstring)."""

    def _create_socket(  # type: ignore[override]
        self,
        assoc: Association,
        address: AddressInformation,
        tls_args: Any,
    ) -> AssociationSocket:
        assoc_socket = _WaitingSocket(assoc, address=address)
        assoc_socket.tls_args = tls_args
        if assoc_socket.socket is not None:
            assoc_socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Called before the association starts, so no event has reached these handlers yet.
        for event, handler in _STANDARD_LOGGING:
            assoc.unbind(event, handler)
        # The socket's wait is the DUL's idle pause now; its own sleep only adds latency.
        assoc.dul._run_loop_delay = 0.0001
        return assoc_socket


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


class _Negotiated:
    """An association and what the SCP said about each presentation context requested."""

    def __init__(self, assoc: Association, pairs: Sequence[Pair]) -> None:
        # pynetdicom numbers requested contexts 1, 3, 5... in list order. Results are matched by
        # that id because a rejected context echoes the SCP's transfer syntax, not ours.
        pair_of_id = {2 * index + 1: pair for index, pair in enumerate(pairs)}
        self.assoc = assoc
        self.requested = frozenset(pairs)
        self.accepted = {pair_of_id.get(cx.context_id) for cx in assoc.accepted_contexts}
        self.rejected = {pair_of_id.get(cx.context_id): cx.result for cx in assoc.rejected_contexts}
        self.message_id = 0

    def next_message_id(self) -> int:
        self.message_id = self.message_id % 0xFFFF + 1
        return self.message_id


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
        self._open: _Negotiated | None = None

    def __enter__(self) -> DimseSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the association kept open across `send()` calls, if any."""
        if self._open is not None:
            _finish(self._open.assoc)
            self._open = None

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

    def _association_for(self, pairs: Sequence[Pair]) -> _Negotiated:
        """The open association when it negotiated every pair needed (and is still up), else
        a new one (the old one is released first)."""
        current = self._open
        if current is not None:
            if current.assoc.is_established and current.requested.issuperset(pairs):
                return current
            self.close()
        assoc = self._associate(self._make_ae(), [build_context(sop, [ts]) for sop, ts in pairs])
        negotiated = _Negotiated(assoc, pairs)
        if assoc.is_established:
            self._open = negotiated
        return negotiated

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
        pending = deque(group)
        outcomes: list[InstanceOutcome] = []
        aborted_on: set[str] = set()
        while pending:
            negotiated = self._association_for(pairs)
            lost = False
            try:
                with _reactor_paused(negotiated.assoc):
                    while pending:
                        instance, pair = pending[0]
                        uid = instance.sop_instance_uid
                        if pair not in negotiated.accepted:
                            outcomes.append(_context_refused(uid, negotiated.rejected.get(pair)))
                            pending.popleft()
                            continue
                        try:
                            outcomes.append(self._store(negotiated, instance))
                        except _AssociationLost:
                            # DCMTK-based SCPs wait out their timeout and drop the association
                            # on some malformed data sets (one shorter than its element lengths
                            # say, like pydicom's MR_truncated.dcm). Failing the whole study
                            # would retry it forever, so the instance gets one more try on a
                            # fresh association and a second abort is taken as its own fault. A
                            # failed re-association still raises TransientDestinationError.
                            if uid in aborted_on:
                                outcomes.append(_aborted_twice(uid))
                                pending.popleft()
                            aborted_on.add(uid)
                            log.warning("association lost during C-STORE; re-associating")
                            lost = True
                            break
                        pending.popleft()
            finally:
                if lost or not negotiated.assoc.is_established:
                    if self._open is negotiated:
                        self._open = None
                    _finish(negotiated.assoc)
        return outcomes

    def _store(self, negotiated: _Negotiated, instance: OutgoingInstance) -> InstanceOutcome:
        uid = instance.sop_instance_uid
        assoc = negotiated.assoc
        if not assoc.is_established:
            raise _AssociationLost
        try:
            with open_data_set(instance) as data_set:
                status = _c_store(assoc, data_set, negotiated.next_message_id())
        except Unsendable as exc:
            return InstanceOutcome(uid, False, None, str(exc), False)
        if status is None or "Status" not in status:
            # Timeout, abort or an unparseable answer: the association is no longer usable.
            raise _AssociationLost
        return outcome_for_status(uid, int(status.Status))


def _c_store(assoc: Association, data_set: DataSet, message_id: int) -> Dataset | None:
    """One C-STORE of the data set's bytes as they are; the response's status elements, or
    None when no usable response came (timeout or abort). The caller has paused the reactor.

    This is `Association.send_c_store()` for a data set already encoded, minus its pause
    handshake and its command encoding, which `dimse_pdu` writes with `struct` (it was two
    thirds of the sender's CPU per instance in pynetdicom, py-spy).
    """
    meta = data_set.meta
    try:
        sop_class = str(meta.MediaStorageSOPClassUID)
        sop_instance = str(meta.MediaStorageSOPInstanceUID)
        syntax = meta.TransferSyntaxUID
    except AttributeError as exc:
        raise Unsendable("not sent: file meta unusable (required elements missing)") from exc
    try:
        # The context negotiated for exactly this pair: the bytes are never converted.
        context = assoc._get_valid_context(sop_class, syntax, "scu", allow_conversion=False)
        command = c_store_command(sop_class, sop_instance, message_id)
    except ValueError as exc:
        log.warning("C-STORE of one instance not attempted: %s", exc)
        raise Unsendable(f"not sent: file meta unusable ({exc})") from exc
    context_id = int(context.context_id)  # type: ignore[arg-type]
    fragment = fragment_size(int(assoc.dimse.maximum_pdu_size))
    with contextlib.ExitStack() as files:
        if data_set.data is not None:
            body = pdvs(data_set.data, fragment, DATA_PDV, LAST_DATA_PDV)
        else:
            assert data_set.path is not None
            path, offset = data_set.path
            fh = files.enter_context(open(path, "rb"))  # noqa: SIM115 - closed by the stack
            fh.seek(offset)
            body = file_pdvs(fh, path.stat().st_size - offset, fragment)
        send_pdvs(assoc, context_id, chain(pdvs(command, fragment, COMMAND_PDV, LAST_COMMAND_PDV), body))
    _, response = assoc.dimse.get_msg(block=True)
    if response is None:
        assoc._handle_no_response()
        return None
    return assoc._check_received_status(response)


@contextlib.contextmanager
def _reactor_paused(assoc: Association) -> Iterator[None]:
    """Hold the association's reactor thread at its pause point (see module docstring); the
    DUL thread, which moves the PDUs and decodes the responses, keeps running."""
    if assoc.is_established:
        assoc._reactor_checkpoint.clear()
        # The reactor checks in once a millisecond; a dead one never will.
        while not assoc._is_paused and assoc.is_alive():
            time.sleep(0.0001)
    try:
        yield
    finally:
        assoc._reactor_checkpoint.set()


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
