"""Routing: which destinations an instance goes to, and the delivery rows that say so.

Rules name a facility (or every facility) and optionally a modality. A facility that no
rule mentions sends everything to every enabled destination that serves it, so a fresh
install with one PACS needs no rules at all.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from pipeline.models import (
    Batch,
    Delivery,
    DeliveryState,
    Destination,
    Instance,
    InstanceVersion,
    RoutingRule,
    Series,
)


def _serving(session: Session, facility_id: int) -> dict[int, Destination]:
    rows = session.scalars(
        select(Destination).where(
            Destination.enabled.is_(True),
            or_(Destination.facility_id.is_(None), Destination.facility_id == facility_id),
        ).order_by(Destination.id)
    )
    return {d.id: d for d in rows}


def destination_ids_for(session: Session, facility_id: int, modality: str | None) -> list[int]:
    serving = _serving(session, facility_id)
    rules = session.scalars(
        select(RoutingRule).where(
            RoutingRule.enabled.is_(True),
            or_(RoutingRule.facility_id.is_(None), RoutingRule.facility_id == facility_id),
        )
    ).all()
    if not rules:
        return list(serving)
    chosen = {
        r.destination_id for r in rules
        if (r.modality is None or r.modality == modality) and r.destination_id in serving
    }
    return sorted(chosen)


def plan_deliveries(session: Session, batch: Batch, *, new_only: bool = False) -> list[tuple[int, int]]:
    """Create the missing delivery rows for the batch's instances; return the (study,
    destination) pairs that have pending work (``new_only``: only those of the rows made
    now, for a batch whose other work is already on its way). Idempotent."""
    made: set[tuple[int, int]] = set()
    instances = session.execute(
        select(Instance.id, Instance.study_id, Series.modality)
        .join(Series, Series.id == Instance.series_id)
        # Only the version of each SOPInstanceUID that goes out; held and superseded versions
        # (pipeline.dicom.versions) are sent nowhere.
        .where(Instance.batch_id == batch.id, Instance.version_state == InstanceVersion.CURRENT)
    ).all()
    if instances:
        existing = set(session.execute(
            select(Delivery.instance_id, Delivery.destination_id)
            .where(Delivery.instance_id.in_([i.id for i in instances]))
        ).all())
        by_modality: dict[str | None, list[int]] = {}
        for instance_id, study_id, modality in instances:
            if modality not in by_modality:
                by_modality[modality] = destination_ids_for(session, batch.facility_id, modality)
            for destination_id in by_modality[modality]:
                if (instance_id, destination_id) not in existing:
                    session.add(Delivery(instance_id=instance_id, destination_id=destination_id,
                                         study_id=study_id, batch_id=batch.id))
                    made.add((study_id, destination_id))
        session.flush()
    if new_only:
        return sorted(made)
    return [
        (row.study_id, row.destination_id)
        for row in session.execute(
            select(Delivery.study_id, Delivery.destination_id)
            .where(Delivery.batch_id == batch.id, Delivery.state == DeliveryState.PENDING)
            .group_by(Delivery.study_id, Delivery.destination_id)
        )
    ]


def add_rule(session: Session, *, destination: Destination, facility_id: int | None,
             modality: str | None) -> RoutingRule:
    rule = RoutingRule(destination_id=destination.id, facility_id=facility_id,
                       modality=modality.upper() if modality else None)
    session.add(rule)
    session.flush()
    return rule
