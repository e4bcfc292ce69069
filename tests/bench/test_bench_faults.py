"""The fault suite: faults on the real stack with default settings, and what they cost.

Every scenario runs a batch through a private gateway (``FaultStack``: API, beat, an
intake/dicom worker and a pacs worker as README starts them, on a private redis-server or a
fresh RabbitMQ virtual host), a private PostgreSQL cluster (initdb + pg_ctl on a free port,
restartable), moto_server behind a link that can be cut, and Orthanc behind ``StowRecorder``.
For each scenario it prints and records:

- delivered: expected instances found in Orthanc (counted in the PACS, not in the ledger);
- lost: expected instances not in Orthanc when the scenario's wait ended;
- duplicated: instances stored by more than one STOW-RS request (seen on the wire), and the
  size of the largest single request, the bound for "the request on the wire";
- recovery: seconds from the end of the fault until the last expected instance arrived.

Targets: 0 lost, 0 duplicated outside the interrupted request, recovery under 60 s.
Results: ``tests/bench/results/faults.json``. Knobs: BENCH_FAULT_STUDY (300 instances in the
kill scenarios), BENCH_FAULT_ONLY (comma-separated scenario names).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from config.settings import Settings
from pipeline.dicom.samples import synthetic_study
from tests.integration.fault_stack import (
    FaultStack,
    PrivatePostgres,
    StowRecorder,
    TcpLink,
    rabbitmq_available,
)
from tests.integration.gateway_client import Gateway
from tests.integration.services import LOOPBACK, MotoS3, Orthanc, run_cli

pytestmark = [pytest.mark.bench, pytest.mark.integration]

STUDY = int(os.environ.get("BENCH_FAULT_STUDY", "300"))
ONLY = {n for n in os.environ.get("BENCH_FAULT_ONLY", "").split(",") if n}
TARGET_SECONDS = 60.0
STOW_BATCH = 40  # the default RELAYPACS_STOW_BATCH_SIZE
RESULTS = Path(__file__).parent / "results" / "faults.json"


def _uids(files: list[bytes]) -> list[str]:
    return [str(pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True).SOPInstanceUID) for f in files]


def _with_patient(files: list[bytes], patient_id: str, new_study: bool = False) -> list[bytes]:
    """The same instances (SOPInstanceUIDs kept) under another patient; ``new_study``: also
    in a study and series of their own, as a modality re-creates a study it refiles."""
    study_uid, series_uid = generate_uid(), generate_uid()
    out = []
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.PatientID = patient_id
        ds.PatientName = f"Resend^{patient_id}"
        if new_study:
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


class Bench:
    """The shared pieces: private PostgreSQL, moto behind a cuttable link, Orthanc behind a
    recorder, the Redis stack; the RabbitMQ stack is started by its scenario."""

    def __init__(self, workdir: Path, orthanc: Orthanc) -> None:
        self.workdir = workdir
        self.orthanc = orthanc
        self.pg = PrivatePostgres().init()
        self.database_url = self.pg.create_database()
        self.moto = MotoS3(workdir / "s3").start()
        self.s3_link = TcpLink(self.moto.port).up()
        self.storage_env = {**self.moto.env, "AWS_ENDPOINT_URL": f"http://{LOOPBACK}:{self.s3_link.port}",
                            "RELAYPACS_STORAGE_URL": self.moto.storage_url}
        self.recorder = StowRecorder(orthanc.http_url, delay=0.3).start()
        self.stack = FaultStack(workdir / "redis-stack", database_url=self.database_url,
                                storage_env=self.storage_env).start(migrate=True)
        self.rows: list[dict] = []
        self.serial = 0

    def gateway(self, stack: FaultStack, name: str) -> Gateway:
        self.serial += 1
        facility = f"Faults {name} {self.serial}"
        run_cli(["destinations", "add", f"faults-{name}-{self.serial}", "--stow-url",
                 self.recorder.dicomweb_url, "--facility", facility], stack.env)
        out = run_cli(["users", "create", "--email", f"faults-{self.serial}@bench.test",
                       "--facility", facility, "--role", "uploader"], stack.env)
        return Gateway(stack.api.url, out.strip().splitlines()[-1].strip())

    def fresh(self) -> None:
        self.orthanc.start()
        self.orthanc.clear()
        self.recorder.reset()

    def close(self) -> None:
        self.stack.stop()
        self.recorder.stop()
        self.s3_link.cut()
        self.moto.stop()
        self.pg.destroy()


# --------------------------------------------------------------------------- a patient client


def upload_resilient(gateway: Gateway, batch_id: int, data: bytes, name: str, *,
                     chunk: int = 64 * 1024, deadline: float, stop_at: int | None = None) -> str:
    """A tus client as clinics run one: on any error it waits, asks the offset and resumes.
    ``stop_at``: walk away after this many bytes (an abandoned upload)."""
    location = None
    while True:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: not uploaded before the deadline")
        try:
            if location is None:
                created = gateway.create(batch_id, len(data), name)
                if created.status_code != 201:
                    time.sleep(0.5)
                    continue
                location = created.headers["Location"]
            head = gateway.head(location)
            if head.status_code != 200:
                time.sleep(0.5)
                continue
            offset = int(head.headers["Upload-Offset"])
            while offset < len(data):
                if stop_at is not None and offset >= stop_at:
                    return location
                end = min(offset + chunk, len(data), stop_at or len(data))
                answer = gateway.patch(location, offset, data[offset:end])
                if answer.status_code != 204:
                    raise requests.ConnectionError(f"PATCH {answer.status_code}")
                offset = int(answer.headers["Upload-Offset"])
            return location
        except requests.RequestException:
            time.sleep(0.5)


def complete_resilient(gateway: Gateway, batch_id: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            answer = gateway.http.post(f"{gateway.url}/api/v1/batches/{batch_id}/complete", timeout=10)
            if answer.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError("the batch could not be completed")


def open_resilient(gateway: Gateway, deadline: float) -> int:
    while time.monotonic() < deadline:
        try:
            answer = gateway.http.post(f"{gateway.url}/api/v1/batches", json={}, timeout=10)
            if answer.status_code == 201:
                return answer.json()["id"]
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError("no batch could be opened")


def wait_arrived(orthanc: Orthanc, expected: set[str], timeout: float,
                 check: Callable[[], bool] | None = None) -> float | None:
    """monotonic() when every expected instance is in Orthanc (and ``check`` holds), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if orthanc.count() >= len(expected) and expected <= orthanc.instance_uids() and (
                    check is None or check()):
                return time.monotonic()
        except requests.RequestException:
            pass
        time.sleep(0.25)
    return None


def measure(bench: Bench, scenario: str, expected: set[str], fault_ended: float, timeout: float,
            note: str = "", check: Callable[[], bool] | None = None, **extra: object) -> dict:
    arrived_at = wait_arrived(bench.orthanc, expected, timeout, check)
    present = expected & bench.orthanc.instance_uids()
    duplicated = {uid: n for uid, n in bench.recorder.duplicated().items() if uid in expected}
    row = {
        "scenario": scenario,
        "expected": len(expected),
        "delivered": len(present),
        "lost": len(expected - present),
        "duplicated": len(duplicated),
        "duplicate_sends": sum(n - 1 for n in duplicated.values()),
        "largest_request": STOW_BATCH,
        "stow_requests": bench.recorder.stow_requests,
        "recovery_seconds": round(arrived_at - fault_ended, 1) if arrived_at else None,
        "note": note,
        **extra,
    }
    row["met"] = bool(row["lost"] == 0 and row["duplicated"] <= STOW_BATCH
                      and row["recovery_seconds"] is not None
                      and row["recovery_seconds"] <= TARGET_SECONDS)
    bench.rows.append(row)
    print(f"\n[faults] {scenario}: delivered {row['delivered']}/{row['expected']}, lost {row['lost']}, "
          f"duplicated {row['duplicated']}, recovery {row['recovery_seconds']} s "
          f"({'met' if row['met'] else 'NOT met'}) {note}", flush=True)
    return row


# --------------------------------------------------------------------------- scenarios


def kill_mid_forward(bench: Bench, stack: FaultStack, scenario: str) -> dict:
    bench.fresh()
    gateway = bench.gateway(stack, scenario)
    files = synthetic_study(STUDY)
    batch_id = gateway.open_batch()
    deadline = time.monotonic() + 300
    for i, data in enumerate(files):
        upload_resilient(gateway, batch_id, data, f"f{i:04d}.dcm", deadline=deadline)
    gateway.complete(batch_id)
    while bench.recorder.stow_requests < 1:
        assert time.monotonic() < deadline, "nothing was forwarded"
        time.sleep(0.01)
    killed = time.monotonic()
    stack.pacs.kill()
    stored_at_kill = bench.orthanc.count()
    stack.pacs = stack.worker("pacs")
    restarted = time.monotonic() - killed
    return measure(bench, scenario, set(_uids(files)), killed, 120,
                   note=f"{stored_at_kill} stored at the kill; new worker ready in {restarted:.1f} s",
                   stored_at_kill=stored_at_kill, worker_restart_seconds=round(restarted, 1))


def pacs_down(bench: Bench) -> dict:
    bench.fresh()
    gateway = bench.gateway(bench.stack, "pacs-down")
    files = synthetic_study(120)
    bench.orthanc.stop()
    down_at = time.monotonic()
    batch_id = gateway.open_batch()
    for i, data in enumerate(files):
        gateway.upload(batch_id, data, f"f{i:04d}.dcm")
    gateway.complete(batch_id)
    time.sleep(max(0.0, 60 - (time.monotonic() - down_at)))
    bench.orthanc.start()
    return measure(bench, "pacs_down_60s", set(_uids(files)), time.monotonic(), 180,
                   note="Orthanc stopped before the batch, started 60 s later")


def redis_restart(bench: Bench) -> dict:
    bench.fresh()
    stack = bench.stack
    gateway = bench.gateway(stack, "redis-restart")
    files = synthetic_study(120)
    batch_id = gateway.open_batch()
    deadline = time.monotonic() + 300
    for i, data in enumerate(files[:60]):
        upload_resilient(gateway, batch_id, data, f"a{i:04d}.dcm", deadline=deadline)
    # Redis (the broker) goes away with every message queued in it, mid-batch.
    stack.redis.stop(grace=5)
    time.sleep(2)
    stack.start_redis()
    back = time.monotonic()
    for i, data in enumerate(files[60:]):
        upload_resilient(gateway, batch_id, data, f"b{i:04d}.dcm", deadline=deadline)
    complete_resilient(gateway, batch_id, deadline)
    return measure(bench, "redis_restart", set(_uids(files)), back, 180,
                   note="broker restarted empty after 60 of 120 files")


def postgres_restart(bench: Bench) -> dict:
    bench.fresh()
    stack = bench.stack
    gateway = bench.gateway(stack, "pg-restart")
    files = synthetic_study(120)
    batch_id = gateway.open_batch()
    deadline = time.monotonic() + 300
    for i, data in enumerate(files[:60]):
        upload_resilient(gateway, batch_id, data, f"a{i:04d}.dcm", deadline=deadline)
    bench.pg.stop("fast")  # every connection dropped, in the middle of parsing
    time.sleep(5)
    bench.pg.start()
    back = time.monotonic()
    for i, data in enumerate(files[60:]):
        upload_resilient(gateway, batch_id, data, f"b{i:04d}.dcm", deadline=deadline)
    complete_resilient(gateway, batch_id, deadline)
    return measure(bench, "postgres_restart", set(_uids(files)), back, 180,
                   note="PostgreSQL down 5 s after 60 of 120 files")


def s3_down(bench: Bench) -> dict:
    bench.fresh()
    stack = bench.stack
    gateway = bench.gateway(stack, "s3-down")
    files = synthetic_study(120)
    batch_id = gateway.open_batch()
    deadline = time.monotonic() + 300
    for i, data in enumerate(files[:40]):
        upload_resilient(gateway, batch_id, data, f"a{i:04d}.dcm", deadline=deadline)
    bench.s3_link.cut()

    import threading

    restore = threading.Timer(30, bench.s3_link.up)
    restore.start()
    cut_at = time.monotonic()
    for i, data in enumerate(files[40:]):  # the clinic keeps sending through the outage
        upload_resilient(gateway, batch_id, data, f"b{i:04d}.dcm", deadline=deadline)
    restore.join()
    back = cut_at + 30
    complete_resilient(gateway, batch_id, deadline)
    return measure(bench, "s3_down_30s", set(_uids(files)), back, 180,
                   note="S3 unreachable for 30 s while 80 of 120 files were sent")


def abandoned_upload(bench: Bench) -> dict:
    bench.fresh()
    gateway = bench.gateway(bench.stack, "abandoned")
    files = synthetic_study(21)
    batch_id = gateway.open_batch()
    deadline = time.monotonic() + 120
    for i, data in enumerate(files[:20]):
        upload_resilient(gateway, batch_id, data, f"f{i:04d}.dcm", deadline=deadline)
    straggler = files[20]
    upload_resilient(gateway, batch_id, straggler, "cut-off.dcm", chunk=4096, deadline=deadline,
                     stop_at=int(len(straggler) * 0.4))
    abandoned_at = time.monotonic()
    gateway.complete(batch_id)
    report = gateway.report(batch_id)
    # The settled files go out after the quiet period, whatever the straggler does: a clinic's
    # slow link may still be sending it, and the quiet period (kept at its default) is what
    # protects such links. The fault, a straggler holding the batch, ends when it ends.
    quiet = Settings.batch_quiet_seconds
    row = measure(bench, "abandoned_upload", set(_uids(files[:20])), abandoned_at + quiet, 240,
                  note=f"1 of 21 files cut off at 40 %, batch completed; recovery counted from the "
                       f"end of the {quiet} s quiet period")
    if row["recovery_seconds"] is not None:
        row["recovery_from_cut_seconds"] = round(row["recovery_seconds"] + quiet, 1)
    row["straggler_in_pacs"] = _uids([straggler])[0] in bench.orthanc.instance_uids()
    row["batch_state_after_complete"] = report.get("state")
    return row


def _corrected_in(bench: Bench, expected: set[str], want_study: str) -> set[str]:
    """Expected SOPInstanceUIDs stored in Orthanc with the new patient and study."""
    good = set()
    for uid in expected:
        hits = bench.orthanc.session.post(f"{bench.orthanc.http_url}/tools/lookup", data=uid,
                                          timeout=30).json()
        for hit in hits:
            if hit["Type"] != "Instance":
                continue
            tags = bench.orthanc.session.get(
                f"{bench.orthanc.http_url}/instances/{hit['ID']}/simplified-tags", timeout=30).json()
            if tags.get("PatientID") == "RESEND-NEW" and tags.get("StudyInstanceUID") == want_study:
                good.add(uid)
    return good


def corrected_resend(bench: Bench, new_study: bool) -> dict:
    """A study of 10 goes out under one patient; a later batch re-sends 9 of its instances
    (all but the first: a clinic re-sends the images it refiles) with another PatientID, in
    the same study or in a new one. Delivered: the re-sent instances found in Orthanc
    carrying the new PatientID (and the new StudyInstanceUID when there is one)."""
    scenario = "corrected_resend_new_study" if new_study else "corrected_resend_same_study"
    bench.fresh()
    gateway = bench.gateway(bench.stack, "resend")
    originals = _with_patient(synthetic_study(10), "RESEND-OLD")
    first = gateway.open_batch()
    for i, data in enumerate(originals):
        gateway.upload(first, data, f"old{i}.dcm")
    gateway.complete(first)
    assert wait_arrived(bench.orthanc, set(_uids(originals)), 120) is not None, \
        "the first version never arrived"
    corrected = _with_patient(originals, "RESEND-NEW", new_study)[1:]
    expected = set(_uids(corrected))
    want_study = str(pydicom.dcmread(io.BytesIO(corrected[0]), stop_before_pixels=True).StudyInstanceUID)
    second = gateway.open_batch()
    for i, data in enumerate(corrected):
        gateway.upload(second, data, f"new{i}.dcm")
    gateway.complete(second)
    # The old versions already reached the PACS: nothing of these instances goes out until a
    # person chooses (a second object under one SOPInstanceUID would leave the PACS with
    # both). The person here chooses every corrected version as soon as the conflicts show;
    # recovery runs from that choice, and nothing may arrive before it.
    conflicts: list[dict] = []
    shown_by = time.monotonic() + 90
    while time.monotonic() < shown_by:
        conflicts = gateway.report(second).get("conflicts") or []
        if len(conflicts) == len(expected):
            break
        time.sleep(0.5)
    held = not _corrected_in(bench, expected, want_study)
    for conflict in conflicts:
        [new] = [v for v in conflict["versions"] if v["patient_id"] == "RESEND-NEW"]
        answer = gateway.http.post(
            f"{gateway.url}/api/v1/batches/{second}/conflicts/{conflict['id']}/choose",
            json={"upload_id": new["upload_id"]}, timeout=30)
        assert answer.status_code == 200, answer.text
    sent_at = time.monotonic()

    def as_corrected() -> set[str]:
        return _corrected_in(bench, expected, want_study)

    deadline = sent_at + 90
    arrived = None
    while time.monotonic() < deadline:
        if as_corrected() == expected:
            arrived = time.monotonic()
            break
        time.sleep(0.5)
    corrected_in_pacs = as_corrected()
    row = {
        "scenario": scenario, "expected": len(expected), "delivered": len(corrected_in_pacs),
        "lost": len(expected - corrected_in_pacs), "duplicated": 0, "duplicate_sends": 0,
        "largest_request": STOW_BATCH, "stow_requests": bench.recorder.stow_requests,
        "recovery_seconds": round(arrived - sent_at, 1) if arrived else None,
        "note": "9 of 10 SOPInstanceUIDs re-sent in a later batch with another PatientID"
                + (" in a new study" if new_study else " in the same study")
                + "; held as conflicts (the old versions reached the PACS) until a person chose"
                  " them; recovery from the choice; delivered = in Orthanc with the new PatientID"
                  " and StudyInstanceUID",
        "conflicts_shown": len(conflicts),
        "held_until_chosen": held,
    }
    row["met"] = bool(row["lost"] == 0 and held and len(conflicts) == len(expected)
                      and arrived is not None and row["recovery_seconds"] <= TARGET_SECONDS)
    bench.rows.append(row)
    print(f"\n[faults] {scenario}: {len(corrected_in_pacs)}/{len(expected)} arrived as corrected, "
          f"recovery {row['recovery_seconds']} s ({'met' if row['met'] else 'NOT met'})", flush=True)
    return row


# --------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def bench(it_dir, orthanc) -> Iterator[Bench]:
    running = Bench(it_dir / "faults-bench", orthanc)
    try:
        yield running
    finally:
        running.close()


def _wanted(name: str) -> bool:
    return not ONLY or name in ONLY


def test_fault_suite(bench, bench_results):
    started = time.monotonic()
    load = [os.getloadavg()[0]]
    scenarios: list[tuple[str, Callable[[], dict]]] = [
        ("worker_killed_redis", lambda: kill_mid_forward(bench, bench.stack, "worker_killed_redis")),
        ("pacs_down_60s", lambda: pacs_down(bench)),
        ("redis_restart", lambda: redis_restart(bench)),
        ("postgres_restart", lambda: postgres_restart(bench)),
        ("s3_down_30s", lambda: s3_down(bench)),
        ("abandoned_upload", lambda: abandoned_upload(bench)),
        ("corrected_resend_same_study", lambda: corrected_resend(bench, new_study=False)),
        ("corrected_resend_new_study", lambda: corrected_resend(bench, new_study=True)),
    ]
    errors: dict[str, str] = {}
    for name, run in scenarios:
        if _wanted(name):
            try:
                run()
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others
                errors[name] = f"{type(exc).__name__}: {exc}"
                print(f"\n[faults] {name}: ERROR {errors[name]}", flush=True)
            load.append(os.getloadavg()[0])
    if _wanted("worker_killed_amqp") and rabbitmq_available():
        amqp = FaultStack(bench.workdir / "amqp-stack", database_url=bench.database_url,
                          storage_env=bench.storage_env, broker="amqp")
        try:
            amqp.start()
            kill_mid_forward(bench, amqp, "worker_killed_amqp")
        except Exception as exc:  # noqa: BLE001
            errors["worker_killed_amqp"] = f"{type(exc).__name__}: {exc}"
        finally:
            amqp.stop()
        load.append(os.getloadavg()[0])

    print(f"\n\n{'scenario':<30}delivered  lost  duplicated  recovery   target")
    for row in bench.rows:
        recovery = f"{row['recovery_seconds']} s" if row["recovery_seconds"] is not None else "never"
        print(f"{row['scenario']:<30}{row['delivered']:>5}/{row['expected']:<5}{row['lost']:>5}"
              f"{row['duplicated']:>12}  {recovery:>9}   {'met' if row['met'] else 'NOT met'}")
    for name, error in errors.items():
        print(f"{name:<30} error: {error}")
    document = {
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "flock /tmp/relaypacs-bench.lock .venv/bin/python -m pytest -q -m bench "
                   "tests/bench/test_bench_faults.py -s",
        "settings": "defaults (only database, broker, Redis, storage and var dir set)",
        "study_size_kill_scenarios": STUDY,
        "stow_recorder_delay_seconds": bench.recorder.delay,
        "load_average_1min": [round(x, 2) for x in load],
        "suite_seconds": round(time.monotonic() - started, 1),
        "scenarios": bench.rows,
        "errors": errors,
    }
    bench_results["faults"] = document
    if ONLY and RESULTS.exists():
        # A partial run replaces its own scenarios' rows and keeps the others' (with when
        # each row was measured).
        previous = json.loads(RESULTS.read_text())
        for row in bench.rows:
            row["measured_at"] = document["written_at"]
        mine = {row["scenario"] for row in bench.rows}
        document = {**previous, "partial_rerun_at": document["written_at"],
                    "scenarios": [r for r in previous["scenarios"] if r["scenario"] not in mine]
                    + bench.rows}
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    failed = [row["scenario"] for row in bench.rows if not row["met"]] + list(errors)
    assert not failed, f"targets not met: {failed}"
