"""DIMSE intake on real services: modalities (dcmtk ``storescu`` and pynetdicom) push to
``relaypacs scp``; the instances take the tus uploads' chain through real Celery workers and
reach Orthanc over STOW-RS byte for byte what the SCP received, once the sending session has
been quiet for RELAYPACS_BATCH_QUIET_SECONDS (forwarded by the real beat). A truncated or
garbage C-STORE is answered with a failure, kept, quarantined and never forwarded."""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import create_file_meta, split_dataset
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore
from sqlalchemy import create_engine, select

from pipeline.dicom.samples import PYDICOM_FILES, synthetic_study
from pipeline.models import Upload
from tests.dimse_scu import store_files
from tests.integration.services import LOOPBACK, ServiceProcess, free_port, relaypacs_argv, run_cli

pytestmark = pytest.mark.integration

SCP_AET = "RELAYPACS_IT"
BEAT_INTERVAL = 15.0  # beat_schedule.py: pacs.forward_quiet_batches
MARGIN = 20.0
# Data Set Trailing Padding (FFFC,FFFC), explicit VR OB: dcmtk drops it when it reads a file,
# so storescu never sends it (pydicom's CT_small.dcm, the synthetic studies' template, has one).
TRAILING_PADDING_TAG = b"\xfc\xff\xfc\xffOB"


class StorageScpProcess(ServiceProcess):
    """``relaypacs scp`` on a free loopback port, ready when it answers C-ECHO."""

    def __init__(self, env: dict[str, str], log_path: Path, facility: str):
        self.port = free_port()
        self.facility = facility
        super().__init__(
            "scp",
            relaypacs_argv("scp", "--aet", SCP_AET, "--port", str(self.port), "--host", LOOPBACK,
                           "--facility", facility),
            env,
            log_path,
        )

    def echo(self) -> bool:
        ae = AE(ae_title="IT_ECHO")
        ae.add_requested_context(Verification)
        assoc = ae.associate(LOOPBACK, self.port, ae_title=SCP_AET)
        try:
            return assoc.is_established and assoc.send_c_echo().Status == 0x0000
        finally:
            if assoc.is_established:
                assoc.release()

    def start(self, timeout: float = 60.0) -> StorageScpProcess:  # type: ignore[override]
        super().start()
        self.wait_ready(self.echo, timeout)
        return self


@pytest.fixture(scope="module")
def facility() -> str:
    return f"DIMSE Clinic {secrets.token_hex(3)}"


# The modalities of this module, on the listener's allow-list for the module's facility.
CALLERS = ("IT_ECHO", "CT_STORESCU", "CT_PYNETDICOM", "BAD_MODALITY")


@pytest.fixture(scope="module")
def scp(gateway_env, it_dir, facility) -> Iterator[StorageScpProcess]:
    for calling in CALLERS:
        run_cli(["scp-callers", "add", calling, "--facility", facility], gateway_env)
    server = StorageScpProcess(gateway_env, it_dir / "logs" / "scp.log", facility).start()
    try:
        yield server
    finally:
        server.stop(grace=15)


@pytest.fixture(scope="module")
def stow_destination(add_stow_destination, facility) -> str:
    return add_stow_destination("orthanc-dimse-intake", facility=facility)


@pytest.fixture(scope="module")
def database(postgres_url):
    engine = create_engine(postgres_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def qa_http(api_server, make_user, facility) -> requests.Session:
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {make_user(facility, 'qa_manager')}"
    return http


def _write(folder: Path, files: list[bytes], prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, data in enumerate(files):
        paths.append(folder / f"{prefix}{index:03d}.dcm")
        paths[-1].write_bytes(data)
    return paths


def _sop_uid(data: bytes) -> str:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID


def _meta(data: bytes) -> pydicom.dataset.FileMetaDataset:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta


def _dataset(data: bytes) -> bytes:
    """The data set bytes of a Part-10 file (what travels in a C-STORE)."""
    # Preamble 128 + "DICM" 4 + the group length element 12 + the rest of group 0002.
    return data[132 + 12 + _meta(data).FileMetaInformationGroupLength :]


def _storescu(port: int, paths: list[Path], calling: str) -> None:
    result = subprocess.run(
        ["storescu", "-aet", calling, "-aec", SCP_AET, LOOPBACK, str(port), *map(str, paths)],
        env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Status" not in result.stderr or "Success" in result.stderr, result.stderr


def _pynetdicom_send(port: int, paths: list[Path], calling: str) -> list[int]:
    return store_files(LOOPBACK, port, SCP_AET, calling, paths)


def _wait_in_orthanc(orthanc, uids: set[str], timeout: float) -> float:
    start = time.monotonic()
    while True:
        missing = uids - orthanc.instance_uids()
        if not missing:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{len(missing)} of {len(uids)} instances not in Orthanc "
                                 f"after {timeout:.0f} s")
        time.sleep(0.5)


def _uploads(database, sop_uids: set[str]) -> dict[str, Upload]:
    with database.connect() as conn:
        rows = conn.execute(select(Upload.sop_instance_uid, Upload.sha256, Upload.state,
                                   Upload.batch_id).where(Upload.sop_instance_uid.in_(sop_uids)))
        return {row.sop_instance_uid: row for row in rows}


def _quiet_deadline(gateway_env) -> float:
    return float(gateway_env["RELAYPACS_BATCH_QUIET_SECONDS"]) + BEAT_INTERVAL + MARGIN


def test_pushed_studies_reach_orthanc_as_received_after_the_quiet_period(
    scp, worker, beat, stow_destination, orthanc_clean, database, qa_http, api_server,
    gateway_env, tmp_path,
):
    by_storescu = synthetic_study(6)
    by_pynetdicom = synthetic_study(6)
    _storescu(scp.port, _write(tmp_path / "storescu", by_storescu, "ct"), "CT_STORESCU")
    assert _pynetdicom_send(scp.port, _write(tmp_path / "pynetdicom", by_pynetdicom, "ct"),
                            "CT_PYNETDICOM") == [0x0000] * 6
    sent = {_sop_uid(d): d for d in by_storescu + by_pynetdicom}

    waited = _wait_in_orthanc(orthanc_clean, set(sent), _quiet_deadline(gateway_env))
    print(f"\nall {len(sent)} pushed instances in Orthanc {waited:.1f} s after the last C-STORE")

    uploads = _uploads(database, set(sent))
    assert set(uploads) == set(sent)
    for uid, original in sent.items():
        stored = orthanc_clean.instance_bytes(uid)
        # Orthanc holds exactly the file the SCP stored: its meta and the data set as received.
        assert hashlib.sha256(stored).hexdigest() == uploads[uid].sha256
        meta = _meta(stored)
        assert meta.MediaStorageSOPInstanceUID == uid
        assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
        expected = _dataset(original)
        if original in by_storescu:
            expected = expected[: expected.rindex(TRAILING_PADDING_TAG)]
        assert _dataset(stored) == expected, f"data set of {uid} changed on the way"

    # One batch per sending modality, still open for more (forwarded on the quiet period).
    listing = qa_http.get(f"{api_server.url}/api/v1/batches", timeout=10).json()["batches"]
    by_label = {b["label"]: b for b in listing}
    for calling, files in (("CT_STORESCU", by_storescu), ("CT_PYNETDICOM", by_pynetdicom)):
        batch = by_label[f"DIMSE from {calling}"]
        assert batch["state"] == "open"
        report = qa_http.get(f"{api_server.url}/api/v1/batches/{batch['id']}", timeout=10).json()
        assert report["totals"]["files_by_state"] == {"parsed": len(files)}
        assert {f["sop_instance_uid"] for f in report["files"]} == {_sop_uid(d) for d in files}


def _garbage_instance(path: Path) -> str:
    """A Part-10 file with valid meta whose data set is noise (even length, as DIMSE needs)."""
    sop_uid = generate_uid()
    meta = create_file_meta(sop_class_uid=CTImageStorage, sop_instance_uid=sop_uid,
                            transfer_syntax=ExplicitVRLittleEndian)
    with open(path, "wb") as fh:
        fh.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fh, meta)
        fh.write(b"\x08\x00\x16\x00UI\x40\x00" + secrets.token_bytes(998))
    return sop_uid


def test_truncated_and_garbage_instances_are_refused_kept_and_never_forwarded(
    scp, worker, beat, stow_destination, orthanc_clean, qa_http, api_server, gateway_env,
    tmp_path,
):
    good = synthetic_study(1)
    paths = _write(tmp_path, good, "good")
    truncated = PYDICOM_FILES / "MR_truncated.dcm"
    garbage = tmp_path / "garbage.dcm"
    garbage_uid = _garbage_instance(garbage)
    truncated_uid = pydicom.dcmread(truncated, stop_before_pixels=True).SOPInstanceUID
    statuses = _pynetdicom_send(scp.port, [paths[0], truncated, garbage], "BAD_MODALITY")
    assert statuses[0] == 0x0000
    assert all(0xC000 <= s <= 0xCFFF for s in statuses[1:]), [hex(s) for s in statuses]

    # The good instance of the same session is forwarded; the two bad ones are not.
    _wait_in_orthanc(orthanc_clean, {_sop_uid(good[0])}, _quiet_deadline(gateway_env))
    listing = qa_http.get(f"{api_server.url}/api/v1/batches", timeout=10).json()["batches"]
    batch = next(b for b in listing if b["label"] == "DIMSE from BAD_MODALITY")
    report = qa_http.get(f"{api_server.url}/api/v1/batches/{batch['id']}", timeout=10).json()
    states = sorted((f["state"], f["quarantine_reason"] or "") for f in report["files"])
    assert [s for s, _ in states] == ["parsed", "quarantined", "quarantined"], states
    assert {r for s, r in states if s == "quarantined"} <= {"truncated", "unreadable", "not_dicom",
                                                            "missing_uid", "invalid_uid"}
    names = {f["filename"] for f in report["files"] if f["state"] == "quarantined"}
    assert names == {f"{truncated_uid}.dcm", f"{garbage_uid}.dcm"}
    assert report["totals"]["deliveries_by_state"].keys() == {"delivered"}
    stored = orthanc_clean.instance_uids()
    assert truncated_uid not in stored and garbage_uid not in stored
    split_dataset(paths[0])  # the good file is a valid Part-10 file (sanity of the fixture)
