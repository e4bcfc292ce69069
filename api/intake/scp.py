"""``relaypacs scp``: the DIMSE front door, a Storage SCP (pynetdicom) that modalities push to.

This module is the network edge, as the Flask app is for tus: it accepts associations, turns
each C-STORE into a call to ``pipeline.intake.dimse``, commits, enqueues and answers. What is
kept, where, and in which batch is decided there; see its docstring for the order of steps and
why a success status is only ever sent after the bytes and the row are committed.

Who may send (``pipeline.intake.callers``): an association is matched against the allow-list
when it is requested. An unknown caller (AE title not listed, or calling from outside its
networks) gets A-ASSOCIATE-RJ permanent, "calling AE title not recognized"; the entry it matches
names the facility whose batches receive what it sends, so one listener serves several
facilities. Every association is audited: rejected (why), accepted (facility, address, TLS
identity) and ended (released or aborted, C-STORE answers, instances and bytes kept).

Bounds:
- ``RELAYPACS_SCP_MAX_ASSOCIATIONS`` associations at once; one more is rejected as transient
  ("local limit exceeded"), so the modality tries again later.
- ``RELAYPACS_SCP_MAX_DATASET_BYTES`` per data set, counted as its fragments arrive: past it the
  association is aborted, so no more than the cap and one PDU is ever spooled, and the partial
  spool file is removed when the connection closes.
- DICOM TLS when ``RELAYPACS_SCP_TLS_CERT``/``_KEY`` are set (client certificates verified
  against ``RELAYPACS_SCP_TLS_CA`` when set). The TLS handshake runs in the association's own
  thread with a timeout: pynetdicom would run it in the accepting thread, where one silent
  client stops every other connection from being accepted.

Network choices:
- Every storage SOP class pynetdicom knows, with the transfer syntaxes below, and C-ECHO.
- Received data sets are streamed to a temporary Part-10 file by pynetdicom
  (``STORE_RECV_CHUNKED_DATASET``), never decoded and never held whole in memory: the file is
  pynetdicom's file meta for the accepted context followed by the data set bytes as they came.
- TCP_NODELAY on every accepted socket: a C-STORE-RSP is a small write the sender waits for,
  the pattern Nagle's algorithm plus delayed ACK stalls (C-STORE measured at about 10
  instances/s with Nagle on, 100-200 with it off).
- Associations are served concurrently (one thread each); a modality's concurrent associations
  are serialised only around its batch row.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom import uid as uids
from pynetdicom import AE, AllStoragePresentationContexts, _config, build_context, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import func, select
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session, sessionmaker

from config import Settings
from pipeline.accounts import audit
from pipeline.db.engine import make_engine, make_session_factory
from pipeline.dicom.headers import ParseLimits
from pipeline.intake import callers
from pipeline.intake import dimse as dimse_intake
from pipeline.models import Facility, ScpCaller, utcnow
from pipeline.storage import ObjectStore, open_store

log = logging.getLogger("relaypacs.scp")

# Acceptor preference, for a context that proposes several syntaxes (pynetdicom picks the first
# of this list the requestor offers): lossless encodings before lossy ones, so the gateway never
# asks a modality to compress lossily what it holds uncompressed. A modality that proposes its
# file's own syntax alone (the usual case) keeps its bytes as they are.
TRANSFER_SYNTAXES = (
    uids.ExplicitVRLittleEndian,
    uids.ImplicitVRLittleEndian,
    uids.DeflatedExplicitVRLittleEndian,
    uids.ExplicitVRBigEndian,
    uids.JPEGLosslessSV1,
    uids.JPEGLossless,
    uids.JPEGLSLossless,
    uids.JPEG2000Lossless,
    uids.RLELossless,
    uids.JPEGBaseline8Bit,
    uids.JPEGExtended12Bit,
    uids.JPEGLSNearLossless,
    uids.JPEG2000,
)
# Larger PDUs mean fewer reads per instance; 1 MiB is well inside what DCMTK and others accept.
MAX_PDU_SIZE = 1024 * 1024
ERROR_COMMENT_LENGTH = 64  # ErrorComment is LO
# A TLS client has this long to finish its handshake.
TLS_HANDSHAKE_SECONDS = 10.0

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4.
REJECT_UNKNOWN_CALLER = (0x01, 0x01, 0x03)  # permanent, service user, calling AE title not recognized
REJECT_TRY_LATER = (0x02, 0x03, 0x01)  # transient, service provider (presentation), congestion
_REJECT_REASONS = {
    (0x02, 0x03, 0x02): "too_many_associations",  # pynetdicom's maximum_associations
    (0x01, 0x01, 0x07): "called_ae_title_unknown",  # require_called_aet
}


def storage_contexts() -> list[Any]:
    contexts = [build_context(cx.abstract_syntax, list(TRANSFER_SYNTAXES))
                for cx in AllStoragePresentationContexts]
    contexts.append(build_context(Verification))
    return contexts


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's TLS context, or None for plain TCP (no certificate configured)."""
    if settings.scp_tls_cert is None and settings.scp_tls_key is None:
        if settings.scp_tls_ca is not None:
            raise ValueError("RELAYPACS_SCP_TLS_CA needs RELAYPACS_SCP_TLS_CERT and _KEY")
        return None
    if settings.scp_tls_cert is None or settings.scp_tls_key is None:
        raise ValueError("RELAYPACS_SCP_TLS_CERT and RELAYPACS_SCP_TLS_KEY go together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195, as DICOM's TLS profiles ask
    context.load_cert_chain(settings.scp_tls_cert, settings.scp_tls_key)
    if settings.scp_tls_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(settings.scp_tls_ca))
    return context


class _ListenerServer(ThreadedAssociationServer):
    """Association server: Nagle off on accepted sockets, the TLS handshake in the association's
    thread with a timeout, and a callback for handshakes that fail."""

    on_tls_refused: Callable[[tuple[str, int], BaseException], None] | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = self.socket.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(TLS_HANDSHAKE_SECONDS)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ValueError) as exc:
                if self.on_tls_refused is not None:
                    self.on_tls_refused(client_address, exc)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


def _safe_error(exc: BaseException) -> str:
    """An operator-facing error text without PHI: SQL errors embed their parameters."""
    if isinstance(exc, StatementError):
        return f"{type(exc).__name__} ({type(exc.orig).__name__})"
    return f"{type(exc).__name__}: {exc}"[:300]


def _status(code: int, comment: str | None = None) -> Dataset:
    answer = Dataset()
    answer.Status = code
    if comment:
        answer.ErrorComment = comment[:ERROR_COMMENT_LENGTH]
    return answer


_NAME_KEYS = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU"}


def _certificate_subject(sock: Any) -> str | None:
    """The verified client certificate's subject (CN, O, OU), or None without one."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert = sock.getpeercert() or {}
    parts = [f"{_NAME_KEYS[key]}={value}" for rdn in cert.get("subject", ())
             for key, value in rdn if key in _NAME_KEYS]
    return ",".join(parts)[:200] or None


@dataclass
class _Peer:
    """What the listener knows of one association, from its request to its end."""

    calling: str  # cleaned for display and the audit trail
    called: str
    address: str
    port: int
    tls: bool
    client_certificate: str | None
    caller: callers.AllowedCaller | None = None
    account: dimse_intake.ScpAccount | None = None
    accepted: bool = False
    started: float = field(default_factory=time.monotonic)
    answers: Counter[int] = field(default_factory=Counter)
    stored: int = 0  # instances kept (recorded as uploads), whatever the answer
    stored_bytes: int = 0
    receiving_bytes: int = 0  # of the data set arriving now
    abort_reason: str | None = None

    def detail(self, **extra: Any) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "calling_ae": self.calling, "called_ae": self.called, "address": self.address,
            "port": self.port, "tls": self.tls,
        }
        if self.client_certificate:
            detail["client_certificate"] = self.client_certificate
        if self.caller is not None:
            detail.update(facility=self.caller.facility, caller_id=self.caller.caller_id,
                          network=self.caller.network)
        detail.update(extra)
        return detail


class StorageScp:
    """The SCP's state: who may send and for which facility, where bytes go, what to enqueue.

    ``facility``: serve only that facility's callers; None serves every allow-list entry."""

    def __init__(
        self,
        settings: Settings,
        *,
        ae_title: str,
        facility: str | None = None,
        session_factory: sessionmaker[Session] | None = None,
        store: ObjectStore | None = None,
        enqueue_parse: Callable[[str], None] | None = None,
        enqueue_dispatch: Callable[[int], None] | None = None,
    ) -> None:
        if enqueue_parse is None or enqueue_dispatch is None:
            from workers import chains

            enqueue_parse = enqueue_parse or chains.enqueue_parse
            enqueue_dispatch = enqueue_dispatch or chains.enqueue_batch_dispatch
        self.ae_title = ae_title
        self.facility = facility
        self.session_factory = session_factory or make_session_factory(
            make_engine(settings.database_url)
        )
        self.store = store or open_store(settings.storage_url)
        self.enqueue_parse = enqueue_parse
        self.enqueue_dispatch = enqueue_dispatch
        self.gap = timedelta(seconds=settings.batch_quiet_seconds)
        self.max_associations = max(1, settings.scp_max_associations)
        self.max_dataset_bytes = settings.scp_max_dataset_bytes
        self.ssl_context = tls_context(settings)
        self._accounts: dict[int, dimse_intake.ScpAccount] = {}
        self._locks: dict[tuple[int, str], threading.Lock] = {}
        self._guard = threading.Lock()
        self._peers: dict[Any, _Peer] = {}  # by pynetdicom Association
        self.parse_limits = ParseLimits.from_settings(settings)
        self._ae: AE | None = None
        self._server: _ListenerServer | None = None
        # Module-level switch in pynetdicom; this process only receives (see module docstring).
        _config.STORE_RECV_CHUNKED_DATASET = True

    def allowed_callers(self) -> int:
        """How many allow-list entries this listener serves."""
        with self.session_factory() as session:
            query = select(func.count()).select_from(ScpCaller)
            if self.facility is not None:
                query = query.join(Facility).where(Facility.name == self.facility)
            return int(session.scalar(query) or 0)

    def _lock_for(self, facility_id: int, calling_aet: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((facility_id, calling_aet), threading.Lock())

    def _peer(self, assoc: Any) -> _Peer | None:
        with self._guard:
            return self._peers.get(assoc)

    def _forget(self, assoc: Any) -> _Peer | None:
        with self._guard:
            return self._peers.pop(assoc, None)

    def _audit(self, action: str, peer: _Peer, **extra: Any) -> None:
        """One audit row; a database that fails here costs the row (logged), never the listener."""
        account = peer.account
        actor = audit.Actor(
            user_id=account.user_id if account else None,
            facility_id=peer.caller.facility_id if peer.caller else None,
            remote_addr=peer.address[:64],
        )
        try:
            with self.session_factory() as session:
                audit.record(session, actor, action, target=peer.calling,
                             detail=peer.detail(**extra))
                session.commit()
        except Exception as exc:
            log.error("audit row %s for %s at %s not written: %s", action, peer.calling,
                      peer.address, _safe_error(exc))

    def _account(self, session: Session, caller: callers.AllowedCaller) -> dimse_intake.ScpAccount:
        with self._guard:
            account = self._accounts.get(caller.facility_id)
        if account is None:
            account = dimse_intake.scp_account(session, caller.facility)
            with self._guard:
                self._accounts[caller.facility_id] = account
        return account

    # -- association events

    def _on_requested(self, event: Any) -> None:
        """Match the caller against the allow-list before pynetdicom negotiates anything."""
        self._close_leftovers()
        assoc = event.assoc
        request = assoc.requestor.primitive
        raw_calling = request.calling_ae_title or ""
        sock = getattr(assoc.dul.socket, "socket", None)
        peer = _Peer(
            calling=dimse_intake.clean_ae_title(raw_calling),
            called=dimse_intake.clean_ae_title(request.called_ae_title),
            address=str(assoc.requestor.address), port=int(assoc.requestor.port or 0),
            tls=isinstance(sock, ssl.SSLSocket), client_certificate=_certificate_subject(sock),
        )
        try:
            with self.session_factory() as session:
                match = callers.match_caller(session, raw_calling, peer.address, self.facility)
                if isinstance(match, callers.AllowedCaller):
                    peer.caller = match
                    peer.account = self._account(session, match)
                    session.commit()
        except Exception as exc:
            log.error("association from %s at %s rejected for now: allow-list not readable: %s",
                      peer.calling, peer.address, _safe_error(exc))
            self._audit("scp.association_rejected", peer, reason="allow_list_unavailable")
            self._reject(assoc, REJECT_TRY_LATER)
            return
        if isinstance(match, callers.UnknownCaller):
            reason = ("calling_ae_title_unknown" if match.reason == "ae_title"
                      else "network_not_allowed")
            log.warning("association from %s at %s rejected: %s; allow it with `relaypacs "
                        "scp-callers add %s --facility F`", peer.calling, peer.address,
                        reason.replace("_", " "), peer.calling)
            # Audited first: the row exists by the time the caller reads the rejection.
            self._audit("scp.association_rejected", peer, reason=reason)
            self._reject(assoc, REJECT_UNKNOWN_CALLER)
            return
        with self._guard:
            self._peers[assoc] = peer

    @staticmethod
    def _reject(assoc: Any, result_source_reason: tuple[int, int, int]) -> None:
        # What pynetdicom does with its own rejections: send the A-ASSOCIATE-RJ, then end
        # the association's threads once the peer has closed the connection.
        assoc.acse.send_reject(*result_source_reason)
        assoc.kill()

    def _on_rejected(self, event: Any) -> None:
        """pynetdicom's own rejections: over the association cap, wrong called AE title."""
        peer = self._forget(event.assoc)
        if peer is None:
            return
        answer = event.assoc.acceptor.primitive
        key = (answer.result, answer.result_source, answer.diagnostic)
        reason = _REJECT_REASONS.get(key, "rejected")
        log.warning("association from %s at %s rejected: %s", peer.calling, peer.address,
                    reason.replace("_", " "))
        extra: dict[str, Any] = {"reason": reason}
        if reason == "too_many_associations":
            extra["limit"] = self.max_associations
        self._audit("scp.association_rejected", peer, **extra)

    def _on_accepted(self, event: Any) -> None:
        peer = self._peer(event.assoc)
        if peer is None:
            return
        peer.accepted = True
        log.info("association accepted from %s at %s:%s for %r%s", peer.calling, peer.address,
                 peer.port, peer.caller.facility if peer.caller else None,
                 " over TLS" if peer.tls else "")
        self._audit("scp.association_accepted", peer)

    def _on_ended(self, event: Any) -> None:
        """Released or aborted (by either side): the closing audit row with the counts."""
        peer = self._forget(event.assoc)
        if peer is None or not peer.accepted:
            return
        outcome = "released" if event.event is evt.EVT_RELEASED else "aborted"
        self._close(peer, outcome)

    def _on_connection_closed(self, event: Any) -> None:
        # The closing audit row is left to EVT_RELEASED/EVT_ABORTED, which the association's
        # thread triggers after this one (a dropped connection is an A-P-ABORT there).
        _discard_partial_data_set(event.assoc)

    def _close_leftovers(self) -> None:
        """Close the books of associations whose thread ended without either event (a DUL
        thread that died): checked whenever another association is requested."""
        with self._guard:
            ended = [assoc for assoc in self._peers if not assoc.is_alive()]
            leftovers = [self._peers.pop(assoc) for assoc in ended]
        for peer in leftovers:
            if peer.accepted:
                self._close(peer, "connection_closed")

    def _close(self, peer: _Peer, outcome: str) -> None:
        answers = {f"{code:04X}": n for code, n in sorted(peer.answers.items())}
        extra: dict[str, Any] = {
            "outcome": outcome, "answers": answers, "stored": peer.stored,
            "bytes": peer.stored_bytes,
            "seconds": round(time.monotonic() - peer.started, 3),
        }
        if peer.abort_reason:
            extra["reason"] = peer.abort_reason
            if peer.abort_reason == "data_set_too_large":
                extra["limit_bytes"] = self.max_dataset_bytes
        log.info("association %s from %s at %s:%s; C-STORE answers: %s%s", outcome, peer.calling,
                 peer.address, peer.port,
                 ", ".join(f"{code} x{n}" for code, n in answers.items()) or "none",
                 f" ({peer.abort_reason})" if peer.abort_reason else "")
        self._audit("scp.association_ended", peer, **extra)

    def _on_pdu(self, event: Any) -> None:
        """Count the data set bytes as their fragments arrive; abort past the cap.

        Runs in pynetdicom's DUL thread for each PDU, before its fragments are written to the
        spool file, so at most the cap and one PDU are ever written."""
        pdu = event.pdu
        if not isinstance(pdu, P_DATA_TF):
            return
        peer = self._peer(event.assoc)
        if peer is None or peer.abort_reason is not None:
            return
        for item in pdu.presentation_data_value_items:
            value = item.presentation_data_value or b""
            if not value or value[0] & 0x01:  # a command fragment
                continue
            peer.receiving_bytes += len(value) - 1
            if peer.receiving_bytes > self.max_dataset_bytes:
                peer.abort_reason = "data_set_too_large"
                log.warning("association from %s at %s aborted: a data set passed %d bytes "
                            "(RELAYPACS_SCP_MAX_DATASET_BYTES)", peer.calling, peer.address,
                            self.max_dataset_bytes)
                event.assoc.abort()  # queued: this handler runs in the thread that sends it
                return
            if value[0] & 0x02:  # the data set's last fragment
                peer.receiving_bytes = 0

    # -- C-STORE

    def handle_store(self, event: Any) -> Dataset:
        peer = self._peer(event.assoc)
        if peer is None or peer.account is None or peer.caller is None:
            # Not reachable: every accepted association was matched at its request.
            return _status(dimse_intake.OUT_OF_RESOURCES, "gateway not ready; retry")
        answer = self._store(event, peer)
        peer.answers[int(answer.Status)] += 1
        return answer

    def _store(self, event: Any, peer: _Peer) -> Dataset:
        calling = peer.calling
        account = peer.account
        assert account is not None
        path = event.dataset_path
        upload = dimse_intake.new_upload()
        try:
            refusal = dimse_intake.check_received(path, self.parse_limits)
            stored = dimse_intake.store_original(self.store, upload, path)
            # Serialised per sender in this process (the row lock does it across processes), so
            # a modality's parallel associations do not open two batches at once.
            with self._lock_for(account.facility_id, calling), self.session_factory() as session:
                current = dimse_intake.session_batch(
                    session, account, calling, gap=self.gap, now=utcnow()
                )
                name = dimse_intake.display_name(event.request.AffectedSOPInstanceUID)
                dimse_intake.record_upload(session, upload, current.batch, account, stored, name)
                session.commit()
                batch_id = current.batch.id
        except Exception as exc:
            log.error("C-STORE from %s not stored, answered A700: %s", calling, _safe_error(exc))
            return _status(dimse_intake.OUT_OF_RESOURCES, "gateway storage unavailable; retry")
        peer.stored += 1
        peer.stored_bytes += stored.size
        # Enqueued after the commit; a lost message is re-driven by the beat job, so the
        # instance is acknowledged either way.
        try:
            self.enqueue_parse(upload.id)
            for closed in current.completed_ids:
                self.enqueue_dispatch(closed)
        except Exception as exc:
            log.warning("upload %s stored but not enqueued (%s); the re-drive job will",
                        upload.id, _safe_error(exc))
        if refusal is not None:
            log.warning("C-STORE from %s kept as upload %s in batch %s for quarantine (%s), "
                        "answered %04X", calling, upload.id, batch_id, refusal.reason, refusal.status)
            return _status(refusal.status, f"quarantined: {refusal.reason}")
        log.debug("C-STORE from %s stored as upload %s in batch %s", calling, upload.id, batch_id)
        return _status(dimse_intake.SUCCESS)

    def _tls_refused(self, address: tuple[str, int], exc: BaseException) -> None:
        peer = _Peer(calling="UNKNOWN", called=self.ae_title, address=str(address[0]),
                     port=int(address[1]), tls=True, client_certificate=None)
        log.warning("TLS connection from %s refused: %s", peer.address, _safe_error(exc))
        self._audit("scp.association_rejected", peer, reason="tls_handshake_failed",
                    error=_safe_error(exc)[:200])

    # -- lifecycle

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen in a background thread; returns the bound (host, port)."""
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True  # a misaddressed send is refused, not silently taken
        ae.maximum_pdu_size = MAX_PDU_SIZE
        ae.maximum_associations = self.max_associations
        ae.supported_contexts = storage_contexts()
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_CONN_CLOSE, self._on_connection_closed),
        ]
        server = ae.make_server((host, port), evt_handlers=handlers, server_class=_ListenerServer,
                                ssl_context=self.ssl_context)
        server.on_tls_refused = self._tls_refused
        threading.Thread(target=server.serve_forever, name="scp-acceptor", daemon=True).start()
        self._ae, self._server = ae, server
        return server.server_address[:2]

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let open associations finish for ``grace`` seconds, then abort them.

        An aborted C-STORE was never acknowledged, so the modality sends it again."""
        if self._server is None or self._ae is None:
            return
        # The plain socketserver shutdown: pynetdicom's own also closes the server at once.
        socketserver.BaseServer.shutdown(self._server)
        deadline = time.monotonic() + grace
        while self._ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.1)
        for assoc in self._ae.active_associations:
            assoc.abort()
        self._server.server_close()  # joins the association threads
        self._server = None


def _discard_partial_data_set(assoc: Any) -> None:
    """Remove the spool file of a data set whose association ended before its last fragment.

    pynetdicom creates it with delete=False and removes it only after a C-STORE handler ran."""
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    spool_file = getattr(message, "_data_set_file", None)
    spool_path: Path | None = getattr(message, "_data_set_path", None)
    if spool_path is None:
        return
    with contextlib.suppress(OSError):
        if spool_file is not None:
            spool_file.close()
        os.unlink(spool_path)


def serve(settings: Settings, *, ae_title: str, port: int, host: str,
          facility: str | None = None) -> None:
    """Run the SCP until SIGTERM or SIGINT (``relaypacs scp``)."""
    import signal
    import tempfile

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pynetdicom's INFO lines are per message; its DEBUG can dump data sets (PHI). Warnings only.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # Received data sets are spooled by pynetdicom to the default temp folder: keep them on the
    # gateway's own volume, next to the other spool files, rather than a possibly small /tmp.
    spool = settings.var_dir / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(spool)
    scp = StorageScp(settings, ae_title=ae_title, facility=facility)
    bound_host, bound_port = scp.start(host, port)
    serving = f"facility {facility!r}" if facility else "every facility"
    log.info("Storage SCP %s listening on %s:%s%s for %s (%d allowed callers, at most %d "
             "associations, data sets up to %d bytes)", ae_title, bound_host, bound_port,
             " with TLS" if scp.ssl_context else "", serving, scp.allowed_callers(),
             scp.max_associations, scp.max_dataset_bytes)
    if not scp.allowed_callers():
        log.warning("no caller is allowed yet, so every association is rejected: add one with "
                    "`relaypacs scp-callers add AE_TITLE --facility F [--network CIDR]`")
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()
    log.info("stopping: open associations get 10 s to finish")
    scp.stop(grace=10.0)
