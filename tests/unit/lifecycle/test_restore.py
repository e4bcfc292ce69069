"""Restore passes (pipeline/lifecycle/restore.py): when a started restore is expected back."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from pipeline.delivery import forwarding
from pipeline.lifecycle import policy as lifecycle
from pipeline.lifecycle import restore
from pipeline.models import Instance, RestoreRequest, StoredObject, StoredObjectKind
from pipeline.storage import FolderStore, ObjectArchived
from tests.unit.lifecycle.helpers import days, seed

TWELVE_HOURS = timedelta(hours=lifecycle.restore_hours("DEEP_ARCHIVE", "Standard"))


class ArchiveFolder(FolderStore):
    """A folder store that, like S3 for an archive class, starts a restore when asked (its
    head then says STANDARD, so the same pass also finds the bytes back)."""

    def restore(self, key: str, days: int, tier: str) -> str:
        super().restore(key, days, tier)
        return "started"


@pytest.fixture
def cold_instance(session, tmp_path, clinic) -> Instance:
    store = ArchiveFolder(tmp_path / "objects")
    seeded = seed(session, store, clinic, days(0), [40 * 1024])
    instance = session.get(Instance, seeded.instance_ids[0])
    session.add(
        StoredObject(
            facility_id=clinic[0],
            study_id=seeded.study_id,
            instance_id=instance.id,
            kind=StoredObjectKind.INSTANCE,
            object_key=instance.object_key,
            size=instance.size,
            sha256=instance.sha256,
            storage_class="DEEP_ARCHIVE",
            stored_at=instance.created_at,
        )
    )
    session.commit()
    return instance


def request_at(session, instance: Instance, at) -> RestoreRequest:
    with pytest.raises(ObjectArchived):
        restore.require_readable(session, instance, now=at)
    session.commit()
    return session.scalar(select(RestoreRequest).where(RestoreRequest.instance_id == instance.id))


def test_a_restore_is_expected_its_hours_after_the_pass_that_starts_it(session, tmp_path, cold_instance):
    request = request_at(session, cold_instance, days(400))
    started = restore.process(
        session,
        ArchiveFolder(tmp_path / "objects"),
        replay=forwarding.replay,
        now=days(400) + timedelta(minutes=5),
        checkpoint=session.commit,
    )
    assert started.started == 1
    assert request.expected_ready_at == days(400) + timedelta(minutes=5) + TWELVE_HOURS


def test_a_request_made_after_the_pass_read_its_clock_is_not_expected_before_its_hours(
    session, tmp_path, cold_instance
):
    # The storage worker reads its clock when the pass begins, then takes the job's lock and
    # reads the open requests: a forward can record a request in between, and that pass starts
    # it. S3 counts the hours from the restore call, which comes after the request.
    request = request_at(session, cold_instance, days(400) + timedelta(seconds=2))
    started = restore.process(
        session,
        ArchiveFolder(tmp_path / "objects"),
        replay=forwarding.replay,
        now=days(400),
        checkpoint=session.commit,
    )
    assert started.started == 1
    assert request.expected_ready_at == request.requested_at + TWELVE_HOURS
    # The same pass finds the bytes back (a folder store): not before they were asked for either.
    assert request.requested_at <= request.ready_at <= request.completed_at
