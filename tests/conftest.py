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
    """``make test`` runs ``-n 2 --by-folder``: all the tests of one top folder of tests/ go to
    one worker, so one worker runs every integration test in order on the session's shared
    servers and the other runs the unit tests beside it.

    By test index, not by test id: schemathesis' fuzz tests are 88 items under one id each,
    and xdist's scope schedulers, which key their work by id, ran one of them (a run on
    25308ed passed 1400 of 1661). xdist's ``--dist loadgroup`` would not group anyway: on
    pytest 9.2 it silently stops (pytest-xdist issue 1386)."""
    if not config.getoption("by_folder"):
        return None
    from xdist.scheduler import LoadScheduling

    class ByFolder(LoadScheduling):
        def schedule(self) -> None:
            if self.collection is not None or not self._check_nodes_have_same_collection():
                super().schedule()  # a replaced worker, or xdist's refusal of unlike collections
                return
            self.collection = next(iter(self.node2collection.values()))
            folders: dict[str, list[int]] = {}
            for index, nodeid in enumerate(self.collection):
                parts = nodeid.split("/")
                folders.setdefault(parts[1] if len(parts) > 2 else "", []).append(index)
            nodes = self.nodes
            for number, indices in enumerate(folders.values()):
                node = nodes[number % len(nodes)]
                self.node2pending[node].extend(indices)
                node.send_runtest_some(indices)
            for node in nodes:  # each runs what it was sent, then stops
                node.shutdown()

    return ByFolder(config, log)
