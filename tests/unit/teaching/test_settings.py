"""The teaching file's settings: the UID root and the safe private list are checked when
read, so a typo fails at start-up instead of writing bad UIDs or keeping private data."""

from __future__ import annotations

import pytest

from config import load_settings


def test_uid_root_and_safe_private_list():
    settings = load_settings({"RELAYPACS_TEACHING_SAFE_PRIVATE": "GEMS_ACQU_01|10; SAFE CO|2b",
                              "RELAYPACS_TEACHING_UID_ROOT": "1.2.826.0.1.3680043.10.99."})
    assert settings.teaching_safe_private == (("GEMS_ACQU_01", 0x10), ("SAFE CO", 0x2B))
    assert settings.teaching_uid_root == "1.2.826.0.1.3680043.10.99"
    assert load_settings({}).teaching_safe_private == () and load_settings({}).teaching_uid_root == "2.25"
    for bad in ("SAFE CO", "SAFE CO|1FF", "|10"):
        with pytest.raises(ValueError, match="RELAYPACS_TEACHING_SAFE_PRIVATE"):
            load_settings({"RELAYPACS_TEACHING_SAFE_PRIVATE": bad})
    for bad in ("1.02.3", "2.25.x", "1." + "2" * 60):
        with pytest.raises(ValueError, match="RELAYPACS_TEACHING_UID_ROOT"):
            load_settings({"RELAYPACS_TEACHING_UID_ROOT": bad})
