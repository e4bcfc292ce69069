"""De-identification benchmark: the same 2,000 instances through the gateway's function
(``pipeline.teaching.deidentify.deidentify_file``, in-process, files to files: the full
Basic Profile with the teaching options and UIDs consistent across the run) and through
dicognito's command line (the fastest maintained anchor), in one run: instances per second
and the ratio. Both read and write every file; both run on one core.

dicognito comes from the benchmark's own environment, ``.bench-teaching/`` (``make
bench-teaching-deps``; tests/bench/requirements-teaching.txt): it is never installed into
.venv. Results: tests/bench/results/deid.json. ``RELAYPACS_BENCH_DEID_INSTANCES`` lowers the
count for a quick look (recorded in the results).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest

from pipeline.teaching.deidentify import DeidContext, deidentify_file
from pipeline.teaching.profile import DeidOptions

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[2]
# ``python -m dicognito``: the same command line; dicognito 0.19.0's console script calls
# main() without its argument list and fails before doing anything.
ANCHOR = ROOT / ".bench-teaching" / "bin" / "python"
INSTALL = "make bench-teaching-deps"
INSTANCES = int(os.environ.get("RELAYPACS_BENCH_DEID_INSTANCES", "2000"))
RESULTS_FILE = Path(__file__).parent / "results" / "deid.json"
SAMPLES = Path(pydicom.__file__).parent / "data" / "test_files"
# A mix of what a teaching file copies: CT and MR slices (explicit and implicit VR), an
# RLE RGB secondary capture and a JPEG one.
BASES = ("CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm")


def _write_inputs(folder: Path) -> list[Path]:
    bases = [pydicom.dcmread(SAMPLES / name) for name in BASES]
    paths = []
    studies = 20  # 100 instances a study, 10 patients: UIDs and shifts repeat as in real use
    for n in range(INSTANCES):
        ds = bases[n % len(bases)].copy()
        study = n % studies
        ds.PatientID = f"PAT-{study % 10}"
        ds.PatientName = f"Patient^Number{study % 10}"
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.{study}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.{study}.{n % len(bases)}"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{study}.{n % len(bases)}.{n}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.FrameOfReferenceUID = f"1.2.826.0.1.3680043.8.498.{study}.99"
        ref = pydicom.Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{study}.{n % len(bases)}.{max(n - 5, 0)}"
        ds.ReferencedImageSequence = pydicom.Sequence([ref])
        ds.StudyDate = "20240310"
        ds.BurnedInAnnotation = "NO"
        path = folder / f"in-{n:05d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def _gateway(paths: list[Path], out: Path) -> tuple[float, dict[str, str]]:
    ctx = DeidContext(secret=b"bench-secret-0123456789", facility_id=1, options=DeidOptions())
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            deidentify_file(path, out / path.name, ctx)
    return time.perf_counter() - start, ctx.uid_map


def _dicognito(folder: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [str(ANCHOR), "-m", "dicognito", "--quiet", "--seed", "bench", "--on-burned-in-annotation", "warn",
         "--output-directory", str(out), str(folder)],
        check=True, capture_output=True, timeout=3600,
    )
    return time.perf_counter() - start


def test_bench_deidentify_against_dicognito(tmp_path):
    if not ANCHOR.exists() or subprocess.run([str(ANCHOR), "-c", "import dicognito"]).returncode:
        pytest.fail(f"dicognito is not installed for the benchmark: run `{INSTALL}`")
    inputs = tmp_path / "in"
    inputs.mkdir()
    paths = _write_inputs(inputs)
    ours_out, anchor_out = tmp_path / "ours", tmp_path / "dicognito"
    ours_out.mkdir()
    anchor_out.mkdir()

    # Warm both (imports, the rule table), then measure each once, one after the other.
    warm = Path(tempfile.mkdtemp(dir=tmp_path))
    _gateway(paths[:20], warm)
    ours_s, uid_map = _gateway(paths, ours_out)
    anchor_s = _dicognito(inputs, anchor_out)

    # What the gateway wrote: every file, consistent UIDs (references resolve), no name left.
    written = sorted(ours_out.iterdir())
    assert len(written) == INSTANCES
    sample = [pydicom.dcmread(p) for p in written[:: max(1, INSTANCES // 50)]]
    for ds in sample:
        assert ds.PatientIdentityRemoved == "YES" and "Number" not in str(ds.PatientName)
        study = [k for k, v in uid_map.items() if v == ds.StudyInstanceUID][0].rsplit(".", 1)[1]
        assert ds.FrameOfReferenceUID == uid_map[f"1.2.826.0.1.3680043.8.498.{study}.99"]
        assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID in uid_map.values()
    assert len(list(anchor_out.rglob("*.dcm"))) == INSTANCES

    ours_ips, anchor_ips = INSTANCES / ours_s, INSTANCES / anchor_s
    ratio = ours_ips / anchor_ips
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "instances": INSTANCES,
        "gateway": {"seconds": round(ours_s, 2), "instances_per_s": round(ours_ips, 1),
                    "what": "pipeline.teaching.deidentify.deidentify_file in-process, Basic Profile + "
                            "Retain Modified Dates + Retain Patient Characteristics + Clean Descriptors, "
                            "HMAC UIDs consistent across the run"},
        "dicognito": {"seconds": round(anchor_s, 2), "instances_per_s": round(anchor_ips, 1),
                      "what": "dicognito 0.19.0 command line, one process, --output-directory"},
        "ratio_gateway_over_dicognito": round(ratio, 2),
        "command": "make bench-teaching",
    }
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    assert ratio >= 1.0, f"gateway {ours_ips:.0f}/s vs dicognito {anchor_ips:.0f}/s"
