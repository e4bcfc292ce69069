"""The cost arithmetic: a line's cost by S3's minimums and overheads, and the report's fees
for transitions, cold reads, restores and DR copies (pipeline/lifecycle/cost_report.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from pipeline.lifecycle import cost_report as storage_report
from pipeline.lifecycle import policy as lifecycle
from pipeline.lifecycle import restore, tiering
from pipeline.lifecycle.options import TieringOptions
from pipeline.lifecycle.policy import TierPolicy
from pipeline.models import StoredObject, StoredObjectKind
from tests.unit.lifecycle.helpers import KIB, days, seed


def test_cost_of_a_line_follows_s3_minimums_and_overheads():
    prices = dict(lifecycle.DEFAULT_PRICES)
    gib = 1024**3
    assert storage_report.line_cost("STANDARD", 1, gib, gib, prices).monthly_cost == pytest.approx(0.023)
    # GLACIER_IR bills a 10 KiB object as 128 KiB.
    small = storage_report.line_cost("GLACIER_IR", 1000, 1000 * 10 * KIB, 1000 * 128 * KIB, prices)
    assert small.monthly_cost == pytest.approx(1000 * 128 * KIB / gib * 0.004)
    # DEEP_ARCHIVE: +32 KiB at its price and +8 KiB at STANDARD's, per object.
    deep = storage_report.line_cost("DEEP_ARCHIVE", 1000, 0, 0, prices)
    assert deep.monthly_cost == pytest.approx(1000 * (32 * KIB * 0.00099 + 8 * KIB * 0.023) / gib)


def test_report_fees_transitions_cold_reads_and_restores(session, store, clinic, tmp_path):
    gib = 1024**3
    seed(session, store, clinic, days(0), [300 * KIB, 5 * KIB, 6 * KIB])
    big = seed(session, store, clinic, days(0), [2 * 1024 * KIB])
    options = TieringOptions(policy=TierPolicy.of(lifecycle.DEFAULT_TIERS), bundle_below=128 * KIB,
                                     spool_dir=tmp_path / "spool", concurrency=2)
    tiering.run(session, store, options, days(30), checkpoint=session.commit)
    bundle = session.scalar(select(StoredObject).where(StoredObject.kind == StoredObjectKind.BUNDLE))

    quiet = storage_report.build(session, now=days(30), cold_reads_per_month=0)
    # Three objects moved and one bundle written into GLACIER_IR in the month before the clock.
    # Writing the bundle read its two members from STANDARD: a GET each.
    assert quiet.fees.transition_requests == {"GLACIER_IR": 3}
    assert quiet.fees.bundled_member_reads == 2
    transitions = 3 * 0.02 / 1000 + 2 * 0.0004 / 1000
    assert quiet.fees.usd["transitions"] == pytest.approx(transitions)
    assert quiet.fees.usd["cold_reads"] == 0 and quiet.baseline_fees.total == 0
    assert quiet.monthly_cost == pytest.approx(quiet.total.monthly_cost + transitions)
    assert quiet.saving < quiet.storage_saving
    # A month later those transitions are out of the window.
    assert storage_report.build(session, now=days(61), cold_reads_per_month=0).fees.total == 0

    read = storage_report.build(session, now=days(61), cold_reads_per_month=0.1)
    cold_bytes = 300 * KIB + 2048 * KIB + bundle.size
    # One GET per instance read: a bundled one is a range GET of its bundle (4 instances, 3 objects).
    assert read.by_class["GLACIER_IR"].objects == 3 and read.by_class["GLACIER_IR"].instances == 4
    assert read.fees.usd["cold_reads"] == pytest.approx(0.1 * cold_bytes / gib * 0.03 + 0.1 * 4 * 0.01 / 1000)
    assert read.baseline_fees.usd["cold_reads"] == pytest.approx(0.1 * 4 * 0.0004 / 1000)
    facility = read.as_dict()["by_facility"]["Lifecycle Clinic"]
    assert facility["fees"]["cold_reads"] == pytest.approx(read.fees.usd["cold_reads"], abs=1e-6)

    # A year on the big one is in DEEP_ARCHIVE; restoring it costs per GB, per request, and
    # its temporary STANDARD copy for the restore days.
    tiering.run(session, store, options, days(366), checkpoint=session.commit)
    row = session.scalar(select(StoredObject).where(StoredObject.object_key == big.keys[0]))
    assert row.storage_class == "DEEP_ARCHIVE"
    restore.request_restore(session, row, purpose="read", tier="Standard", now=days(367))
    restore.request_restore(session, row, purpose="forward", tier="Standard", now=days(367))
    session.commit()
    restored = storage_report.build(session, now=days(370), cold_reads_per_month=0, restore_days=7)
    size_gib = 2048 * KIB / gib
    assert restored.fees.restores == 1  # two requests, one restore
    assert restored.fees.usd["restores"] == pytest.approx(size_gib * 0.02 + 0.10 / 1000
                                                          + size_gib * 0.023 * 7 / 30)
    assert storage_report.build(session, now=days(400), cold_reads_per_month=0).fees.usd["restores"] == 0

    # The DR copies of the month are PUTs in the DR class (beside the bill: no baseline has them).
    row.dr_state, row.dr_copied_at = "copied", days(395)
    session.commit()
    dr = storage_report.build(session, now=days(400), dr_storage_class="GLACIER_IR").dr
    assert dr["copy_requests"] == 1 and dr["copy_requests_usd"] == pytest.approx(0.02 / 1000)
    later = storage_report.build(session, now=days(430), dr_storage_class="GLACIER_IR")
    assert later.dr["copy_requests"] == 0
