"""Finding deliveries for operators: listing dead letters and choosing what to replay."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from pipeline.models import Delivery, DeliveryState, Destination, Instance


class SelectionError(ValueError):
    pass


def select_deliveries(
    *,
    status: str | None = None,
    ids: Sequence[int] = (),
    batch_id: int | None = None,
    destination: str | None = None,
    facility_id: int | None = None,
    everything: bool = False,
) -> Select:
    """A query for the chosen deliveries; refuses an empty choice unless ``everything``."""
    if status is not None and status not in {s.value for s in DeliveryState}:
        raise SelectionError(f"unknown status {status!r}; use one of "
                             + ", ".join(s.value for s in DeliveryState))
    if not (ids or batch_id or destination or everything or status):
        raise SelectionError("choose deliveries by id, batch, destination, status, or all")
    query = select(Delivery).order_by(Delivery.id)
    if status:
        query = query.where(Delivery.state == status)
    if ids:
        query = query.where(Delivery.id.in_(list(ids)))
    if batch_id:
        query = query.where(Delivery.batch_id == batch_id)
    if destination:
        query = query.join(Destination, Destination.id == Delivery.destination_id).where(
            Destination.name == destination)
    if facility_id is not None:
        query = query.join(Instance, Instance.id == Delivery.instance_id).where(
            Instance.facility_id == facility_id)
    return query


def describe(session: Session, deliveries: Sequence[Delivery]) -> list[dict]:
    names = {d.id: d.name for d in session.scalars(select(Destination))}
    uids = dict(session.execute(
        select(Instance.id, Instance.sop_instance_uid)
        .where(Instance.id.in_([d.instance_id for d in deliveries]))
    ).all()) if deliveries else {}
    return [
        {
            "id": d.id,
            "batch_id": d.batch_id,
            "sop_instance_uid": uids.get(d.instance_id),
            "destination": names.get(d.destination_id),
            "state": d.state,
            "attempts": d.attempts,
            "status_code": d.status_code,
            "reason": d.reason,
            "updated_at": d.updated_at.isoformat() if d.updated_at else None,
        }
        for d in deliveries
    ]
