"""The catalogue of kept objects: every instance original gets a ``StoredObject`` row,
the record the lifecycle decides from (never a bucket listing).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from pipeline.models import Instance, ObjectState, StoredObject, StoredObjectKind, Upload, utcnow


def catalogue_new(session: Session, *, facility_ids: Sequence[int] | None = None, batch: int = 5000) -> int:
    """Add a row for every instance original not yet in the catalogue (a re-sent instance's
    new key included); its age counts from its upload's date."""
    added = 0
    while True:
        query = (
            select(Instance.id, Instance.facility_id, Instance.study_id, Instance.object_key,
                   Instance.size, Instance.sha256, Upload.created_at)
            .join(Upload, Upload.id == Instance.upload_id)
            .outerjoin(StoredObject, StoredObject.object_key == Instance.object_key)
            .where(StoredObject.id.is_(None))
            .order_by(Instance.id)
            .limit(batch)
        )
        if facility_ids:
            query = query.where(Instance.facility_id.in_(list(facility_ids)))
        rows = session.execute(query).all()
        if not rows:
            return added
        now = utcnow()
        session.execute(insert(StoredObject), [
            {"facility_id": r.facility_id, "study_id": r.study_id, "instance_id": r.id,
             "kind": StoredObjectKind.INSTANCE, "object_key": r.object_key, "size": r.size,
             "sha256": r.sha256, "storage_class": "STANDARD", "state": ObjectState.KEPT,
             "stored_at": r.created_at, "dr_state": "pending", "dr_attempts": 0,
             "created_at": now, "updated_at": now}
            for r in rows
        ])
        added += len(rows)
        if len(rows) < batch:
            return added
