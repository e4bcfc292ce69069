"""Storage lifecycle without servers: the policy and its validation, the decision of what
moves when (a clock passed in), bundles, the cost arithmetic, and a whole run with restore
on a folder store and SQLite."""

from __future__ import annotations

import hashlib
import io
import os
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from config import load_settings
from pipeline import bundles, lifecycle, restore, storage_report, tiering
from pipeline.lifecycle import PolicyError, TierPolicy
from pipeline.models import ObjectState, RestoreRequest, RestoreState, StoredObject, StoredObjectKind
from pipeline.storage import FolderStore, ObjectArchived
from tests.storage_seed import facility_user, seed_study

DEFAULT = (("STANDARD", 0), ("GLACIER_IR", 90), ("DEEP_ARCHIVE", 365))
T0 = datetime(2025, 1, 1, 12, tzinfo=UTC)
KIB = 1024


def days(n: float) -> datetime:
    return T0 + timedelta(days=n)


# ----------------------------------------------------------------------------- the policy


def test_default_policy_is_valid_and_places_ages():
    policy = TierPolicy.of(load_settings({}).storage_tiers)
    assert policy.describe() == "STANDARD 0-90 d, GLACIER_IR 90-365 d, DEEP_ARCHIVE from 365 d"
    assert policy.class_at(timedelta(days=0)) == "STANDARD"
    assert policy.class_at(timedelta(days=89, hours=23)) == "STANDARD"
    assert policy.class_at(timedelta(days=90)) == "GLACIER_IR"
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


def test_lifecycle_rules_for_managed_by_s3():
    rules = tiering.lifecycle_rules(TierPolicy.of(DEFAULT), key_prefix="gw/", abort_multipart_days=3)
    main, bundle = rules
    assert main["Filter"] == {"Prefix": "gw/"}
    assert main["Transitions"] == [{"Days": 90, "StorageClass": "GLACIER_IR"},
                                   {"Days": 365, "StorageClass": "DEEP_ARCHIVE"}]
    assert main["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}
    assert main["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 3}
    # Bundles are born in GLACIER_IR at study age 90: DEEP_ARCHIVE 275 days later.
    assert bundle["Filter"] == {"Prefix": "gw/studies/"}
    assert bundle["Transitions"] == [{"Days": 275, "StorageClass": "DEEP_ARCHIVE"}]


# ----------------------------------------------------------------------------- the decision


@pytest.fixture
def store(tmp_path):
    return FolderStore(tmp_path / "objects")


@pytest.fixture
def clinic(session):
    facility_id, user_id = facility_user(session, "Lifecycle Clinic")
    session.commit()
    return facility_id, user_id


def _seed(session, store, clinic, at, sizes):
    seeded = seed_study(session, store, facility_id=clinic[0], user_id=clinic[1], created_at=at, sizes=sizes)
    session.commit()
    return seeded


def test_plan_moves_by_age_with_an_injected_clock(session, store, clinic):
    policy = TierPolicy.of(DEFAULT)
    old = _seed(session, store, clinic, days(0), [300 * KIB, 200 * KIB, 10 * KIB, 20 * KIB])
    _seed(session, store, clinic, days(200), [400 * KIB])
    assert tiering.catalogue_new(session) == 5
    assert tiering.catalogue_new(session) == 0  # idempotent
    session.commit()

    def decide(at):
        return lifecycle.plan(session, policy, at, bundle_below=128 * KIB)

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
    assert len(lifecycle.plan(session, policy, days(400), bundle_below=128 * KIB, limit=2).moves) == 2
    assert lifecycle.plan(session, policy, days(400), bundle_below=128 * KIB, facility_ids=[-1]).moves == []


def test_objects_already_moving_or_moved_are_not_planned_again(session, store, clinic):
    policy = TierPolicy.of(DEFAULT)
    _seed(session, store, clinic, days(0), [300 * KIB, 400 * KIB])
    tiering.catalogue_new(session)
    rows = session.scalars(select(StoredObject).order_by(StoredObject.id)).all()
    rows[0].moving_to = "GLACIER_IR"  # announced by a run that was killed
    rows[1].storage_class = "GLACIER_IR"
    session.commit()
    assert lifecycle.plan(session, policy, days(100), bundle_below=0).moves == []
    later = lifecycle.plan(session, policy, days(365), bundle_below=0)
    assert [m.object_id for m in later.moves] == [rows[1].id]


# ----------------------------------------------------------------------------- bundles and cost


def test_bundle_layout_is_the_tar_and_members_read_back(tmp_path, store):
    members = []
    for i, size in enumerate([0, 1, 511, 512, 513, 70_000]):
        data = os.urandom(size)
        store.put_stream(f"m/{i}", io.BytesIO(data))
        digest = hashlib.sha256(data).hexdigest()
        members.append(bundles.Member(100 + i, i, f"1.2.{i}", f"m/{i}", size, digest))
    shape = bundles.layout(7, 8, members)
    path, _ = bundles.write(store, shape, tmp_path / "spool")
    assert path.stat().st_size == shape.size
    store.put_file("b.tar", path)
    for placed in shape.placed:
        got = bundles.read_member(store, "b.tar", placed.offset, placed.member.size, placed.member.sha256)
        assert got == (store.root / placed.member.object_key).read_bytes()
    index = bundles.read_index(store, "b.tar", shape.size)
    assert index["format"] == bundles.FORMAT and len(index["members"]) == 6
    with pytest.raises(bundles.BundleError):
        bundles.read_member(store, "b.tar", shape.placed[1].offset, 1, "0" * 64)
    store.put_stream("m/3", io.BytesIO(b"x" * 512))  # changed in storage since recorded
    with pytest.raises(bundles.BundleError, match="sha256 differs"):
        bundles.write(store, shape, tmp_path / "spool")


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


# ----------------------------------------------------------------------------- a whole run


def _options(tmp_path, **extra):
    return tiering.TieringOptions(policy=TierPolicy.of(DEFAULT), bundle_below=128 * KIB,
                                  spool_dir=tmp_path / "spool", concurrency=2, **extra)


def test_run_bundles_tiers_reports_and_restores(session, store, clinic, tmp_path):
    seeded = _seed(session, store, clinic, days(0), [300 * KIB, 5 * KIB, 6 * KIB, 7 * KIB])
    options = _options(tmp_path)
    first = tiering.run(session, store, options, days(91), checkpoint=session.commit)
    assert first.counts["catalogued"] == 4
    assert first.counts["moved"] == 1 and first.counts["bundles"] == 1
    assert first.counts["bundled_instances"] == 3 and first.counts["released"] == 3
    # Running again the same night finds nothing left to do.
    again = tiering.run(session, store, options, days(91), checkpoint=session.commit)
    assert again.counts["moved"] == 0 and again.counts["bundles"] == 0

    rows = {r.object_key: r for r in session.scalars(select(StoredObject))}
    bundle = next(r for r in rows.values() if r.kind == StoredObjectKind.BUNDLE)
    assert bundle.storage_class == "GLACIER_IR" and bundle.object_key.startswith("studies/")
    small_keys = [k for k in seeded.keys if rows[k].size < 128 * KIB]
    for key in small_keys:
        assert rows[key].state == ObjectState.RELEASED and not store.exists(key)
        assert bundles.read_member(store, bundle.object_key, rows[key].bundle_offset, rows[key].size,
                                   rows[key].sha256) == seeded.data[key]

    report = storage_report.build(session).as_dict()
    assert report["by_class"]["GLACIER_IR"]["objects"] == 2  # the big one and the bundle
    assert report["instances"] == 4 and report["bundled_instances"] == 3
    assert 0 < report["saving_fraction"] < 1

    # A bundled instance asked for: a request is recorded and the reason says when.
    from pipeline.models import Instance

    instance = session.scalar(select(Instance).where(Instance.object_key == small_keys[0]))
    with pytest.raises(ObjectArchived, match="in a bundle"):
        restore.require_readable(session, instance, now=days(92))
    assert session.scalar(select(func.count()).select_from(RestoreRequest)) == 1
    with pytest.raises(ObjectArchived):  # asking twice does not ask S3 twice
        restore.require_readable(session, instance, now=days(92))
    assert session.scalar(select(func.count()).select_from(RestoreRequest)) == 1
    done = restore.process(session, store, now=days(92), days=7, checkpoint=session.commit)
    assert done.rehydrated == 1 and done.done == 1
    assert store.open(small_keys[0]).read() == seeded.data[small_keys[0]]
    restore.require_readable(session, instance, now=days(93))  # readable now
    assert session.scalar(select(RestoreRequest)).state == RestoreState.DONE
    # The rehydrated copy goes again after its days are up.
    tiering.run(session, store, options, days(100), checkpoint=session.commit)
    assert not store.exists(small_keys[0])


def test_dry_run_changes_nothing(session, store, clinic, tmp_path):
    _seed(session, store, clinic, days(0), [300 * KIB, 5 * KIB])
    result = tiering.run(session, store, _options(tmp_path), days(400), checkpoint=session.flush,
                         dry_run=True)
    assert result.plan["moves"] == 1 and result.plan["bundles"] == 1
    assert result.plan["moves_by_class"] == {"DEEP_ARCHIVE": 1}
    session.rollback()
    assert session.scalar(select(func.count()).select_from(StoredObject)) == 0


# ----------------------------------------------------------------------------- the API


def test_report_api_is_for_admins_and_restore_requests_are_validated(client, make_token, session, store,
                                                                     clinic, tmp_path):
    assert client.get("/api/v1/storage/report").status_code == 401
    uploader = {"Authorization": f"Bearer {make_token('Lifecycle Clinic', 'uploader')}"}
    admin = {"Authorization": f"Bearer {make_token('Lifecycle Clinic', 'admin')}"}
    assert client.get("/api/v1/storage/report", headers=uploader).status_code == 403
    _seed(session, store, clinic, days(0), [300 * KIB, 5 * KIB])
    tiering.run(session, store, _options(tmp_path), days(100), checkpoint=session.commit)
    body = client.get("/api/v1/storage/report", headers=admin,
                      query_string={"facility": "Lifecycle Clinic"}).get_json()
    bundle = session.scalar(select(StoredObject).where(StoredObject.kind == StoredObjectKind.BUNDLE))
    assert set(body["by_class"]) == {"GLACIER_IR"}
    assert body["by_class"]["GLACIER_IR"]["objects"] == 2
    assert body["by_class"]["GLACIER_IR"]["bytes"] == 300 * KIB + bundle.size
    assert body["all_standard"]["bytes"] == 305 * KIB
    assert body["policy"].startswith("STANDARD 0-90 d")
    assert client.get("/api/v1/storage/report", headers=admin,
                      query_string={"facility": "Nowhere"}).status_code == 404
    for bad in ({}, {"study_id": 1, "instance_id": 1}, {"study_id": 0}, {"study_id": 1, "purpose": "x"},
                {"study_id": 1, "colour": "red"}):
        answer = client.post("/api/v1/storage/restores", json=bad, headers=admin)
        assert answer.status_code == 400, (bad, answer.get_json())
    assert client.post("/api/v1/storage/restores", json={"study_id": 1}, headers=uploader).status_code == 403
