"""Defaults for the pytest process itself, set before any test module is imported, and the
split of the tests between pytest-xdist's workers (``--by-folder``).

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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--by-folder", action="store_true",
                     help="with pytest-xdist (-n 2): one worker per top folder of tests/ (make test)")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown when it is not installed
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN001, ANN201 - xdist's types
    """``make test`` runs ``-n 2 --by-folder``: each top folder of tests/ is one unit of work,
    so one worker runs every integration test in order on the session's shared servers and
    the other runs the unit tests beside it. (xdist's own ``--dist loadgroup`` would do this
    from marks, but on pytest 9.2 it silently stops grouping: pytest-xdist issue 1386.)"""
    if not config.getoption("by_folder"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByFolder(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            parts = nodeid.split("/")
            return parts[1] if parts[0] == "tests" and len(parts) > 2 else nodeid

    return ByFolder(config, log)
