"""Modules that the workers name as strings (Celery's imports, the warm-up list) exist and
import: a module moved without updating its string would otherwise fail only in a worker."""

from __future__ import annotations

import importlib
import importlib.util
import re

import pytest

from workers.app import TASK_MODULES, app
from workers.runtime import WARM_UP_MODULES


@pytest.mark.parametrize("module", sorted({*TASK_MODULES, *app.conf.imports, *WARM_UP_MODULES}))
def test_named_module_imports(module):
    importlib.import_module(module)


def test_every_scheduled_and_chained_task_is_registered():
    """Beat and workers.chains send tasks by name: each name must be a registered task."""
    from beat_schedule import BEAT_SCHEDULE
    from workers import chains

    importlib.import_module("workers.app").load_tasks()
    source = importlib.util.find_spec(chains.__name__).loader.get_source(chains.__name__)
    chained = set(re.findall(r'_task\("([\w.]+)"', source))
    scheduled = {entry["task"] for entry in BEAT_SCHEDULE.values()}
    assert chained and scheduled
    missing = sorted(name for name in chained | scheduled if name not in app.tasks)
    assert not missing, missing
