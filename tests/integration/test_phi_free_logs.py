"""No patient name, ID, birth date or accession number in any log line, at any level.

Instances carrying unmistakable values go through the whole pipeline (upload, a per-patient
override, quarantine of a broken copy, forwarding) on an API process and a worker logging at
DEBUG, then every log file the servers wrote is scanned for those values.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pydicom
import pytest

from tests.integration.gateway_client import Gateway
from tests.integration.services import ApiServer, Worker, WorkerFleet, stop_together
from tests.sample_data import synthetic_study

pytestmark = pytest.mark.integration

PHI = {
    "PatientName": "Canaryphi^Ottilie",
    "PatientID": "PHICANARY4711",
    "PatientBirthDate": "19230417",
    "AccessionNumber": "ACCPHI0815",
}


def with_phi(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def debug_stack(gateway_env, worker_fleet, it_dir) -> Iterator[ApiServer]:
    """An API process and the only worker, both logging at DEBUG (every level)."""
    env = {**gateway_env, "RELAYPACS_LOG_LEVEL": "DEBUG"}
    worker_fleet.stop(worker_fleet.default())
    worker = Worker(WorkerFleet.DEFAULT_QUEUES, 2, env, it_dir / "logs" / "worker-phi-debug.log")
    worker.start()
    api = ApiServer(env, it_dir / "logs" / "api-phi-debug.log").start()
    try:
        worker.wait_ready(worker.is_ready, 60)
        yield api
    finally:
        stop_together([api, worker], grace=10)
        worker_fleet.default()


def test_logs_never_carry_patient_data(debug_stack, make_user, add_stow_destination,
                                       orthanc_clean, it_dir):
    add_stow_destination("orthanc-phi", facility="PHI Clinic")
    gateway = Gateway(debug_stack.url, make_user("PHI Clinic", "uploader"))
    files = [with_phi(d) for d in synthetic_study(4)]
    batch_id = gateway.open_batch(label="phi scan")
    response = gateway.http.patch(
        f"{debug_stack.url}/api/v1/batches/{batch_id}/patients/{PHI['PatientID']}",
        json={"InstitutionName": "PHI Test Hospital"}, timeout=10)
    assert response.status_code < 500
    for i, data in enumerate(files):
        gateway.upload(batch_id, data, f"phi{i}.dcm")
    gateway.upload(batch_id, files[0][:-500], "phi-truncated.dcm")  # quarantined
    gateway.complete(batch_id)
    report = gateway.wait_state(batch_id, "done", timeout=90)
    assert report["totals"]["deliveries_by_state"] == {"delivered": 4}

    logs = sorted(p for p in it_dir.rglob("*.log") if p.is_file())
    debug_lines = [line for name in ("api-phi-debug.log", "worker-phi-debug.log")
                   for line in (it_dir / "logs" / name).read_text(errors="replace").splitlines()
                   if '"level": "DEBUG"' in line]
    assert debug_lines, "the DEBUG run wrote no DEBUG lines"
    findings = []
    for path in logs:
        text = path.read_text(errors="replace")
        for keyword, value in PHI.items():
            for needle in {value, value.replace("^", " ")}:
                if needle in text:
                    findings.append(f"{path.name}: {keyword}")
    assert findings == []


def test_request_id_follows_the_work_into_celery_tasks(it_dir):
    """The id of the request that finished an upload appears on the tasks it caused."""
    import json

    api_logs = [p for p in it_dir.rglob("api*.log")]
    worker_text = "\n".join(p.read_text(errors="replace") for p in it_dir.rglob("worker*.log"))
    finishing = []
    for path in api_logs:
        for line in path.read_text(errors="replace").splitlines():
            if '"route": "/api/v1/files/<upload_id>"' in line and '"status": 204' in line:
                finishing.append(json.loads(line)["request_id"])
    assert finishing, "no tus PATCH in the API log"
    followed = [rid for rid in finishing if f'"request_id": "{rid}"' in worker_text]
    assert followed, "no task logged the request id of the request that caused it"
