"""Cold bytes end to end: forwarding parks the delivery, the restore pass replays it through the
`replay` it is given (forwarding.replay), the batch reopens, and the next run delivers."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from pipeline.delivery import forwarding
from pipeline.delivery.destinations import make_sender
from pipeline.lifecycle import restore
from pipeline.models import (
    Batch,
    BatchState,
    Delivery,
    DeliveryState,
    Destination,
    Instance,
    RestoreRequest,
    RestoreState,
    StoredObject,
    StoredObjectKind,
    Study,
)
from pipeline.storage import FolderStore
from tests.storage_seed import facility_user, seed_study


def test_a_restored_forward_replays_its_parked_delivery(session, tmp_path):
    store = FolderStore(tmp_path / "objects")
    facility_id, user_id = facility_user(session, "Cold Clinic")
    seeded = seed_study(session, store, facility_id=facility_id, user_id=user_id,
                        created_at=datetime(2025, 1, 1, tzinfo=UTC), sizes=[1024])
    instance = session.get(Instance, seeded.instance_ids[0])
    session.add(StoredObject(facility_id=facility_id, study_id=seeded.study_id, instance_id=instance.id,
                             kind=StoredObjectKind.INSTANCE, object_key=instance.object_key,
                             size=instance.size, sha256=instance.sha256, storage_class="GLACIER",
                             stored_at=instance.created_at))
    (tmp_path / "pacs").mkdir()
    destination = Destination(name="Cold PACS", kind="folder", options={"path": str(tmp_path / "pacs")})
    session.add(destination)
    session.flush()
    session.add(Delivery(instance_id=instance.id, destination_id=destination.id, study_id=seeded.study_id,
                         batch_id=instance.batch_id, state=DeliveryState.PENDING))
    session.commit()

    def forward() -> forwarding.ForwardResult:
        sender = make_sender("folder", destination.options)
        return forwarding.forward_study(session, store, sender, study_id=seeded.study_id,
                                        destination_id=destination.id, claim="task-1", batch_size=10,
                                        max_attempts=5, checkpoint=session.commit)

    parked = forward()
    assert (parked.delivered, parked.failed, parked.restoring) == (0, 1, 1)
    delivery = session.scalar(select(Delivery))
    assert (delivery.state, delivery.status_code) == (DeliveryState.FAILED, restore.ARCHIVED_STATUS)

    replayed: list[list[int]] = []

    def replay(session_, deliveries):
        replayed.append([d.id for d in deliveries])
        return forwarding.replay(session_, deliveries)

    done = restore.process(session, store, replay=replay, checkpoint=session.commit)
    assert done.done == 1 and done.forwards == [(seeded.study_id, destination.id)]
    assert replayed == [[delivery.id]]
    assert session.scalar(select(RestoreRequest)).state == RestoreState.DONE
    session.refresh(delivery)
    assert (delivery.state, delivery.attempts) == (DeliveryState.PENDING, 0)
    assert session.get(Batch, instance.batch_id).state == BatchState.FORWARDING

    # The copy S3 would report as restored (a folder store has no archive to poll): the next
    # run delivers the original bytes.
    session.scalar(select(StoredObject)).restored_until = datetime(2099, 1, 1, tzinfo=UTC)
    session.commit()
    assert forward().delivered == 1
    sent = tmp_path / "pacs" / session.get(Study, seeded.study_id).study_instance_uid
    assert (sent / f"{instance.sop_instance_uid}.dcm").read_bytes() == seeded.data[instance.object_key]
