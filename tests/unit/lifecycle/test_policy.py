"""The tiering policy and its validation, prices from the environment, restore hours, and
how long renditions may be kept (pipeline/lifecycle/policy.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from config import load_settings
from pipeline.lifecycle import policy as lifecycle
from pipeline.lifecycle.options import TieringOptions
from pipeline.lifecycle.policy import PolicyError, TierPolicy


def test_default_policy_is_valid_and_places_ages():
    policy = TierPolicy.of(load_settings({}).storage_tiers)
    assert load_settings({}).storage_tiers == lifecycle.DEFAULT_TIERS
    assert policy.describe() == "STANDARD 0-30 d, GLACIER_IR 30-365 d, DEEP_ARCHIVE from 365 d"
    assert policy.class_at(timedelta(days=0)) == "STANDARD"
    assert policy.class_at(timedelta(days=29, hours=23)) == "STANDARD"
    assert policy.class_at(timedelta(days=30)) == "GLACIER_IR"
    assert policy.class_at(timedelta(days=364)) == "GLACIER_IR"
    assert policy.class_at(timedelta(days=365)) == "DEEP_ARCHIVE"
    assert policy.class_at(timedelta(days=3650)) == "DEEP_ARCHIVE"


@pytest.mark.parametrize(("tiers", "message"), [
    ((), "no tier"),
    ((("STANDARD", 0), ("COLD_STORAGE", 90)), "unknown storage class 'COLD_STORAGE'"),
    ((("GLACIER_IR", 0),), "first tier must be STANDARD from day 0"),
    ((("STANDARD", 5), ("GLACIER_IR", 90)), "first tier must be STANDARD from day 0"),
    ((("STANDARD", 0), ("GLACIER_IR", 400), ("DEEP_ARCHIVE", 365)), "days must increase"),
    ((("STANDARD", 0), ("GLACIER_IR", 90), ("GLACIER_IR", 400)), "not colder"),
    ((("STANDARD", 0), ("DEEP_ARCHIVE", 90), ("GLACIER_IR", 400)), "not colder"),
    # GLACIER_IR bills 90 days at least: leaving after 60 is paying for nothing.
    ((("STANDARD", 0), ("GLACIER_IR", 90), ("DEEP_ARCHIVE", 150)), "minimum storage duration is 90 d"),
    ((("STANDARD", 0), ("STANDARD_IA", 10), ("DEEP_ARCHIVE", 400)), "needs objects at least 30 d old"),
    ((("STANDARD", 0), ("STANDARD_IA", 30), ("GLACIER_IR", 40)), "minimum storage duration is 30 d"),
])
def test_invalid_policies_say_why(tiers, message):
    with pytest.raises(PolicyError, match=message):
        TierPolicy.of(tiers)


def test_policy_from_environment_and_prices():
    settings = load_settings({"RELAYPACS_STORAGE_TIERS": "standard:0, glacier:120, deep_archive=400",
                              "RELAYPACS_STORAGE_PRICES": "DEEP_ARCHIVE=0.002"})
    policy = TierPolicy.of(settings.storage_tiers)
    assert [t.storage_class for t in policy.tiers] == ["STANDARD", "GLACIER", "DEEP_ARCHIVE"]
    prices = lifecycle.parse_prices(settings.storage_prices)
    assert prices["DEEP_ARCHIVE"] == 0.002 and prices["STANDARD"] == 0.023
    with pytest.raises(ValueError, match="RELAYPACS_STORAGE_TIERS"):
        load_settings({"RELAYPACS_STORAGE_TIERS": "STANDARD:0,GLACIER_IR:ninety"})
    with pytest.raises(PolicyError, match="unknown storage class"):
        lifecycle.parse_prices([("TAPE", 0.001)])
    with pytest.raises(PolicyError, match="negative"):
        lifecycle.parse_prices([("STANDARD", -1.0)])


def test_restore_hours_by_class_and_tier():
    assert lifecycle.restore_hours("GLACIER_IR", "Standard") == 0
    assert lifecycle.restore_hours("DEEP_ARCHIVE", "Standard") == 12
    assert lifecycle.restore_hours("DEEP_ARCHIVE", "Bulk") == 48
    with pytest.raises(PolicyError):
        lifecycle.restore_hours("DEEP_ARCHIVE", "Expedited")  # S3 offers none for it


def test_rendition_days_must_end_before_the_first_cold_tier():
    thirty = TierPolicy.of(lifecycle.DEFAULT_TIERS)
    assert lifecycle.check_rendition_days(thirty, 7) == 7
    assert lifecycle.check_rendition_days(thirty, 29) == 29
    with pytest.raises(PolicyError, match="would reach GLACIER_IR at 30 d"):
        lifecycle.check_rendition_days(thirty, 30)
    with pytest.raises(PolicyError, match="at least 1 day"):
        lifecycle.check_rendition_days(thirty, 0)
    with pytest.raises(PolicyError, match="would reach GLACIER_IR"):
        TieringOptions(policy=thirty, rendition_days=45)
    assert lifecycle.check_rendition_days(TierPolicy.of((("STANDARD", 0),)), 400) == 400
    settings = load_settings({"RELAYPACS_STORAGE_COLD_READS_PER_MONTH": "0.05",
                              "RELAYPACS_STORAGE_RENDITION_DAYS": "3"})
    assert settings.storage_cold_reads_per_month == 0.05 and settings.storage_rendition_days == 3
    with pytest.raises(ValueError, match="RELAYPACS_STORAGE_COLD_READS_PER_MONTH"):
        load_settings({"RELAYPACS_STORAGE_COLD_READS_PER_MONTH": "two percent"})
    with pytest.raises(PolicyError, match="between 0 and 10"):
        lifecycle.check_read_fraction(-0.1)
