"""``make test``'s split of the suite between two pytest-xdist workers (``--by-folder``, in
tests/conftest.py), run on a small suite of its own: each top folder's tests all on one
worker, and every item run, items that share one test id included (schemathesis makes 88
under one id; a scheduler keyed by id once ran 1400 of 1661)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RECORDING_TEST = '''
import os


def record(name):
    with open(os.environ["SPLIT_LOG"], "a") as log:
        log.write(f"{os.environ.get('PYTEST_XDIST_WORKER', '-')} {name}\\n")
'''


def test_each_folder_runs_whole_on_one_worker_and_no_item_is_left_out(tmp_path):
    suite = tmp_path / "tests"
    (suite / "unit").mkdir(parents=True)
    (suite / "integration").mkdir()
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (suite / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    for folder in ("unit", "integration"):
        (suite / folder / "recording.py").write_text(RECORDING_TEST)
        (suite / folder / f"test_{folder}.py").write_text(
            "import pytest\nfrom recording import record\n\n\n"
            f"@pytest.mark.parametrize('n', range(6))\ndef test_{folder}(n):\n"
            f"    record('{folder}-' + str(n))\n")
    # Two items under one id, as schemathesis' fuzz tests make them.
    with (suite / "integration" / "test_integration.py").open("a") as module:
        module.write("\n\ndef test_twice():\n    record('twice')\n")
    (suite / "integration" / "conftest.py").write_text(
        "import pytest\n\n\ndef pytest_collection_modifyitems(items):\n"
        "    for item in [i for i in items if i.name == 'test_twice']:\n"
        "        items.append(pytest.Function.from_parent(item.parent, name=item.name))\n")
    log = tmp_path / "split.log"
    # Run from a worker of make test's own xdist run, this pytest must not look like one.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--by-folder",
         "--rootdir", str(tmp_path), str(suite)],
        cwd=tmp_path, env={**env, "SPLIT_LOG": str(log), "PYTHONPATH": ""},
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = [line.split() for line in log.read_text().splitlines()]
    names = Counter(name for _, name in runs)
    assert names == Counter({**{f"{folder}-{n}": 1 for folder in ("unit", "integration") for n in range(6)},
                             "twice": 2})
    workers = {folder: {worker for worker, name in runs if name.startswith(folder)}
               for folder in ("unit", "integration")}
    workers["integration"] |= {worker for worker, name in runs if name == "twice"}
    assert len(workers["unit"]) == len(workers["integration"]) == 1
    assert workers["unit"] != workers["integration"]
