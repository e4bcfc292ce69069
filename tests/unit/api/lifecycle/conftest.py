"""Fixtures of the storage lifecycle tests: a folder store and a clinic (tests/unit/lifecycle/helpers.py)."""

from __future__ import annotations

import pytest

from tests.unit.lifecycle.helpers import folder_store, make_clinic


@pytest.fixture
def store(tmp_path):
    return folder_store(tmp_path)


@pytest.fixture
def clinic(session):
    return make_clinic(session)
