"""Shared by the storage lifecycle unit tests: a clock from T0, a clinic with studies seeded
on a folder store, and the tiering options most run tests use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.lifecycle import policy as lifecycle
from pipeline.lifecycle.options import TieringOptions
from pipeline.lifecycle.policy import TierPolicy
from pipeline.storage import FolderStore
from tests.storage_seed import facility_user, seed_study

# STANDARD 90 d, GLACIER_IR to 365 d, then DEEP_ARCHIVE; most decision tests use it (the
# shipped default is 30/365).
NINETY = lifecycle.ISSUE_TIERS
T0 = datetime(2025, 1, 1, 12, tzinfo=UTC)
KIB = 1024


def days(n: float) -> datetime:
    return T0 + timedelta(days=n)


def folder_store(tmp_path):
    return FolderStore(tmp_path / "objects")


def make_clinic(session):
    facility_id, user_id = facility_user(session, "Lifecycle Clinic")
    session.commit()
    return facility_id, user_id


def seed(session, store, clinic, at, sizes):
    seeded = seed_study(session, store, facility_id=clinic[0], user_id=clinic[1], created_at=at, sizes=sizes)
    session.commit()
    return seeded


def run_options(tmp_path, **extra):
    return TieringOptions(policy=TierPolicy.of(NINETY), bundle_below=128 * KIB,
                          spool_dir=tmp_path / "spool", concurrency=2, **extra)
