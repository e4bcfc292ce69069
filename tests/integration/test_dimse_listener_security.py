"""Who may send to ``relaypacs scp``, with dcmtk ``storescu`` as the modality: an unknown AE title
is rejected at association, an allowed one is stored into the batch of the facility its
allow-list entry names (one listener serving two facilities), and DICOM TLS with client
certificates works end to end. Every association leaves its audit row in PostgreSQL.

Real processes: ``relaypacs scp`` and a Celery worker on Redis, PostgreSQL, the API for the
batch reports, dcmtk 3.6.7 ``storescu`` (Debian's is built with OpenSSL: ``+tls``)."""

from __future__ import annotations

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
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore
from sqlalchemy import create_engine, select

from pipeline.dicom.samples import synthetic_study
from pipeline.models import AuditEvent, Batch, Facility, Upload
from tests.integration.services import LOOPBACK, ServiceProcess, free_port, relaypacs_argv, run_cli
from tests.tls_certs import TlsFiles, make_tls_files

pytestmark = pytest.mark.integration

SCP_AET = "RELAYPACS_SEC"
ECHO_AET = "SEC_ECHO"


class Listener(ServiceProcess):
    """``relaypacs scp`` serving every facility on the allow-list; ready when it answers C-ECHO
    (over TLS with the test client certificate when ``tls`` is given)."""

    def __init__(self, env: dict[str, str], log_path: Path, tls: TlsFiles | None = None):
        self.port = free_port()
        self.tls = tls
        if tls is not None:
            env = {**env, "RELAYPACS_SCP_TLS_CERT": str(tls.server_cert),
                   "RELAYPACS_SCP_TLS_KEY": str(tls.server_key),
                   "RELAYPACS_SCP_TLS_CA": str(tls.ca_cert)}
        super().__init__("scp-sec", relaypacs_argv("scp", "--aet", SCP_AET, "--port", str(self.port),
                                                   "--host", LOOPBACK), env, log_path)

    def echo(self) -> bool:
        ae = AE(ae_title=ECHO_AET)
        ae.add_requested_context(Verification)
        tls_args = (self.tls.client_context(), "localhost") if self.tls else None
        assoc = ae.associate(LOOPBACK, self.port, ae_title=SCP_AET, tls_args=tls_args)
        try:
            return assoc.is_established and assoc.send_c_echo().Status == 0x0000
        finally:
            if assoc.is_established:
                assoc.release()

    def start(self, timeout: float = 60.0) -> Listener:  # type: ignore[override]
        super().start()
        self.wait_ready(self.echo, timeout)
        return self


@pytest.fixture(scope="module")
def facilities(gateway_env) -> dict[str, str]:
    """Two facilities with a modality each on the allow-list; the echo AE for the first."""
    tag = secrets.token_hex(3)
    names = {"north": f"Sec North {tag}", "south": f"Sec South {tag}"}
    for calling, facility in ((ECHO_AET, names["north"]), ("CT_NORTH_SEC", names["north"]),
                              ("CT_SOUTH_SEC", names["south"]), ("CT_TLS_SEC", names["south"])):
        run_cli(["scp-callers", "add", calling, "--facility", facility], gateway_env)
    return names


@pytest.fixture(scope="module")
def listener(gateway_env, it_dir, facilities) -> Iterator[Listener]:
    server = Listener(gateway_env, it_dir / "logs" / "scp-sec.log").start()
    try:
        yield server
    finally:
        server.stop(grace=15)


@pytest.fixture(scope="module")
def tls_files(it_dir) -> TlsFiles:
    return make_tls_files(it_dir / "scp-tls")


@pytest.fixture(scope="module")
def tls_listener(gateway_env, it_dir, facilities, tls_files) -> Iterator[Listener]:
    server = Listener(gateway_env, it_dir / "logs" / "scp-sec-tls.log", tls=tls_files).start()
    try:
        yield server
    finally:
        server.stop(grace=15)


@pytest.fixture(scope="module")
def database(postgres_url):
    engine = create_engine(postgres_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _write(folder: Path, count: int) -> tuple[list[Path], set[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    paths, uids = [], set()
    for index, data in enumerate(synthetic_study(count)):
        paths.append(folder / f"ct{index:03d}.dcm")
        paths[-1].write_bytes(data)
        uids.add(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
    return paths, uids


def _storescu(port: int, calling: str, paths: list[Path], *tls: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["storescu", *tls, "-aet", calling, "-aec", SCP_AET, LOOPBACK, str(port), *map(str, paths)],
        env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=120,
    )


def _audit(database, action: str, calling: str) -> list:
    with database.connect() as conn:
        return list(conn.execute(
            select(AuditEvent.target, AuditEvent.facility_id, AuditEvent.remote_addr,
                   AuditEvent.detail)
            .where(AuditEvent.action == action, AuditEvent.target == calling)
            .order_by(AuditEvent.id)))


def _wait_audit(database, action: str, calling: str, count: int, timeout: float = 15.0) -> list:
    deadline = time.monotonic() + timeout
    while len(rows := _audit(database, action, calling)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return rows


def _facility_id(database, name: str) -> int:
    with database.connect() as conn:
        return conn.execute(select(Facility.id).where(Facility.name == name)).scalar_one()


def _uploads_by_batch(database, sop_uids: set[str], timeout: float = 60.0) -> dict:
    """The uploads of these instances once the worker parsed them all: {uid: (batch, facility)}."""
    deadline = time.monotonic() + timeout
    while True:
        with database.connect() as conn:
            rows = conn.execute(
                select(Upload.sop_instance_uid, Upload.batch_id, Upload.facility_id, Upload.state)
                .where(Upload.sop_instance_uid.in_(sop_uids))).all()
        if len(rows) == len(sop_uids) and all(r.state == "parsed" for r in rows):
            return {r.sop_instance_uid: (r.batch_id, r.facility_id) for r in rows}
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(rows)} of {len(sop_uids)} uploads, states "
                                 f"{sorted(r.state for r in rows)}")
        time.sleep(0.5)


def test_storescu_from_an_unknown_ae_title_is_rejected_and_audited(listener, database, tmp_path):
    paths, _ = _write(tmp_path, 1)
    result = _storescu(listener.port, "STRANGER_SEC", paths)
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr, result.stderr
    assert "Calling AE Title Not Recognized" in result.stderr, result.stderr
    (row,) = _wait_audit(database, "scp.association_rejected", "STRANGER_SEC", 1)
    assert row.facility_id is None and row.remote_addr == LOOPBACK
    assert row.detail["reason"] == "calling_ae_title_unknown" and row.detail["tls"] is False
    assert _audit(database, "scp.association_accepted", "STRANGER_SEC") == []


def test_storescu_from_allowed_ae_titles_lands_in_each_ones_facility(
    listener, worker, facilities, database, api_server, make_user, tmp_path,
):
    north_paths, north_uids = _write(tmp_path / "north", 3)
    south_paths, south_uids = _write(tmp_path / "south", 2)
    for calling, paths in (("CT_NORTH_SEC", north_paths), ("CT_SOUTH_SEC", south_paths)):
        result = _storescu(listener.port, calling, paths)
        assert result.returncode == 0, result.stderr

    uploads = _uploads_by_batch(database, north_uids | south_uids)
    for name, calling, uids in (("north", "CT_NORTH_SEC", north_uids),
                                ("south", "CT_SOUTH_SEC", south_uids)):
        facility_id = _facility_id(database, facilities[name])
        batches = {uploads[uid][0] for uid in uids}
        assert len(batches) == 1 and {uploads[uid][1] for uid in uids} == {facility_id}
        with database.connect() as conn:
            batch = conn.execute(select(Batch.label, Batch.facility_id)
                                 .where(Batch.id == batches.pop())).one()
        assert batch == (f"DIMSE from {calling}", facility_id)
        # That facility's QA manager sees the batch, every file parsed; the other one does not.
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {make_user(facilities[name], 'qa_manager')}"
        listing = http.get(f"{api_server.url}/api/v1/batches", timeout=10).json()["batches"]
        assert [b["label"] for b in listing] == [f"DIMSE from {calling}"]

        (accepted,) = _wait_audit(database, "scp.association_accepted", calling, 1)
        assert accepted.facility_id == facility_id
        assert accepted.detail["facility"] == facilities[name]
        (ended,) = _wait_audit(database, "scp.association_ended", calling, 1)
        assert ended.detail["outcome"] == "released"
        assert ended.detail["answers"] == {"0000": len(uids)}
        assert ended.detail["stored"] == len(uids)


def test_storescu_over_tls_with_a_client_certificate(
    tls_listener, worker, facilities, tls_files, database, tmp_path,
):
    paths, uids = _write(tmp_path, 2)
    files = tls_files
    result = _storescu(tls_listener.port, "CT_TLS_SEC", paths,
                       "+tls", str(files.client_key), str(files.client_cert), "+cf", str(files.ca_cert))
    assert result.returncode == 0, result.stderr
    uploads = _uploads_by_batch(database, uids)
    assert {facility for _, facility in uploads.values()} == {
        _facility_id(database, facilities["south"])}
    (accepted,) = _wait_audit(database, "scp.association_accepted", "CT_TLS_SEC", 1)
    assert accepted.detail["tls"] is True
    assert accepted.detail["client_certificate"] == "CN=CT_TLS modality"

    # No TLS, or a certificate from another CA: no association, nothing stored.
    more, more_uids = _write(tmp_path / "refused", 1)
    plain = _storescu(tls_listener.port, "CT_TLS_SEC", more)
    stranger = _storescu(tls_listener.port, "CT_TLS_SEC", more, "+tls", str(files.stranger_key),
                         str(files.stranger_cert), "+cf", str(files.ca_cert))
    assert plain.returncode != 0 and stranger.returncode != 0, (plain.stderr, stranger.stderr)
    assert _audit(database, "scp.association_accepted", "CT_TLS_SEC") == [accepted]
    refused = _wait_audit(database, "scp.association_rejected", "UNKNOWN", 2)
    assert {r.detail["reason"] for r in refused} == {"tls_handshake_failed"}
    with database.connect() as conn:
        assert conn.execute(select(Upload.id).where(Upload.sop_instance_uid.in_(more_uids))).all() == []
