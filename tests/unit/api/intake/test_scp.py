"""The Storage SCP in-process on loopback (SQLite, folder store, enqueues recorded): what a
modality hears for each C-STORE, and what is kept when it hears it."""

from __future__ import annotations

import hashlib
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore

from api.intake.scp import StorageScp
from pipeline.dicom.samples import PYDICOM_FILES, synthetic_study
from pipeline.intake import callers
from pipeline.models import AuditEvent, Batch, Facility, Upload, UploadState
from pipeline.storage import FolderStore
from tests.dimse_scu import store_files
from tests.hostile_files import deep_nesting, deflate_bomb
from tests.tls_certs import make_tls_files

SCP_AET = "RELAYPACS_UT"


class BrokenStore(FolderStore):
    def put_file(self, key: str, path: Path) -> None:
        raise OSError("disk full")


@pytest.fixture
def allow(session):
    """``allow(ae_title, facility, network=None)``: an entry on the listener's allow-list."""

    def add(ae_title: str, facility: str, network: str | None = None) -> None:
        callers.add_caller(session, ae_title, facility, network)
        session.commit()

    return add


@pytest.fixture
def scp_factory(app, settings, monkeypatch, tmp_path, allow):
    # pynetdicom's chunked receive switch is a module global: restored after the test.
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    resources = app.extensions["relaypacs"]
    started: list[StorageScp] = []
    # The test modality of these tests, on the allow-list of the listener's facility.
    allow("CT_ROOM_1", "Clinic North")

    def make(store=None, facility: str | None = "Clinic North",
             **overrides) -> tuple[StorageScp, int, list]:
        enqueued: list = []
        scp = StorageScp(
            settings.with_overrides(**overrides), ae_title=SCP_AET, facility=facility,
            session_factory=resources.session_factory, store=store or resources.store,
            enqueue_parse=lambda uid: enqueued.append(("parse", uid)),
            enqueue_dispatch=lambda bid: enqueued.append(("dispatch", bid)),
        )
        _, port = scp.start("127.0.0.1", 0)
        started.append(scp)
        return scp, port, enqueued

    yield make
    for scp in started:
        scp.stop(grace=1)


def _send(port: int, paths: list[Path]) -> list[int]:
    return store_files("127.0.0.1", port, SCP_AET, "CT_ROOM_1", paths)


def _dataset_bytes(data: bytes, tmp_path: Path) -> bytes:
    path = tmp_path / "split.dcm"
    path.write_bytes(data)
    _, offset = split_dataset(path)
    return data[offset:]


def test_instances_are_stored_as_received_then_acknowledged(scp_factory, session, tmp_path):
    scp, port, enqueued = scp_factory()
    files = []
    for index, data in enumerate(synthetic_study(3)):
        files.append(tmp_path / f"ct{index}.dcm")
        files[-1].write_bytes(data)

    assert _send(port, files) == [0x0000] * 3

    uploads = session.query(Upload).order_by(Upload.created_at).all()
    assert [u.state for u in uploads] == [UploadState.ASSEMBLED] * 3
    assert enqueued == [("parse", u.id) for u in uploads]
    batch = session.get(Batch, uploads[0].batch_id)
    assert batch.label == "DIMSE from CT_ROOM_1" and batch.state == "open"
    assert {u.batch_id for u in uploads} == {batch.id}
    for upload, path in zip(uploads, files, strict=True):
        with scp.store.open(upload.object_key) as fh:
            stored = fh.read()
        assert hashlib.sha256(stored).hexdigest() == upload.sha256
        # The data set is byte for byte what the modality sent; the meta is the SCP's own.
        assert _dataset_bytes(stored, tmp_path) == _dataset_bytes(path.read_bytes(), tmp_path)
        assert upload.filename.endswith(".dcm") and upload.filename != "dimse-instance.dcm"


def test_a_truncated_instance_is_kept_for_quarantine_but_refused(scp_factory, session):
    _, port, enqueued = scp_factory()
    assert _send(port, [PYDICOM_FILES / "MR_truncated.dcm"]) == [0xC000]
    (upload,) = session.query(Upload).all()
    assert upload.state == UploadState.ASSEMBLED  # the parse task quarantines it, as for tus
    assert enqueued == [("parse", upload.id)]


def test_a_deflate_bomb_is_refused_without_inflating_it(scp_factory, session, tmp_path):
    """The listener reads each header to choose its answer: a 50 KB deflated data set that
    inflates to 50 MB must cost it neither the 50 MB nor a retry-later answer."""
    _, port, enqueued = scp_factory()
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(deflate_bomb(50 * 1024 * 1024))
    tracemalloc.start()
    try:
        statuses = store_files("127.0.0.1", port, SCP_AET, "CT_ROOM_1", [bomb],
                               transfer_syntax=DeflatedExplicitVRLittleEndian)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert statuses == [0xC000]
    assert peak < 24 * 1024 * 1024, f"{peak} bytes allocated while receiving a 50 KB data set"
    (upload,) = session.query(Upload).all()
    assert upload.state == UploadState.ASSEMBLED  # kept; the parse task quarantines it
    assert enqueued == [("parse", upload.id)]


def test_deeply_nested_sequences_are_refused_not_answered_retry_later(scp_factory, tmp_path):
    _, port, _ = scp_factory()
    deep = tmp_path / "deep.dcm"
    deep.write_bytes(deep_nesting(3000))
    assert _send(port, [deep]) == [0xC000]


def test_storage_failure_answers_a700_and_records_nothing(scp_factory, session, tmp_path):
    _, port, enqueued = scp_factory(store=BrokenStore(tmp_path / "broken"))
    path = tmp_path / "ct.dcm"
    path.write_bytes(synthetic_study(1)[0])
    assert _send(port, [path]) == [0xA700]
    assert session.query(Upload).count() == 0
    assert enqueued == []


def test_echo_answers_and_a_wrong_called_ae_title_is_rejected(scp_factory):
    _, port, _ = scp_factory()
    ae = AE(ae_title="CT_ROOM_1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=SCP_AET)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    wrong = ae.associate("127.0.0.1", port, ae_title="SOMEONE_ELSE")
    assert wrong.is_rejected


# -- who may send: the allow-list, the caps, TLS, the audit trail


def _associate(port: int, calling: str, *, tls=None, sop_class=Verification):
    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title=SCP_AET,
                        tls_args=(tls, "localhost") if tls is not None else None)


def _rejection(assoc) -> tuple[int, int, int]:
    """(result, source, reason) of an A-ASSOCIATE-RJ."""
    assert assoc.is_rejected, "the association was not rejected"
    answer = assoc.acceptor.primitive
    return answer.result, answer.result_source, answer.diagnostic


def _audit(session, action: str) -> list[AuditEvent]:
    session.expire_all()
    return session.query(AuditEvent).filter_by(action=action).order_by(AuditEvent.id).all()


def _eventually(probe, timeout: float = 5.0):
    """``probe()``'s first truthy answer within ``timeout`` seconds (its last answer otherwise)."""
    deadline = time.monotonic() + timeout
    while not (answer := probe()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return answer


def _ct_files(tmp_path: Path, count: int) -> list[Path]:
    files = []
    for index, data in enumerate(synthetic_study(count)):
        files.append(tmp_path / f"ct{index}.dcm")
        files[-1].write_bytes(data)
    return files


def test_an_unknown_calling_ae_title_is_rejected_at_association_and_audited(scp_factory, session):
    _, port, enqueued = scp_factory()
    # PS3.8: rejected-permanent, by the service user, "calling AE title not recognized".
    assert _rejection(_associate(port, "STRANGER")) == (0x01, 0x01, 0x03)
    (event,) = _audit(session, "scp.association_rejected")
    assert event.target == "STRANGER" and event.remote_addr == "127.0.0.1"
    assert event.facility_id is None and event.user_id is None
    assert event.detail["reason"] == "calling_ae_title_unknown"
    assert event.detail["called_ae"] == SCP_AET
    assert _audit(session, "scp.association_accepted") == []
    assert session.query(Upload).count() == 0 and enqueued == []


def test_an_allowed_ae_title_from_outside_its_network_is_rejected(scp_factory, session, allow):
    allow("CT_REMOTE", "Clinic North", network="10.20.0.0/16")
    _, port, _ = scp_factory()
    assert _rejection(_associate(port, "CT_REMOTE")) == (0x01, 0x01, 0x03)
    (event,) = _audit(session, "scp.association_rejected")
    assert event.target == "CT_REMOTE" and event.detail["reason"] == "network_not_allowed"


def test_a_listener_for_one_facility_knows_only_that_facilitys_callers(scp_factory, allow):
    allow("CT_SOUTH", "Clinic South")
    _, port, _ = scp_factory(facility="Clinic North")
    assert _rejection(_associate(port, "CT_SOUTH")) == (0x01, 0x01, 0x03)


def test_one_listener_serves_several_facilities_each_caller_into_its_own(
        scp_factory, session, allow, tmp_path):
    allow("CT_SOUTH", "Clinic South")
    # One AE title in two facilities, told apart by network: the more specific entry wins.
    allow("MODALITY", "Clinic North")
    allow("MODALITY", "Clinic East", network="127.0.0.0/8")
    _, port, _ = scp_factory(facility=None)
    files = _ct_files(tmp_path, 2)
    for calling in ("CT_ROOM_1", "CT_SOUTH", "MODALITY"):
        assert store_files("127.0.0.1", port, SCP_AET, calling, files) == [0x0000] * 2

    by_label = {b.label: b for b in session.query(Batch).all()}
    facility_of = {f.id: f.name for f in session.query(Facility).all()}
    assert {label: facility_of[b.facility_id] for label, b in by_label.items()} == {
        "DIMSE from CT_ROOM_1": "Clinic North",
        "DIMSE from CT_SOUTH": "Clinic South",
        "DIMSE from MODALITY": "Clinic East",
    }
    for batch in by_label.values():
        uploads = session.query(Upload).filter_by(batch_id=batch.id).all()
        assert len(uploads) == 2 and {u.facility_id for u in uploads} == {batch.facility_id}


def test_every_association_is_audited_with_its_facility_address_and_counts(
        scp_factory, session, tmp_path):
    _, port, _ = scp_factory()
    files = _ct_files(tmp_path, 3)
    assert store_files("127.0.0.1", port, SCP_AET, "CT_ROOM_1",
                       [*files, PYDICOM_FILES / "MR_truncated.dcm"]) == [0x0000] * 3 + [0xC000]

    north = session.query(Facility).filter_by(name="Clinic North").one()
    (accepted,) = _audit(session, "scp.association_accepted")
    assert (accepted.target, accepted.facility_id, accepted.remote_addr) == (
        "CT_ROOM_1", north.id, "127.0.0.1")
    assert accepted.detail["facility"] == "Clinic North" and accepted.detail["tls"] is False
    # The closing row is written as the association ends, after the requestor's release.
    (ended,) = _eventually(lambda: _audit(session, "scp.association_ended"))
    assert ended.facility_id == north.id and ended.target == "CT_ROOM_1"
    assert ended.detail["outcome"] == "released"
    assert ended.detail["answers"] == {"0000": 3, "C000": 1}
    assert ended.detail["stored"] == 4
    assert ended.detail["bytes"] == sum(u.length for u in session.query(Upload).all())


def test_associations_over_the_cap_are_rejected_as_transient(scp_factory, session):
    _, port, _ = scp_factory(scp_max_associations=1)
    first = _associate(port, "CT_ROOM_1")
    assert first.is_established
    try:
        # PS3.8: rejected-transient, by the service provider (presentation), "local limit exceeded".
        assert _rejection(_associate(port, "CT_ROOM_1")) == (0x02, 0x03, 0x02)
    finally:
        first.release()
    (event,) = _audit(session, "scp.association_rejected")
    assert event.detail["reason"] == "too_many_associations"
    assert event.detail["facility"] == "Clinic North"
    again = _associate(port, "CT_ROOM_1")
    assert again.is_established
    again.release()


def test_a_data_set_over_the_cap_aborts_the_association_and_keeps_nothing(
        scp_factory, session, tmp_path, monkeypatch):
    # pynetdicom spools a data set being received to a temporary file: a private folder here.
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    _, port, enqueued = scp_factory(scp_max_dataset_bytes=8 * 1024)
    big = tmp_path / "big.dcm"
    big.write_bytes(synthetic_study(1)[0])  # pydicom's CT_small: about 39 KB of data set
    assoc = _associate(port, "CT_ROOM_1", sop_class=CTImageStorage)
    assert assoc.is_established
    answer = assoc.send_c_store(big)
    assert "Status" not in answer
    # The requestor's flag follows the A-ABORT it received a moment after the send returns.
    assert _eventually(lambda: assoc.is_aborted)
    (ended,) = _eventually(lambda: _audit(session, "scp.association_ended"))
    assert ended.detail["outcome"] == "aborted"
    assert ended.detail["reason"] == "data_set_too_large"
    assert ended.detail["limit_bytes"] == 8 * 1024
    assert session.query(Upload).count() == 0 and enqueued == []
    assert list(spool.iterdir()) == []  # no partial spool file left behind
    # A data set under the cap on the next association is taken as usual.
    small = _ct_files(tmp_path, 1)
    _, port, _ = scp_factory(scp_max_dataset_bytes=1024 * 1024)
    assert store_files("127.0.0.1", port, SCP_AET, "CT_ROOM_1", small) == [0x0000]


def test_dicom_tls_with_client_certificates(scp_factory, session, tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    _, port, _ = scp_factory(scp_tls_cert=tls.server_cert, scp_tls_key=tls.server_key,
                             scp_tls_ca=tls.ca_cert)
    assoc = _associate(port, "CT_ROOM_1", tls=tls.client_context(), sop_class=CTImageStorage)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(_ct_files(tmp_path, 1)[0]).Status == 0x0000
    finally:
        assoc.release()
    (accepted,) = _audit(session, "scp.association_accepted")
    assert accepted.detail["tls"] is True
    assert accepted.detail["client_certificate"] == "CN=CT_TLS modality"

    # Plain TCP, no client certificate, a certificate of another CA: no association.
    for context in (None, tls.client_context(cert=False), tls.client_context(stranger=True)):
        assert not _associate(port, "CT_ROOM_1", tls=context).is_established
    refused = _eventually(lambda: (rows := _audit(session, "scp.association_rejected"))
                          and len(rows) >= 3 and rows)
    assert [e.detail["reason"] for e in refused] == ["tls_handshake_failed"] * 3
    assert session.query(Upload).count() == 1
