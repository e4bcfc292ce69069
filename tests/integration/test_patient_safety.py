"""Patient safety on real services (API, Celery workers on Redis, PostgreSQL, moto S3,
Orthanc): what Orthanc stored is checked, not ledger rows.

- a corrected re-send arrives under its own patient, never the old one's;
- a re-send of an instance that already reached the PACS waits for a person, who chooses;
- two files of one instance in one batch (pydicom's own samples, ``relaypacs upload``, a
  worker with two processes): every parse settles, the rule's version goes out, the CLI
  says what it waits for;
- an upload abandoned at 40 % does not hold the batch's other files, and goes out on its
  own when it finishes.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select
from tusclient import client as tus_client

from pipeline.accounts.users import create_user
from pipeline.db.engine import make_engine, make_session_factory
from pipeline.dicom import grouping
from pipeline.dicom.samples import PYDICOM_FILES
from pipeline.models import (
    Batch,
    ConflictState,
    Instance,
    InstanceVersion,
    SopInstance,
    Upload,
    UploadState,
    utcnow,
)
from pipeline.storage import open_store
from tests.clinic_samples import patient_study, refiled, transcoded, uids_of
from tests.integration.gateway_client import Gateway
from tests.integration.services import relaypacs_argv
from tests.sample_data import synthetic_study

pytestmark = pytest.mark.integration
FACILITY = "Clinic Safety"


@pytest.fixture(scope="module")
def stow_destination(add_stow_destination):
    return add_stow_destination("orthanc-safety", facility=FACILITY)


@pytest.fixture
def token(make_user, worker, stow_destination, orthanc_clean):
    return make_user(FACILITY, "uploader")


@pytest.fixture
def gateway(api_server, token):
    return Gateway(api_server.url, token)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def in_orthanc(orthanc, sop_uid: str) -> list[tuple[str, str]]:
    """(PatientID, sha256 of the stored file) of every instance Orthanc holds with this
    SOPInstanceUID (it files one per patient/study/series, so there can be several)."""
    response = orthanc.session.post(f"{orthanc.http_url}/tools/lookup", data=sop_uid, timeout=30)
    response.raise_for_status()
    out = []
    for hit in response.json():
        if hit["Type"] == "Instance":
            data = orthanc.session.get(f"{orthanc.http_url}/instances/{hit['ID']}/file", timeout=60).content
            out.append((str(pydicom.dcmread(io.BytesIO(data)).PatientID), sha(data)))
    return sorted(out)


def wait_for(check, timeout: float = 60.0, what: str = "condition"):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not met after {timeout}s")


def test_a_corrected_resend_arrives_under_its_own_patient(gateway, orthanc_clean):
    other, wrong = patient_study(2, patient_id="P-WRONG", name="Wrong^Patient")
    right = refiled(wrong, patient_id="P-RIGHT", name="Right^Patient")
    misfiled = gateway.open_batch(label="misfiled")
    corrected = gateway.open_batch(label="corrected")
    # The misfiled batch is still open (nothing went out) when the clinic sends the fix.
    gateway.upload(misfiled, other, "other.dcm")
    gateway.upload(misfiled, wrong, "wrong.dcm")
    gateway.upload(corrected, right, "right.dcm")
    gateway.complete(corrected)
    gateway.wait_state(corrected, "done")

    sop_uid = uids_of(right)[2]
    assert in_orthanc(orthanc_clean, sop_uid) == [("P-RIGHT", sha(right))]
    gateway.complete(misfiled)  # its other image goes out; the superseded one never does
    gateway.wait_state(misfiled, "done")
    assert in_orthanc(orthanc_clean, sop_uid) == [("P-RIGHT", sha(right))]
    assert orthanc_clean.count() == 2


def test_a_resend_after_delivery_waits_for_a_person(gateway, orthanc_clean, api_server, make_user):
    (wrong,) = patient_study(1, patient_id="P-WRONG", name="Wrong^Patient")
    right = refiled(wrong, patient_id="P-RIGHT", name="Right^Patient")
    sop_uid = uids_of(wrong)[2]
    first = gateway.open_batch(label="misfiled")
    gateway.upload(first, wrong, "wrong.dcm")
    gateway.complete(first)
    gateway.wait_state(first, "done")
    assert in_orthanc(orthanc_clean, sop_uid) == [("P-WRONG", sha(wrong))]

    second = gateway.open_batch(label="corrected")
    gateway.upload(second, right, "right.dcm")
    gateway.complete(second)
    report = wait_for(lambda: (r := gateway.report(second))["conflicts"] and r["state"] == "forwarding"
                      and not r["waiting"]["unfinished_files"] and r, what="conflict shown")
    (conflict,) = report["conflicts"]
    assert (conflict["kind"], conflict["state"], conflict["chosen_upload_id"]) == ("resend", "open", None)
    by_patient = {v["patient_id"]: v for v in conflict["versions"]}
    assert by_patient["P-WRONG"]["deliveries"] == {"delivered": ["orthanc-safety"]}
    assert report["waiting"]["conflicts_open"] == 1
    time.sleep(2)  # nothing goes out while it waits: not the new bytes, under no patient
    assert in_orthanc(orthanc_clean, sop_uid) == [("P-WRONG", sha(wrong))]
    assert gateway.report(second)["state"] == "forwarding"

    admin = Gateway(api_server.url, make_user(FACILITY, "admin"))
    trail = admin.http.get(f"{api_server.url}/api/v1/audit", params={"action": "instance.versions_decided"},
                           timeout=10).json()
    assert any(e["target"] == f"sop_instance:{conflict['id']}" for e in trail["events"])

    base = f"{api_server.url}/api/v1/batches/{second}/conflicts/{conflict['id']}"
    chosen = by_patient["P-RIGHT"]["upload_id"]
    response = gateway.http.post(f"{base}/choose", json={"upload_id": chosen}, timeout=10)
    assert response.status_code == 200, response.text
    gateway.wait_state(second, "done")
    # The PACS now holds the corrected image under its own patient (the misfiled copy is
    # the PACS administrator's to delete).
    assert in_orthanc(orthanc_clean, sop_uid) == [("P-RIGHT", sha(right)), ("P-WRONG", sha(wrong))]
    assert gateway.http.post(f"{base}/choose", json={"upload_id": chosen}, timeout=10).status_code == 409


# pydicom's own samples: one SOPInstanceUID each, in several transfer syntaxes (the big
# endian twin with the same transfer syntax as another is left out: equal files are decided
# by upload order, which a parallel client does not fix).
PAIRS = {
    "MR_small.dcm": ("MR_small_implicit.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                     "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm"),
    "SC_rgb_small_odd.dcm": ("SC_rgb_small_odd_big_endian.dcm",),
}


def test_two_files_of_one_instance_in_one_batch_with_relaypacs_upload(tmp_path, api_server, token,
                                                                      orthanc_clean):
    folder = tmp_path / "pydicom"
    folder.mkdir()
    for winner, others in PAIRS.items():
        for name in (winner, *others):
            (folder / name).write_bytes((PYDICOM_FILES / name).read_bytes())
    result = subprocess.run(
        relaypacs_argv("upload", str(folder), "--server", api_server.url, "--token", token,
                       "--state", str(tmp_path / "state.json"), "--wait", "90", "--jobs", "4"),
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "waiting:" in result.stdout  # it said what it waited for after "100%"
    for winner in PAIRS:
        assert f"; sent: {winner}" in result.stdout, result.stdout
    stored = {uids_of((PYDICOM_FILES / w).read_bytes())[2]: w for w in PAIRS}
    assert orthanc_clean.instance_uids() == set(stored)
    for uid, winner in stored.items():
        assert orthanc_clean.instance_bytes(uid) == (PYDICOM_FILES / winner).read_bytes()

    gateway = Gateway(api_server.url, token)
    batch_id = int(result.stdout.split("batch ")[1].split(":")[0])
    report = gateway.report(batch_id)
    # No parse task died on the race: every file settled, none waited for the re-drive.
    assert {f["state"] for f in report["files"]} == {"parsed"}
    assert {c["kind"] for c in report["conflicts"]} == {"versions_in_batch"}
    assert {c["state"] for c in report["conflicts"]} == {"chosen"}


def test_an_abandoned_upload_does_not_hold_the_batch(gateway, api_server, orthanc_clean, beat):
    whole, straggler = synthetic_study(3)[:2], synthetic_study(1)[0]
    batch_id = gateway.open_batch(label="tab closed")
    tus = tus_client.TusClient(f"{api_server.url}/api/v1/files",
                               headers={"Authorization": gateway.http.headers["Authorization"]})
    for i, data in enumerate(whole):
        tus.uploader(file_stream=io.BytesIO(data), chunk_size=16 * 1024,
                     metadata={"filename": f"whole{i}.dcm", "batch_id": str(batch_id)}).upload()
    cut = int(len(straggler) * 0.4)
    late = tus.uploader(file_stream=io.BytesIO(straggler), chunk_size=cut,
                        metadata={"filename": "late.dcm", "batch_id": str(batch_id)})
    late.upload_chunk()  # 40 %, then the tab is closed
    assert late.offset == cut
    gateway.complete(batch_id)

    # The quiet period (5 s here) passes: the settled files go out, the batch names the straggler.
    wait_for(lambda: orthanc_clean.count() == 2, timeout=60, what="settled files in Orthanc")
    report = gateway.report(batch_id)
    assert report["state"] == "forwarding"
    (unfinished,) = report["waiting"]["unfinished_files"]
    assert (unfinished["filename"], unfinished["state"], unfinished["offset"], unfinished["length"]) == (
        "late.dcm", "receiving", cut, len(straggler))

    late.upload()  # the straggler finishes later and goes out on its own
    report = gateway.wait_state(batch_id, "done", timeout=60)
    assert orthanc_clean.count() == 3
    assert orthanc_clean.instance_bytes(uids_of(straggler)[2]) == straggler
    assert report["totals"]["deliveries_by_state"] == {"delivered": 3}


def test_two_parses_of_one_instance_racing_on_postgresql(gateway_env, s3):
    """Two sessions record two files of one SOPInstanceUID at the same moment, in both
    commit orders: neither fails, and the rule's version is the one that goes out."""
    factory = make_session_factory(make_engine(gateway_env["RELAYPACS_DATABASE_URL"]))
    store = open_store(gateway_env["RELAYPACS_STORAGE_URL"])
    spool = Path(gateway_env["RELAYPACS_VAR_DIR"]) / "spool"
    with factory() as session:
        user, _ = create_user(session, f"race-{secrets.token_hex(3)}@race.test", "Clinic Race",
                              "uploader")
        session.commit()
        facility_id, user_id = user.facility_id, user.id

    def new_batch() -> int:
        with factory() as session:
            batch = Batch(facility_id=facility_id, user_id=user_id)
            session.add(batch)
            session.commit()
            return batch.id

    def stored(batch_id: int, data: bytes) -> str:
        upload_id = secrets.token_hex(16)
        key = f"race/{upload_id}/original.dcm"
        store.put_stream(key, io.BytesIO(data))
        with factory() as session:
            session.add(Upload(id=upload_id, batch_id=batch_id, facility_id=facility_id,
                               user_id=user_id, filename=f"{upload_id[:6]}.dcm",
                               length=len(data), offset=len(data),
                               state=UploadState.ASSEMBLED, object_key=key, sha256=sha(data),
                               expires_at=utcnow() + timedelta(days=1)))
            session.commit()
        return upload_id

    def parse(upload_id: str, barrier: threading.Barrier | None = None, delay: float = 0.0) -> None:
        with factory() as session:
            upload = session.get(Upload, upload_id)
            header = grouping.read_stored_header(store, upload.object_key, spool, upload.sha256)
            if barrier is not None:
                barrier.wait()
            time.sleep(delay)
            grouping.record_instance(session, upload, header)
            session.commit()

    for round_ in range(4):
        sibling, explicit = patient_study(2, patient_id="P1", name="Doe^Ann")
        implicit = transcoded(explicit, "1.2.840.10008.1.2")
        earlier = refiled(explicit, patient_id="P0", name="Earlier^Version")
        # An earlier batch's version (not sent yet) makes the SOPInstanceUID known, and the
        # study and series are known too: the two parses below meet on existing rows only,
        # never on inserting a new one (which would make one wait for the other anyway).
        first = stored(new_batch(), earlier)
        parse(first)
        parse(stored(new_batch(), sibling))
        batch_id = new_batch()
        # The implicit file is created first: created-first does not beat the better syntax.
        ids = [stored(batch_id, implicit), stored(batch_id, explicit)]
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def run(upload_id: str, delay: float, barrier: threading.Barrier = barrier,
                errors: list[BaseException] = errors) -> None:
            try:
                parse(upload_id, barrier, delay)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        # Both at once, then each one a little ahead of the other.
        delays = ((0.0, 0.0), (0.0, 0.0), (0.0, 0.01), (0.01, 0.0))[round_]
        threads = [threading.Thread(target=run, args=(i, d)) for i, d in zip(ids, delays, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        with factory() as session:
            rows = {i.upload_id: i for i in session.scalars(
                select(Instance).where(Instance.upload_id.in_([first, *ids])))}
            assert [rows[i].version_state for i in (first, *ids)] == [
                InstanceVersion.SUPERSEDED, InstanceVersion.SUPERSEDED, InstanceVersion.CURRENT]
            key = session.scalars(select(SopInstance).where(
                SopInstance.sop_instance_uid == rows[ids[0]].sop_instance_uid)).one()
            assert key.conflict_state == ConflictState.CHOSEN and key.chosen_instance_id == rows[ids[1]].id
            assert {session.get(Upload, i).state for i in ids} == {UploadState.PARSED}
