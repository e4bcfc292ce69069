"""The decision of what moves when, from the catalogue, with a clock passed in
(pipeline/lifecycle/planning.py, over rows made by pipeline/lifecycle/catalogue.py)."""

from __future__ import annotations

from sqlalchemy import select

from pipeline.lifecycle import catalogue, planning
from pipeline.lifecycle import policy as lifecycle
from pipeline.lifecycle.policy import TierPolicy
from pipeline.models import StoredObject
from tests.unit.lifecycle.helpers import KIB, NINETY, days, seed


def test_plan_moves_by_age_with_an_injected_clock(session, store, clinic):
    policy = TierPolicy.of(NINETY)
    old = seed(session, store, clinic, days(0), [300 * KIB, 200 * KIB, 10 * KIB, 20 * KIB])
    seed(session, store, clinic, days(200), [400 * KIB])
    assert catalogue.catalogue_new(session) == 5
    assert catalogue.catalogue_new(session) == 0  # idempotent
    session.commit()

    def decide(at):
        return planning.plan(session, policy, at, bundle_below=128 * KIB)

    assert decide(days(89)).moves == [] and decide(days(89)).bundles == []
    due = decide(days(90))
    assert sorted(m.size for m in due.moves) == [200 * KIB, 300 * KIB]
    assert {m.to_class for m in due.moves} == {"GLACIER_IR"}
    # The small ones go together, in their study's bundle, never one by one.
    assert len(due.bundles) == 1
    assert due.bundles[0].study_id == old.study_id and len(due.bundles[0].member_ids) == 2
    assert due.bundles[0].storage_class == "GLACIER_IR"
    # A run that missed a year sends each object straight to the class of its age.
    late = decide(days(400))
    assert {(m.size, m.to_class) for m in late.moves} == {
        (300 * KIB, "DEEP_ARCHIVE"), (200 * KIB, "DEEP_ARCHIVE"), (400 * KIB, "GLACIER_IR")}
    assert late.bundles[0].storage_class == "DEEP_ARCHIVE"
    assert len(decide(days(400)).moves) == 3
    assert len(planning.plan(session, policy, days(400), bundle_below=128 * KIB, limit=2).moves) == 2
    assert planning.plan(session, policy, days(400), bundle_below=128 * KIB, facility_ids=[-1]).moves == []


def test_objects_already_moving_or_moved_are_not_planned_again(session, store, clinic):
    policy = TierPolicy.of(NINETY)
    seed(session, store, clinic, days(0), [300 * KIB, 400 * KIB])
    catalogue.catalogue_new(session)
    rows = session.scalars(select(StoredObject).order_by(StoredObject.id)).all()
    rows[0].moving_to = "GLACIER_IR"  # announced by a run that was killed
    rows[1].storage_class = "GLACIER_IR"
    session.commit()
    assert planning.plan(session, policy, days(100), bundle_below=0).moves == []
    later = planning.plan(session, policy, days(365), bundle_below=0)
    assert [m.object_id for m in later.moves] == [rows[1].id]


def test_default_bundles_mid_size_slices_and_splits_big_studies(session, store, clinic):
    """Under the shipped threshold a CT slice goes cold in its study's bundle (one request per
    study, not per slice); a 20 MB image is still copied alone; a study past the bundle cap
    makes several bundles."""
    policy = TierPolicy.of(lifecycle.DEFAULT_TIERS)
    ct = seed(session, store, clinic, days(0), [520 * KIB] * 4 + [20 * 1024 * KIB])
    catalogue.catalogue_new(session)
    session.commit()
    due = planning.plan(session, policy, days(30), bundle_below=lifecycle.DEFAULT_BUNDLE_BELOW)
    assert [m.size for m in due.moves] == [20 * 1024 * KIB]
    assert len(due.bundles) == 1 and len(due.bundles[0].member_ids) == 4
    assert due.bundles[0].study_id == ct.study_id
    split = planning.plan(session, policy, days(30), bundle_below=lifecycle.DEFAULT_BUNDLE_BELOW,
                           bundle_max_bytes=1100 * KIB)
    assert [len(b.member_ids) for b in split.bundles] == [2, 2]
    assert sorted(i for b in split.bundles for i in b.member_ids) == sorted(due.bundles[0].member_ids)
    assert planning.split_members([(1, 5), (2, 50), (3, 5)], 10) == [(1,), (2,), (3,)]
    assert planning.split_members([], 10) == []


def test_plan_never_takes_an_object_out_of_a_class_before_its_minimum(session, store, clinic):
    """A late arrival in GLACIER_IR (a backlog, a policy change) stays its 90 days there
    instead of leaving early for DEEP_ARCHIVE: leaving would bill the rest anyway."""
    policy = TierPolicy.of(NINETY)
    seed(session, store, clinic, days(0), [300 * KIB, 400 * KIB])
    catalogue.catalogue_new(session)
    late, timely = session.scalars(select(StoredObject).order_by(StoredObject.id)).all()
    late.storage_class, late.tiered_at = "GLACIER_IR", days(300)
    timely.storage_class, timely.tiered_at = "GLACIER_IR", days(90)
    session.commit()
    at_365 = planning.plan(session, policy, days(365), bundle_below=0)
    assert [m.object_id for m in at_365.moves] == [timely.id]
    assert planning.plan(session, policy, days(389), bundle_below=0).moves[0].object_id == timely.id
    at_390 = planning.plan(session, policy, days(390), bundle_below=0)
    assert {m.object_id for m in at_390.moves} == {late.id, timely.id}
    assert {m.to_class for m in at_390.moves} == {"DEEP_ARCHIVE"}
