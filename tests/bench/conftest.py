"""Benchmarks run on the same real services as the integration tests (loopback only).

The integration fixtures are imported here, not redefined: PostgreSQL, Redis, Orthanc,
moto_server, the gunicorn API and Celery workers start exactly as in ``tests/integration``.
Results of every benchmark of the session go to ``tests/bench/results/latest.json``, a scratch
file git ignores; each benchmark keeps its reported run in its own json beside it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import *  # noqa: F403 - the fixtures, by name
from tests.integration.conftest import (  # noqa: F401 - underscored names * skips
    _stop_leftover_processes,
    pytest_runtest_makereport,
)

RESULTS_DIR = Path(__file__).parent / "results"
RESULTS_FILE = RESULTS_DIR / "latest.json"


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


@pytest.fixture(scope="session")
def bench_results() -> Iterator[dict]:
    """A dict each benchmark fills under its own key; written as JSON at the session's end."""
    results: dict = {}
    yield results
    if not results:
        return
    RESULTS_DIR.mkdir(exist_ok=True)
    document = {
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, "-m", "pytest", *sys.argv[1:]]),
        "git_commit": _git_commit(),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        **results,
    }
    RESULTS_FILE.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    print(f"\nbench results written to {RESULTS_FILE}")
