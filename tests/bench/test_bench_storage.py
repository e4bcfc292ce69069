"""Storage lifecycle: what the tiering policy saves over two years of a 50-facility workload,
and how fast the nightly tiering job moves objects.

1. Saving (``test_two_year_saving``). Two years of studies from 50 facilities are simulated
   day by day on PostgreSQL, twice on the same workload: under the shipped default policy
   (STANDARD 30 d, GLACIER_IR to 365 d, DEEP_ARCHIVE) and under the issue's literal one
   (STANDARD 90 d). Each night the production job (``pipeline.lifecycle.tiering.run``, the code the
   ``storage.run_lifecycle`` task runs) catalogues the day's instances, bundles small ones,
   moves what is due, and on the last night of year one and two the production report
   (``pipeline.lifecycle.cost_report.build``, the code behind ``GET /api/v1/storage/report``) prices
   the result, storage plus the month's transition requests and modelled cold reads, against
   keeping everything in STANDARD. The objects live in the embedded folder
   store (sparse files: a 500 MB mammogram costs no disk), because moto_server keeps bodies in
   memory and two years of images do not fit. Bundles are real tars, written and verified by
   the production code: small objects are real bytes, larger ones sparse files with their real
   sha256 (of zeros), which stay sparse inside the tar (zero blocks are written as holes).
   The volume is a sample (``BENCH_STORAGE_STUDIES_PER_DAY`` across all facilities, default 6):
   the saving is a ratio and does not depend on it; USD figures are also given scaled to
   ``BENCH_STORAGE_REAL_STUDIES_PER_DAY`` (default 1000: 20 per facility per day).

   Study mix (shares of studies, images per study, image sizes) is modelled on uncompressed
   acquisition matrices: CR/DX 2-3 k x 2.5-3 k x 16 bit, CT 512 x 512 x 16 bit slices, MR
   192-512 matrices, US frames (JPEG, many under 128 KB) and cine clips, MG 20-50 MB views, and
   0-2 small non-image objects (SR/KO/PR) per study sized like pydicom's own SR and RT files.

2. Throughput (``test_tiering_throughput``). 100,000 objects (2 KiB bodies: a copy is done by
   the server, request count dominates) plus 10,000 small instances in 200 studies are put in
   moto_server; one real ``relaypacs worker -Q storage`` runs ``storage.run_lifecycle`` over
   them with the clock 100 days on (everything due for GLACIER_IR). Objects/s is from the run's
   own phase timings; the bare S3 calls (copy + delete of the old version, same thread count)
   are timed beside it as the ceiling moto_server allows on this machine.

Results: tests/bench/results/storage.json. Knobs: BENCH_STORAGE_OBJECTS (100000),
BENCH_STORAGE_DAYS (730), BENCH_STORAGE_ARMS (both; one per process uses both cores:
``BENCH_STORAGE_ARMS=shipped_default`` and ``=issue_90_365`` side by side, same workload).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from celery import Celery
from sqlalchemy import case, func, insert, select
from sqlalchemy.orm import Session

from pipeline.dicom.samples import PYDICOM_FILES
from pipeline.intake.uploads import original_key
from pipeline.lifecycle import cost_report as storage_report
from pipeline.lifecycle import policy as lifecycle
from pipeline.lifecycle import tiering
from pipeline.lifecycle.policy import DEFAULT_PRICES, TierPolicy
from pipeline.models import (
    Batch,
    Instance,
    Series,
    StorageRun,
    StoredObject,
    Study,
    Upload,
    utcnow,
)
from pipeline.storage import FolderStore, S3Store
from tests.bench.conftest import RESULTS_DIR, _git_commit
from tests.integration.services import WorkerFleet, wait_until
from tests.storage_seed import boto_client, db_fixture, facility_user  # noqa: F401 - db_fixture: db

pytestmark = [pytest.mark.bench, pytest.mark.integration]

RESULTS_FILE = RESULTS_DIR / "storage.json"
KIB, MIB = 1024, 1024 * 1024
T0 = datetime(2024, 1, 1, 6, tzinfo=UTC)
FACILITIES = 50


# ----------------------------------------------------------------------------- the workload


def _small_object_sizes() -> list[int]:
    """Sizes of pydicom's own non-image objects (SR, RT plan/struct): what small files weigh."""
    names = ("test-SR.dcm", "reportsi.dcm", "rtplan.dcm", "rtstruct.dcm")
    paths = [PYDICOM_FILES / n for n in names if (PYDICOM_FILES / n).is_file()]
    sizes = [p.stat().st_size for p in paths if p.stat().st_size < 128 * KIB]
    return sizes or [3 * KIB, 7 * KIB]


@dataclass(frozen=True)
class Modality:
    name: str
    share: float  # of studies
    images: tuple[int, int]  # per study, uniform
    sizes: tuple[tuple[float, int], ...]  # (probability, bytes) per image; a size jitters +-10%


MIX = (
    Modality("CR", 0.28, (1, 3), ((1.0, 2500 * 3000 * 2),)),
    Modality("DX", 0.14, (1, 4), ((1.0, 3000 * 3000 * 2),)),
    # US: JPEG frames, many under 128 KB, and some multi-frame cine clips.
    Modality("US", 0.20, (10, 40), ((0.55, 90 * KIB), (0.35, 300 * KIB), (0.10, 12 * MIB))),
    Modality("CT", 0.12, (150, 600), ((1.0, 512 * 512 * 2 + 2 * KIB),)),
    Modality("MR", 0.08, (100, 400), ((0.2, 192 * 192 * 2 + 2 * KIB), (0.5, 256 * 256 * 2 + 2 * KIB),
                                      (0.3, 512 * 512 * 2 + 2 * KIB))),
    Modality("MG", 0.10, (4, 8), ((1.0, 3328 * 4096 * 2),)),
    Modality("XA", 0.08, (5, 30), ((1.0, 1024 * 1024 * 2),)),
)


def study_sizes(rng: np.random.Generator, small: list[int]) -> tuple[str, list[int]]:
    modality = MIX[rng.choice(len(MIX), p=[m.share for m in MIX])]
    count = int(rng.integers(modality.images[0], modality.images[1] + 1))
    probabilities = [p for p, _ in modality.sizes]
    picks = rng.choice(len(modality.sizes), size=count, p=probabilities)
    sizes = [int(modality.sizes[i][1] * rng.uniform(0.9, 1.1)) for i in picks]
    sizes += [int(rng.choice(small)) for _ in range(int(rng.integers(0, 3)))]
    return modality.name, sizes


# ----------------------------------------------------------------------------- fast seeding


StudyPlan = tuple[int, int, str, list[int]]  # facility, user, modality, instance sizes


def zero_digests(sizes: list[int]) -> dict[int, str]:
    """sha256 of ``size`` zero bytes for each size: a sparse file's real digest, so bundling
    (which re-hashes every member) accepts it. One pass of zeros up to the largest size, the
    hash state copied at each size."""
    digests: dict[int, str] = {}
    state = hashlib.sha256()
    fed = 0
    for size in sorted(set(sizes)):
        while fed < size:
            step = min(size - fed, 1024 * 1024)
            state.update(bytes(step))
            fed += step
        digests[size] = state.copy().hexdigest()
    return digests


def seed_studies(session: Session, root: Path | None, day: datetime, plans: list[StudyPlan],
                 rng: np.random.Generator) -> list[tuple[str, int, str]]:
    """Insert studies (facility, user, modality, sizes) uploaded on ``day``, set-wise. With
    ``root``, write each object under it: small ones real bytes, large ones sparse files.
    Returns (key, size, sha256) of every object."""
    batches = session.scalars(insert(Batch).returning(Batch.id, sort_by_parameter_order=True), [
        {"facility_id": f, "user_id": u, "state": "done", "created_at": day, "last_activity_at": day}
        for f, u, _, _ in plans]).all()
    studies = session.scalars(insert(Study).returning(Study.id, sort_by_parameter_order=True), [
        {"facility_id": f, "study_instance_uid": f"2.25.{secrets.randbits(100)}", "modality": m,
         "created_at": day} for f, _, m, _ in plans]).all()
    series = session.scalars(insert(Series).returning(Series.id, sort_by_parameter_order=True), [
        {"study_id": s, "series_instance_uid": f"2.25.{secrets.randbits(100)}"} for s in studies]).all()
    uploads, instances, objects = [], [], []
    sparse = zero_digests([n for *_, sizes in plans for n in sizes if n >= 128 * KIB]) if root else {}
    rows = zip(plans, batches, studies, series, strict=True)
    for (facility_id, user_id, _, sizes), batch_id, study_id, series_id in rows:
        for size in sizes:
            upload = Upload(id=secrets.token_hex(16), created_at=day)
            key = original_key(upload)
            if root is not None and size < 128 * KIB:
                data = rng.bytes(size)
                digest = hashlib.sha256(data).hexdigest()
                path = root / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            else:
                digest = sparse.get(size) or secrets.token_hex(32)
                if root is not None:
                    path = root / key
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "wb") as fh:
                        fh.truncate(size)  # sparse: the size without the disk
            uploads.append({"id": upload.id, "batch_id": batch_id, "facility_id": facility_id,
                            "user_id": user_id, "filename": "i.dcm", "length": size, "offset": size,
                            "state": "parsed", "sha256": digest, "object_key": key, "created_at": day,
                            "updated_at": day, "expires_at": day + timedelta(days=1)})
            instances.append({"facility_id": facility_id, "series_id": series_id, "study_id": study_id,
                              "sop_instance_uid": f"2.25.{secrets.randbits(100)}",
                              "sop_class_uid": "1.2.840.10008.5.1.4.1.1.7", "object_key": key, "size": size,
                              "sha256": digest, "batch_id": batch_id, "upload_id": upload.id,
                              "created_at": day})
            objects.append((key, size, digest))
    for start in range(0, len(uploads), 5000):
        session.execute(insert(Upload), uploads[start:start + 5000])
        session.execute(insert(Instance), instances[start:start + 5000])
    return objects


def write_results(key: str, figures: dict) -> None:
    """Merge one test's figures into storage.json (the other test's stay). Arms of the
    two-year simulation run by another process on the same workload (``BENCH_STORAGE_ARMS``)
    stay too; a lock makes the read-merge-write safe between such processes."""
    RESULTS_DIR.mkdir(exist_ok=True)
    with open(RESULTS_DIR / ".storage.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        document = json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.exists() else {}
        previous = document.get(key, {})
        workload = ("days", "sample_studies_per_day")
        if "arms" in figures and all(previous.get(k) == figures[k] for k in workload):
            figures["arms"] = {**previous.get("arms", {}), **figures["arms"]}
        document[key] = {
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "git_commit": _git_commit(),
            # Other work on the machine slows moto_server and the worker: say how busy it was.
            "host": {"cpus": os.cpu_count(), "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
            **figures,
        }
        RESULTS_FILE.write_text(json.dumps(document, indent=2) + "\n")
    print(f"  results written to {RESULTS_FILE} ({key})")


# ----------------------------------------------------------------------------- 1. the saving


# The shipped default and the issue's literal policy, simulated side by side on one workload.
ARMS = {"shipped_default": lifecycle.DEFAULT_TIERS, "issue_90_365": lifecycle.ISSUE_TIERS}
# Cold-read rates (share of IA/GLACIER_IR bytes read back per month) the saving is also shown at.
READ_RATES = (0.0, 0.02, 0.05, 0.10)


def _snapshot(session: Session, facility_ids: tuple[int, ...], night: datetime, scale: float) -> dict:
    """The production report at the night's clock, at the default read rate and the others."""
    report = storage_report.build(session, DEFAULT_PRICES, facility_ids=facility_ids, now=night)
    figures = report.as_dict()
    by_rate = {}
    for rate in READ_RATES:
        other = storage_report.build(session, DEFAULT_PRICES, facility_ids=facility_ids, now=night,
                                     cold_reads_per_month=rate)
        by_rate[f"{rate:.2f}"] = round(other.saving, 4)
    return {
        "saving_fraction": figures["saving_fraction"],
        "storage_only_saving_fraction": figures["storage_saving_fraction"],
        "saving_by_cold_read_rate": by_rate,
        "monthly_cost_usd_sample": figures["monthly_cost"],
        "all_standard_usd_sample": figures["all_standard_monthly_cost"],
        "storage_usd_sample": figures["total"]["monthly_cost"],
        "fees_usd_sample": figures["fees"],
        "monthly_cost_usd_scaled": round(figures["monthly_cost"] * scale, 2),
        "all_standard_usd_scaled": round(figures["all_standard_monthly_cost"] * scale, 2),
        "by_class": figures["by_class"],
        "bundles": figures["bundles"],
        "bundled_instances": figures["bundled_instances"],
        "instances": figures["instances"],
        "facilities_reported": len(figures["by_facility"]),
    }


def test_two_year_saving(gateway_env, db, tmp_path_factory):
    days = int(os.environ.get("BENCH_STORAGE_DAYS", "730"))
    per_day = float(os.environ.get("BENCH_STORAGE_STUDIES_PER_DAY", "6"))
    real_per_day = float(os.environ.get("BENCH_STORAGE_REAL_STUDIES_PER_DAY", "1000"))
    scale = real_per_day / per_day
    rng = np.random.default_rng(20240101)
    small = _small_object_sizes()
    tag = secrets.token_hex(3)
    arms: dict[str, dict] = {}
    # BENCH_STORAGE_ARMS runs some arms only (two processes, one arm each, use both cores; the
    # workload is the same in each, since every process draws the same random numbers).
    chosen = os.environ.get("BENCH_STORAGE_ARMS", ",".join(ARMS)).split(",")
    first = chosen[0]
    for name, tiers in ((n, ARMS[n]) for n in chosen):
        with db() as session:
            people = [facility_user(session, f"Bench Facility {n:02d} {name} {tag}")
                      for n in range(FACILITIES)]
            session.commit()
        facility_ids = tuple(f for f, _ in people)
        options = tiering.TieringOptions(policy=TierPolicy.of(tiers), facility_ids=facility_ids,
                                         spool_dir=tmp_path_factory.mktemp("spool"), concurrency=4)
        store = FolderStore(tmp_path_factory.mktemp(f"storage-sim-{name}") / "objects")
        arms[name] = {"people": people, "facility_ids": facility_ids, "options": options, "store": store,
                      "snapshots": {}, "monthly": [], "job_seconds": 0.0}
    # Facility sizes differ a lot: a lognormal share of the volume each.
    weights = rng.lognormal(0.0, 0.8, FACILITIES)
    weights /= weights.sum()
    totals = {"studies": 0, "instances": 0, "bytes": 0, "seed_seconds": 0.0}
    modality_count: dict[str, int] = {}
    for day in range(days):
        start_of_day = T0 + timedelta(days=day)
        # One day's studies, the same in every arm.
        plans = []
        for _ in range(int(rng.poisson(per_day))):
            facility = int(rng.choice(FACILITIES, p=weights))
            modality, sizes = study_sizes(rng, small)
            modality_count[modality] = modality_count.get(modality, 0) + 1
            plans.append((facility, modality, sizes))
        night = start_of_day + timedelta(hours=20)
        for name, arm in arms.items():
            t = time.perf_counter()
            with db() as session:
                if plans:
                    people = arm["people"]
                    own = [(people[f][0], people[f][1], m, sizes) for f, m, sizes in plans]
                    objects = seed_studies(session, arm["store"].root, start_of_day, own, rng)
                    if name == first:
                        totals["instances"] += len(objects)
                        totals["bytes"] += sum(size for _, size, _ in objects)
                        totals["studies"] += len(plans)
                session.commit()
            totals["seed_seconds"] += time.perf_counter() - t
            t = time.perf_counter()
            with db() as session:
                tiering.run(session, arm["store"], arm["options"], night, checkpoint=session.commit)
                session.commit()
            arm["job_seconds"] += time.perf_counter() - t
            if (day + 1) % 30 == 0 or day + 1 in (365, 730) or day + 1 == days:
                with db() as session:
                    report = storage_report.build(session, DEFAULT_PRICES, facility_ids=arm["facility_ids"],
                                                  now=night)
                    arm["monthly"].append({"day": day + 1, "monthly_cost": round(report.monthly_cost, 6),
                                           "fees": round(report.fees.total, 6),
                                           "all_standard": round(report.baseline_cost, 6),
                                           "saving_fraction": round(report.saving, 4)})
                    if day + 1 in (365, 730):
                        snap = _snapshot(session, arm["facility_ids"], night, scale)
                        arm["snapshots"][f"after_{(day + 1) // 365}_year"] = snap
                        print(f"  {name} day {day + 1}: saving {snap['saving_fraction']:.1%} "
                              f"(storage only {snap['storage_only_saving_fraction']:.1%}; "
                              f"{snap['monthly_cost_usd_sample']:.2f} vs "
                              f"{snap['all_standard_usd_sample']:.2f} USD/month in the sample)")
    with db() as session:
        ids = arms[first]["facility_ids"]
        count, below = session.execute(select(func.count(), func.sum(case((StoredObject.size < 128 * KIB, 1),
                                                                          else_=0)))
                                       .where(StoredObject.facility_id.in_(ids),
                                              StoredObject.kind == "instance")).one()
        small_share = round((below or 0) / max(count, 1), 4)
    print("  policy                          1 year    2 years   (saving, fees in, 2% cold reads/month)")
    for name, arm in arms.items():
        got = [arm["snapshots"].get(k, {}).get("saving_fraction") for k in ("after_1_year", "after_2_year")]
        print(f"  {name:<16} {TierPolicy.of(ARMS[name]).describe():<60} "
              + "  ".join("-" if g is None else f"{g:.1%}" for g in got))
    write_results("two_year_saving", {
        "command": ".venv/bin/python -m pytest -q -m bench tests/bench/test_bench_storage.py -s",
        "policies": {name: TierPolicy.of(tiers).describe() for name, tiers in ARMS.items()},
        "bundle_below_bytes": arms[first]["options"].bundle_below,
        "bundle_max_bytes": arms[first]["options"].bundle_max_bytes,
        "prices_usd_per_gb_month": DEFAULT_PRICES,
        "request_prices_usd_per_1000": {"write": lifecycle.WRITE_REQUEST_PRICES,
                                        "get": lifecycle.GET_REQUEST_PRICES},
        "retrieval_usd_per_gb": lifecycle.RETRIEVAL_PRICES,
        "cold_reads_per_month": lifecycle.DEFAULT_COLD_READS_PER_MONTH,
        "facilities": FACILITIES,
        "days": days,
        "sample_studies_per_day": per_day,
        "scaled_to_studies_per_day": real_per_day,
        "studies": totals["studies"],
        "instances": totals["instances"],
        "stored_bytes": totals["bytes"],
        "instances_under_128_kib": small_share,
        "studies_by_modality": modality_count,
        "seed_seconds_total": round(totals["seed_seconds"], 1),
        "arms": {  # write_results keeps another process's arms (BENCH_STORAGE_ARMS)
            **{name: {
                "policy": TierPolicy.of(ARMS[name]).describe(),
                "git_commit": _git_commit(),
                "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
                "nightly_job_seconds_total": round(arm["job_seconds"], 1),
                "nightly_job_seconds_mean": round(arm["job_seconds"] / days, 3),
                **arm["snapshots"],
                "monthly": arm["monthly"],
            } for name, arm in arms.items()},
        },
        "note": "saving_fraction = 1 - monthly bill / all-STANDARD monthly bill, both from "
                "pipeline.lifecycle.cost_report over the catalogue the production job left, at the night's "
                "clock: storage plus the 30 days' transition requests and modelled cold reads (2% of "
                "IA/GLACIER_IR bytes a month: retrieval per GB + GET requests); no restores happen in "
                "the simulation; saving_by_cold_read_rate shows the same report at other read rates",
    })
    for arm in arms.values():
        snapshots = arm["snapshots"]
        if "after_2_year" in snapshots:  # a shorter run (BENCH_STORAGE_DAYS) only smoke-tests
            assert snapshots["after_1_year"]["saving_fraction"] > 0.4
            assert snapshots["after_2_year"]["saving_fraction"] > snapshots["after_1_year"]["saving_fraction"]
            by_rate = snapshots["after_1_year"]["saving_by_cold_read_rate"]
            assert by_rate["0.00"] >= by_rate["0.02"] >= by_rate["0.05"] >= by_rate["0.10"]


# ----------------------------------------------------------------------------- 2. throughput


def _put_all(client, bucket: str, objects: list[tuple[str, int, str]], body: bytes,  # noqa: ANN001
             threads: int = 16) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda o: client.put_object(Bucket=bucket, Key=o[0], Body=body), objects))
    return time.perf_counter() - start


def test_tiering_throughput(gateway_env, db, s3, redis_url, it_dir):
    total = int(os.environ.get("BENCH_STORAGE_OBJECTS", "100000"))
    small_studies, small_per_study, small_size = 200, 50, 1 * KIB
    body = b"\0" * (2 * KIB)
    rng = np.random.default_rng(7)
    client = boto_client(s3, pool=64)
    store = S3Store(s3.bucket, client=client)
    store.ensure_bucket()
    store.enable_versioning()
    with db() as session:
        facility_id, user_id = facility_user(session, f"Bench Throughput {secrets.token_hex(3)}")
        session.commit()
    # Rows for the objects: large ones (over the bundle threshold of this run) and small ones.
    t = time.perf_counter()
    objects: list[tuple[str, int, str]] = []
    with db() as session:
        per_study = 500
        for start in range(0, total, per_study * 20):
            plans = [(facility_id, user_id, "CT", [len(body)] * per_study)
                     for _ in range(min(20, (total - start) // per_study))]
            objects += seed_studies(session, None, T0, plans, rng)
            session.commit()
        small_plans = [(facility_id, user_id, "SR", [small_size] * small_per_study)
                       for _ in range(small_studies)]
        small_objects = seed_studies(session, None, T0, small_plans, rng)
        session.commit()
    seed_rows = time.perf_counter() - t
    put_seconds = _put_all(client, s3.bucket, objects, body)
    # Small ones need their real hashes: bundling checks every member.
    small_body = rng.bytes(small_size)
    digest = hashlib.sha256(small_body).hexdigest()
    with db() as session:
        session.execute(Instance.__table__.update().where(
            Instance.object_key.in_([k for k, _, _ in small_objects])).values(sha256=digest))
        session.commit()
    put_seconds += _put_all(client, s3.bucket, small_objects, small_body)
    print(f"  seeded {len(objects)} + {len(small_objects)} objects: rows {seed_rows:.0f} s, "
          f"puts {put_seconds:.0f} s")

    # The ceiling: the same S3 calls alone, on objects of their own.
    ceiling_objects = [(f"bench-ceiling/{i:06d}", len(body), "") for i in range(2000)]
    _put_all(client, s3.bucket, ceiling_objects, body)
    start = time.perf_counter()

    def move(key: str) -> None:
        result = store.copy_to_class(key, "GLACIER_IR", len(body))
        if result.previous_version_id:
            store.delete_version(key, result.previous_version_id)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(move, [k for k, _, _ in ceiling_objects]))
    ceiling = len(ceiling_objects) / (time.perf_counter() - start)

    # Objects of the body's size are moved alone; the 1 KiB ones are bundled.
    env = {**gateway_env, "RELAYPACS_STORAGE_BUNDLE_BELOW_BYTES": str(len(body)),
           "RELAYPACS_STORAGE_TIER_CONCURRENCY": "8"}
    fleet = WorkerFleet(env, it_dir / "logs" / "bench-storage")
    celery = Celery("bench-storage", broker=redis_url, set_as_current=False)
    try:
        worker = fleet.start("storage", 1)
        with db() as session:
            after = session.scalar(select(func.max(StorageRun.id))) or 0
        sent = time.perf_counter()
        now = (T0 + timedelta(days=100)).isoformat()
        celery.send_task("storage.run_lifecycle", queue="storage",
                         kwargs={"now": now, "facility_ids": [facility_id]})
        found: list[StorageRun] = []

        def finished() -> bool:
            with db() as session:
                run = session.scalar(select(StorageRun).where(
                    StorageRun.id > after, StorageRun.job == "lifecycle",
                    StorageRun.state.in_(["done", "failed"])))
            if run is not None:
                found.append(run)
            return run is not None

        wait_until(finished, "tiering run", timeout=4 * 3600, interval=2.0, alive=worker.exit_error)
        wall = time.perf_counter() - sent
    finally:
        fleet.stop_all()
        celery.close()
    run = found[-1]
    assert run.state == "done", run.error
    counts, seconds = run.counts, run.counts["seconds"]
    run_seconds = (run.finished_at - run.started_at).total_seconds()
    def rate(count: str, phase: str) -> float:
        return round(counts.get(count, 0) / max(seconds.get(phase, 0), 1e-9), 1)

    figures = {
        "command": ".venv/bin/python -m pytest -q -m bench tests/bench/test_bench_storage.py -s",
        "objects_moved": counts.get("moved", 0),
        "instances_bundled": counts.get("bundled_instances", 0),
        "bundles": counts.get("bundles", 0),
        "phase_seconds": seconds,
        "moves_per_second": rate("moved", "moves"),
        "bundled_instances_per_second": rate("bundled_instances", "bundles"),
        "catalogued_per_second": rate("catalogued", "catalogue"),
        "run_seconds": round(run_seconds, 1),
        "objects_per_second_whole_run": round((counts.get("moved", 0) + counts.get("bundled_instances", 0))
                                              / run_seconds, 1),
        "send_to_done_seconds": round(wall, 1),
        "s3_calls_only_ceiling_per_second": round(ceiling, 1),
        "tier_concurrency": 8,
        "body_bytes": len(body),
        "seed": {"rows_seconds": round(seed_rows, 1), "puts_seconds": round(put_seconds, 1),
                 "puts_per_second": round((len(objects) + len(small_objects)) / put_seconds, 1)},
        "when": utcnow().isoformat(),
    }
    write_results("tiering_throughput", figures)
    print(f"  {figures['objects_moved']} moved at {figures['moves_per_second']}/s "
          f"(S3 calls alone: {figures['s3_calls_only_ceiling_per_second']}/s); "
          f"{figures['instances_bundled']} bundled at {figures['bundled_instances_per_second']}/s")
    assert counts.get("moved") == len(objects)
    assert counts.get("bundled_instances") == len(small_objects)
