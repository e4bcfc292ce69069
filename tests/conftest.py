"""Defaults for the pytest process itself, set before any test module is imported, and the
split of the tests between pytest-xdist's workers.

``workers.app`` configures its Celery app from the environment when first imported, and
bench or integration modules may import it before ``tests/unit`` is collected. Without
these defaults that app would point at the embedded broker under a relative ``./var`` that
a fresh clone does not have, and an API route enqueueing in-process would fail. Servers the
tests start (workers, APIs) get their own explicit environment and are not affected.
"""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("RELAYPACS_BROKER_URL", "memory://")
os.environ.setdefault("RELAYPACS_VAR_DIR", tempfile.mkdtemp(prefix="relaypacs-tests-"))


# First, before xdist's own hook reads the groups into the test ids.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test``: ``-n 2 --dist loadgroup``) each top folder of tests/
    is one group, so one worker runs every integration test in order on the session's shared
    servers and the other runs the unit tests beside it. Without xdist nothing changes."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        folder = item.nodeid.split("/")[1] if item.nodeid.startswith("tests/") else "tests"
        item.add_marker(pytest.mark.xdist_group(folder))
