"""``relaypacs scp``: the DIMSE front door, a Storage SCP (pynetdicom) that modalities push to.

This module is the network edge, as the Flask app is for tus: it accepts associations, turns
each C-STORE into a call to ``pipeline.intake.dimse``, commits, enqueues and answers. What is
kept, where, and in which batch is decided there; see its docstring for the order of steps and
why a success status is only ever sent after the bytes and the row are committed.

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

import logging
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pydicom import Dataset
from pydicom import uid as uids
from pynetdicom import AE, AllStoragePresentationContexts, _config, build_context, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session, sessionmaker

from config import Settings
from pipeline.db.engine import make_engine, make_session_factory
from pipeline.dicom.headers import ParseLimits
from pipeline.intake import dimse as dimse_intake
from pipeline.models import utcnow
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


def storage_contexts() -> list[Any]:
    contexts = [build_context(cx.abstract_syntax, list(TRANSFER_SYNTAXES))
                for cx in AllStoragePresentationContexts]
    contexts.append(build_context(Verification))
    return contexts


class _NoDelayServer(ThreadedAssociationServer):
    """Association server whose accepted sockets have Nagle's algorithm off."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


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


class StorageScp:
    """The SCP's state: who owns received rows, where bytes go, what to enqueue."""

    def __init__(
        self,
        settings: Settings,
        *,
        ae_title: str,
        facility: str,
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
        self.session_factory = session_factory or make_session_factory(
            make_engine(settings.database_url)
        )
        self.store = store or open_store(settings.storage_url)
        self.enqueue_parse = enqueue_parse
        self.enqueue_dispatch = enqueue_dispatch
        self.gap = timedelta(seconds=settings.batch_quiet_seconds)
        self.parse_limits = ParseLimits.from_settings(settings)
        with self.session_factory() as session:
            self.account = dimse_intake.scp_account(session, facility)
            session.commit()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._answers: dict[int, Counter[int]] = {}  # per association, for its closing log line
        self._ae: AE | None = None
        self._server: _NoDelayServer | None = None
        # Module-level switch in pynetdicom; this process only receives (see module docstring).
        _config.STORE_RECV_CHUNKED_DATASET = True

    def _lock_for(self, calling_aet: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(calling_aet, threading.Lock())

    # -- events

    def handle_store(self, event: Any) -> Dataset:
        answer = self._store(event)
        with self._locks_guard:
            self._answers.setdefault(id(event.assoc), Counter())[int(answer.Status)] += 1
        return answer

    def _store(self, event: Any) -> Dataset:
        calling = dimse_intake.clean_ae_title(event.assoc.requestor.ae_title)
        path = event.dataset_path
        upload = dimse_intake.new_upload()
        try:
            refusal = dimse_intake.check_received(path, self.parse_limits)
            stored = dimse_intake.store_original(self.store, upload, path)
            # Serialised per sender in this process (the row lock does it across processes), so
            # a modality's parallel associations do not open two batches at once.
            with self._lock_for(calling), self.session_factory() as session:
                current = dimse_intake.session_batch(
                    session, self.account, calling, gap=self.gap, now=utcnow()
                )
                name = dimse_intake.display_name(event.request.AffectedSOPInstanceUID)
                dimse_intake.record_upload(
                    session, upload, current.batch, self.account, stored, name
                )
                session.commit()
                batch_id = current.batch.id
        except Exception as exc:
            log.error("C-STORE from %s not stored, answered A700: %s", calling, _safe_error(exc))
            return _status(dimse_intake.OUT_OF_RESOURCES, "gateway storage unavailable; retry")
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

    def _log_association(self, event: Any) -> None:
        requestor = event.assoc.requestor
        what = event.event.name.removeprefix("EVT_").lower()
        counts = ""
        if what != "accepted":
            with self._locks_guard:
                answers = self._answers.pop(id(event.assoc), Counter())
            counts = "; C-STORE answers: " + (
                ", ".join(f"{code:04X} x{n}" for code, n in sorted(answers.items())) or "none")
        log.info("association %s from %s at %s:%s%s", what,
                 dimse_intake.clean_ae_title(requestor.ae_title), requestor.address, requestor.port,
                 counts)

    # -- lifecycle

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen in a background thread; returns the bound (host, port)."""
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True  # a misaddressed send is refused, not silently taken
        ae.maximum_pdu_size = MAX_PDU_SIZE
        ae.supported_contexts = storage_contexts()
        handlers = [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_ACCEPTED, self._log_association),
            (evt.EVT_RELEASED, self._log_association),
            (evt.EVT_ABORTED, self._log_association),
        ]
        server = ae.make_server((host, port), evt_handlers=handlers, server_class=_NoDelayServer)
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


def serve(settings: Settings, *, ae_title: str, port: int, host: str, facility: str) -> None:
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
    log.info("Storage SCP %s listening on %s:%s for facility %r", ae_title, bound_host, bound_port,
             facility)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()
    log.info("stopping: open associations get 10 s to finish")
    scp.stop(grace=10.0)
