"""Hostile and broken files through the real API and a real Celery worker whose memory is
limited (RLIMIT_AS on its processes, as a container's limit would be): each such upload ends
QUARANTINED with its reason, its batch settles, and the worker keeps serving other uploads.

The module runs its own API and worker on a Redis database of its own, so no other test's
worker (without the memory limit) can take these files.
"""

from __future__ import annotations

import resource
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from tests.hostile_files import _body_bytes, _ct, _meta_bytes, broken_corpus, deep_nesting, deflate_bomb
from tests.integration.gateway_client import Gateway
from tests.integration.services import ApiServer, RedisDatabase, Worker, process_group_members
from tests.sample_data import synthetic_study

pytestmark = pytest.mark.integration

# Address space a pool process may take beyond what it holds once started and warmed up.
HEADROOM = 160 * 1024 * 1024


@pytest.fixture(scope="module")
def stack(gateway_env: dict[str, str], it_dir: Path) -> Iterator[dict]:
    broker = RedisDatabase()
    env = {**gateway_env, "RELAYPACS_BROKER_URL": broker.url, "RELAYPACS_REDIS_URL": broker.url,
           "RELAYPACS_BATCH_QUIET_SECONDS": "2"}
    api = ApiServer(env, it_dir / "logs" / "hostile-api.log").start()
    try:
        yield {"env": env, "api": api}
    finally:
        api.stop(grace=5)
        broker.release()


def _vm_size(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmSize for {pid}")


@pytest.fixture
def limited_worker(stack: dict, it_dir: Path) -> Iterator[Worker]:
    """``relaypacs worker -Q intake,dicom,pacs -c 1`` whose processes may each grow HEADROOM more;
    a pool process forked later inherits its parent's limit."""
    log = it_dir / "logs" / f"hostile-worker-{time.time_ns()}.log"
    worker = Worker("intake,dicom,pacs", 1, stack["env"], log, name="hostile-worker")
    worker.start()
    worker.wait_ready(worker.is_ready, 60)
    time.sleep(1.0)  # the pool process finishes its warm-up imports
    largest = max(_vm_size(pid) for pid in process_group_members(worker.pid))
    for pid in process_group_members(worker.pid):
        limit = largest + HEADROOM
        resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))
    try:
        yield worker
    finally:
        worker.stop(grace=5)


@pytest.fixture
def gateway(stack: dict, make_user) -> Gateway:
    return Gateway(stack["api"].url, make_user("Hostile Clinic", "uploader"))


def _file(gateway: Gateway, batch_id: int, upload_id: str) -> dict:
    return next(f for f in gateway.report(batch_id)["files"] if f["upload_id"] == upload_id)


def _wait_settled(gateway: Gateway, batch_id: int, upload_ids: list[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    files: dict = {}
    while time.monotonic() < deadline:
        files = {f["upload_id"]: f for f in gateway.report(batch_id)["files"]}
        if all(files[u]["state"] in ("parsed", "quarantined") for u in upload_ids):
            return files
        time.sleep(0.5)
    raise AssertionError(f"not settled after {timeout}s: "
                         f"{ {u: files.get(u, {}).get('state') for u in upload_ids} }")


def _send(gateway: Gateway, batch_id: int, data: bytes, name: str) -> str:
    location = gateway.upload(batch_id, data, name=name, chunk=4 * 1024 * 1024)
    return location.rstrip("/").rsplit("/", 1)[-1]


def _lost_workers(worker: Worker) -> int:
    """Attempts that ended their worker: a pool process lost, the worker itself ended by a
    task's MemoryError, or a task given back because it ran out of memory."""
    signs = ("WorkerLostError", "Unrecoverable error", "ran out of memory")
    return sum(any(sign in line for sign in signs) for line in worker.log_tail(100_000).splitlines())


def element_flood(elements: int = 1_000_000) -> bytes:
    """A CT followed by a million distinct empty private elements: 8 MB on the wire, about
    330 MB of Python objects once pydicom has read its header (no bound on the inflate or on
    the file's size catches it; only the worker's memory limit does)."""
    ds = _ct()
    flood = b"".join(struct.pack("<HH2sH", 0x0011 + 2 * (i // 0xE000), 0x1000 + i % 0xE000, b"LO", 0)
                     for i in range(elements))
    return _meta_bytes(ds, ExplicitVRLittleEndian) + _body_bytes(ds) + flood


def test_deflate_bomb_is_quarantined_and_the_worker_keeps_serving(gateway, limited_worker):
    good = synthetic_study(2)
    bomb = deflate_bomb(1024**3)  # ~1 MB that inflates to 1 GiB: far past the worker's limit
    assert len(bomb) < 2 * 1024 * 1024
    batch_id = gateway.open_batch(label="bomb")
    first = _send(gateway, batch_id, good[0], "good-1.dcm")
    bombed = _send(gateway, batch_id, bomb, "bomb.dcm")
    after = _send(gateway, batch_id, good[1], "good-2.dcm")
    gateway.complete(batch_id)

    files = _wait_settled(gateway, batch_id, [first, bombed, after], timeout=120)
    assert files[bombed]["state"] == "quarantined"
    assert files[bombed]["quarantine_reason"] == "inflate_limit"
    assert [files[u]["state"] for u in (first, after)] == ["parsed", "parsed"]
    assert _lost_workers(limited_worker) <= 2
    assert limited_worker.alive
    # The batch settles: nothing waits for the bomb.
    report = gateway.wait_state(batch_id, "done", timeout=60)
    assert report["state"] == "done"


def test_a_file_that_exhausts_the_worker_is_dead_lettered(gateway, limited_worker):
    flood = element_flood()
    batch_id = gateway.open_batch(label="flood")
    flooded = _send(gateway, batch_id, flood, "flood.dcm")
    files = _wait_settled(gateway, batch_id, [flooded], timeout=120)
    assert files[flooded]["state"] == "quarantined"
    assert files[flooded]["quarantine_reason"] == "worker_lost"
    assert "2 times" in files[flooded]["quarantine_detail"]
    assert _lost_workers(limited_worker) == 2
    # The same worker serves the next upload.
    assert limited_worker.alive
    next_batch = gateway.open_batch(label="after the flood")
    good = _send(gateway, next_batch, synthetic_study(1)[0], "good.dcm")
    assert _wait_settled(gateway, next_batch, [good], timeout=60)[good]["state"] == "parsed"


SAMPLE = broken_corpus()
# One of each kind of damage (the unit tests parse every one).
SAMPLE_NAMES = ("truncated_at_1024", "truncated_at_6144", "truncated_at_20480", "wrong_vr_unknown",
                "wrong_vr_uid_as_us", "undefined_length_never_ends", "huge_length_ob",
                "dicm_then_random", "deflated_not_deflate")


def test_broken_files_are_quarantined_and_the_batch_settles(gateway, limited_worker):
    batch_id = gateway.open_batch(label="broken")
    sent = {name: _send(gateway, batch_id, SAMPLE[name], f"{name}.dcm") for name in SAMPLE_NAMES}
    sent["deep_nesting"] = _send(gateway, batch_id, deep_nesting(3000), "deep.dcm")
    good = _send(gateway, batch_id, synthetic_study(1)[0], "good.dcm")
    gateway.complete(batch_id)
    files = _wait_settled(gateway, batch_id, [*sent.values(), good], timeout=120)
    for name, upload_id in sent.items():
        assert files[upload_id]["state"] == "quarantined", name
        assert files[upload_id]["quarantine_reason"], name
    assert files[sent["deep_nesting"]]["quarantine_reason"] == "too_deep"
    assert files[good]["state"] == "parsed"
    assert gateway.wait_state(batch_id, "done", timeout=60)["state"] == "done"
    assert _lost_workers(limited_worker) == 0


_READ_UNDER_HEADROOM = """
import io, resource, sys
from pipeline.dicom.headers import read_header
data = open(sys.argv[1], "rb").read()
vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
limit = vm + int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    read_header(io.BytesIO(data), len(data))
except MemoryError:
    sys.exit(3)
"""


@pytest.mark.parametrize(("content", "runs_out"), [("flood", True), ("plain CT", False)])
def test_element_flood_needs_more_than_the_headroom(tmp_path, content, runs_out):
    """The dead-letter test's premise, checked here: reading the flood's header needs more
    memory than a pool process may add (a process limited to HEADROOM beyond its size runs
    out), while an ordinary file reads within the same limit. (A child process under the
    limit: seconds, where tracemalloc's count of the same read took minutes.)"""
    path = tmp_path / "file.dcm"
    path.write_bytes(element_flood() if content == "flood" else synthetic_study(1)[0])
    done = subprocess.run([sys.executable, "-c", _READ_UNDER_HEADROOM, str(path), str(HEADROOM)],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == (3 if runs_out else 0), done.stderr[-2000:]
