"""The Storage SCP in-process on loopback (SQLite, folder store, enqueues recorded): what a
modality hears for each C-STORE, and what is kept when it hears it."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import Verification  # type: ignore

from api.intake.scp import StorageScp
from pipeline.dicom.samples import PYDICOM_FILES, synthetic_study
from pipeline.models import Batch, Upload, UploadState
from pipeline.storage import FolderStore
from tests.dimse_scu import store_files
from tests.hostile_files import deep_nesting, deflate_bomb

SCP_AET = "RELAYPACS_UT"


class BrokenStore(FolderStore):
    def put_file(self, key: str, path: Path) -> None:
        raise OSError("disk full")


@pytest.fixture
def scp_factory(app, settings, monkeypatch, tmp_path):
    # pynetdicom's chunked receive switch is a module global: restored after the test.
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    resources = app.extensions["relaypacs"]
    started: list[StorageScp] = []

    def make(store=None) -> tuple[StorageScp, int, list]:
        enqueued: list = []
        scp = StorageScp(
            settings, ae_title=SCP_AET, facility="Clinic North",
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
