"""Whole tiering runs without servers (pipeline/lifecycle/tiering.py and its steps): on a
folder store and SQLite, with restore; renditions expired; a dry run."""

from __future__ import annotations

import io

import pytest
from sqlalchemy import func, select

from pipeline.delivery import forwarding
from pipeline.lifecycle import bundles, restore, tiering
from pipeline.lifecycle import cost_report as storage_report
from pipeline.models import (
    Instance,
    ObjectState,
    RestoreRequest,
    RestoreState,
    StoredObject,
    StoredObjectKind,
)
from pipeline.storage import ObjectArchived
from tests.unit.lifecycle.helpers import KIB, days, run_options, seed


def test_renditions_expire_after_their_days_unless_a_delivery_still_needs_them(session, store, clinic,
                                                                              tmp_path):
    from pipeline.models import Delivery, Destination, InstanceRendition

    seeded = seed(session, store, clinic, days(0), [1 * KIB, 2 * KIB])
    keys = []
    for instance_id, key in zip(seeded.instance_ids, seeded.keys, strict=True):
        rendition_key = f"{key.rsplit('/', 1)[0]}/renditions/{instance_id:064d}.dcm"
        store.put_stream(rendition_key, io.BytesIO(b"rewritten"))
        session.add(InstanceRendition(instance_id=instance_id, digest=f"{instance_id:064d}",
                                      object_key=rendition_key, sha256="0" * 64, size=9, changed=[],
                                      created_at=days(1)))
        keys.append(rendition_key)
    destination = Destination(name="Rendition PACS", kind="folder", options={})
    session.add(destination)
    session.flush()
    batch_id = session.scalar(select(Instance.batch_id).where(Instance.id == seeded.instance_ids[1]))
    session.add(Delivery(instance_id=seeded.instance_ids[1], destination_id=destination.id,
                         study_id=seeded.study_id, batch_id=batch_id, state="pending"))
    session.commit()
    options = run_options(tmp_path)
    assert tiering.run(session, store, options, days(7), checkpoint=session.commit).counts[
        "renditions_expired"] == 0
    result = tiering.run(session, store, options, days(8), checkpoint=session.commit)
    assert result.counts["renditions_expired"] == 1
    assert not store.exists(keys[0]) and store.exists(keys[1])  # the second is still being retried
    left = session.scalars(select(InstanceRendition.instance_id)).all()
    assert left == [seeded.instance_ids[1]]


def test_run_bundles_tiers_reports_and_restores(session, store, clinic, tmp_path):
    seeded = seed(session, store, clinic, days(0), [300 * KIB, 5 * KIB, 6 * KIB, 7 * KIB])
    options = run_options(tmp_path)
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
    instance = session.scalar(select(Instance).where(Instance.object_key == small_keys[0]))
    with pytest.raises(ObjectArchived, match="in a bundle"):
        restore.require_readable(session, instance, now=days(92))
    assert session.scalar(select(func.count()).select_from(RestoreRequest)) == 1
    with pytest.raises(ObjectArchived):  # asking twice does not ask S3 twice
        restore.require_readable(session, instance, now=days(92))
    assert session.scalar(select(func.count()).select_from(RestoreRequest)) == 1
    done = restore.process(session, store, replay=forwarding.replay, now=days(92), days=7,
                           checkpoint=session.commit)
    assert done.rehydrated == 1 and done.done == 1
    assert store.open(small_keys[0]).read() == seeded.data[small_keys[0]]
    restore.require_readable(session, instance, now=days(93))  # readable now
    assert session.scalar(select(RestoreRequest)).state == RestoreState.DONE
    # The rehydrated copy goes again after its days are up.
    tiering.run(session, store, options, days(100), checkpoint=session.commit)
    assert not store.exists(small_keys[0])


def test_dry_run_changes_nothing(session, store, clinic, tmp_path):
    seed(session, store, clinic, days(0), [300 * KIB, 5 * KIB])
    result = tiering.run(session, store, run_options(tmp_path), days(400), checkpoint=session.flush,
                         dry_run=True)
    assert result.plan["moves"] == 1 and result.plan["bundles"] == 1
    assert result.plan["moves_by_class"] == {"DEEP_ARCHIVE": 1}
    session.rollback()
    assert session.scalar(select(func.count()).select_from(StoredObject)) == 0
