"""What a clinic asked to change in a batch, and the record of every change.

A batch may name a template (its values are copied into the change log when applied, so a
later edit of the template never changes a batch under way) and hold per-patient overrides
(``Batch.overrides``: PatientID as the original files say -> attribute values). Every change
is a ``MetadataChange`` row: who, when, what. The values are applied when forwarding (see
``pipeline.delivery.renditions``); the stored originals never change.

Edits are refused once any affected instance has started going out: what a PACS already
has would no longer match what the batch says.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from pipeline.dicom.attributes import MetadataError, normalise_attributes
from pipeline.editing.templates import by_name
from pipeline.models import (
    Batch,
    Delivery,
    DeliveryState,
    Instance,
    InstanceOrigin,
    MetadataChange,
    User,
    utcnow,
)

Values = dict[str, str | list[str]]
PATIENT_ID_LIMIT = 64
MAX_PATIENTS = 1000


class EditConflict(Exception):
    """The change would contradict what already went (or is going) out to a PACS."""


@dataclass(frozen=True)
class BatchEdits:
    """The edits of one batch: the template's values as applied, and overrides by patient."""

    template: Values = field(default_factory=dict)
    overrides: dict[str, Values] = field(default_factory=dict)

    def values_for(self, patient_id: str | None) -> Values:
        """Template values, then the patient's override on top (the more specific wins)."""
        return {**self.template, **self.overrides.get(patient_id or "", {})}


def record(session: Session, batch: Batch, user: User, kind: str, subject: str | None,
           detail: dict, now: datetime | None = None) -> MetadataChange:
    """Log a change; it also counts as batch activity, so an open batch under review is not
    forwarded by the quiet-period timer in the middle of the review."""
    now = now or utcnow()
    change = MetadataChange(batch_id=batch.id, user_id=user.id, kind=kind,
                            subject=subject[:200] if subject else None, detail=detail,
                            created_at=now)
    session.add(change)
    batch.last_activity_at = now
    session.flush()
    return change


def change_log(session: Session, batch_id: int) -> list[dict]:
    rows = session.execute(
        select(MetadataChange, User.email)
        .join(User, User.id == MetadataChange.user_id)
        .where(MetadataChange.batch_id == batch_id)
        .order_by(MetadataChange.id)
    ).all()
    return [
        {
            "id": change.id,
            "at": change.created_at.isoformat(),
            "by": email,
            "kind": change.kind,
            "subject": change.subject,
            "detail": change.detail,
        }
        for change, email in rows
    ]


def batch_edits(session: Session, batch_id: int) -> BatchEdits:
    batch = session.get(Batch, batch_id)
    if batch is None:
        return BatchEdits()
    applied = session.scalar(
        select(MetadataChange)
        .where(MetadataChange.batch_id == batch_id, MetadataChange.kind == "template")
        .order_by(MetadataChange.id.desc())
        .limit(1)
    )
    template = dict(applied.detail.get("attributes", {})) if applied else {}
    return BatchEdits(template=template, overrides=dict(batch.overrides or {}))


def check_patient_id(patient_id: object) -> str:
    if not isinstance(patient_id, str) or len(patient_id) > PATIENT_ID_LIMIT or any(
        ord(c) < 0x20 or c == "\\" for c in patient_id
    ):
        raise MetadataError(f"PatientID must be text of at most {PATIENT_ID_LIMIT} characters")
    return patient_id


def normalise_overrides(overrides: object) -> dict[str, Values]:
    if not isinstance(overrides, dict) or len(overrides) > MAX_PATIENTS:
        raise MetadataError(f"overrides must map at most {MAX_PATIENTS} PatientIDs to attribute values")
    out: dict[str, Values] = {}
    for patient_id, values in overrides.items():
        normalised = normalise_attributes(values)
        if normalised:
            out[check_patient_id(patient_id)] = normalised  # type: ignore[assignment]
    return out


def start_batch(session: Session, batch: Batch, user: User, *, template_name: str | None,
                overrides: object) -> None:
    """Apply what a new batch names: its template (by name, in the batch's facility) and its
    per-patient overrides; both are recorded."""
    if template_name is not None:
        template = by_name(session, batch.facility_id, template_name)
        if template is None:
            raise MetadataError(f"no template named {template_name!r} in this facility")
        batch.template = template.name
        record(session, batch, user, "template", template.name,
               {"template_id": template.id, "attributes": template.attributes})
    if overrides is not None:
        batch.overrides = normalise_overrides(overrides)
        for patient_id, values in batch.overrides.items():
            record(session, batch, user, "override", patient_id, {"set": values, "removed": []})


def started_deliveries(session: Session, study_ids: Iterable[int] = (),
                       instance_ids: Iterable[int] = (), lock: bool = True) -> int:
    """How many deliveries of these studies or instances have started (claimed, tried or
    done). With ``lock``, the unstarted ones stay locked until the caller commits, so a
    forwarding run cannot claim them between this check and the change (PostgreSQL)."""
    study_ids, instance_ids = list(study_ids), list(instance_ids)
    if not study_ids and not instance_ids:
        return 0
    scope = or_(Delivery.study_id.in_(study_ids), Delivery.instance_id.in_(instance_ids))
    if lock:
        session.execute(  # in id order, so two editors never lock each other's rows crosswise
            select(Delivery.id).where(scope, Delivery.state == DeliveryState.PENDING)
            .order_by(Delivery.id).with_for_update()
        )
    return len(session.scalars(
        select(Delivery.id).where(
            scope,
            or_(Delivery.state != DeliveryState.PENDING, Delivery.attempts > 0,
                Delivery.claim.is_not(None)),
        )
    ).all())


def patient_study_ids(session: Session, batch_id: int, patient_id: str) -> list[int]:
    """Studies holding this batch's instances of the patient: their instances, and any moved
    in with them, take the patient's values."""
    return list(session.scalars(
        select(Instance.study_id)
        .join(InstanceOrigin, InstanceOrigin.instance_id == Instance.id)
        .where(Instance.batch_id == batch_id, InstanceOrigin.patient_id == patient_id)
        .distinct()
    ))


def set_override(session: Session, batch: Batch, user: User, patient_id: str,
                 changes: object) -> Values:
    """Merge ``changes`` into the patient's override (``None`` removes an attribute from it);
    returns the patient's override as it now stands."""
    patient_id = check_patient_id(patient_id)
    normalised = normalise_attributes(changes, allow_removal=True)
    if not normalised:
        raise MetadataError("no attributes given")
    # The overrides are one JSON value, read, merged and written back: the batch row is
    # locked (FOR UPDATE on PostgreSQL) and read again, so a concurrent edit of another
    # patient is merged into, not overwritten. Locked before the deliveries, as every edit does.
    session.refresh(batch, with_for_update=True)
    if started_deliveries(session, study_ids=patient_study_ids(session, batch.id, patient_id)):
        raise EditConflict("this patient's studies have started going to the PACS; "
                           "their metadata can no longer be changed in this batch")
    overrides = {k: dict(v) for k, v in (batch.overrides or {}).items()}
    current = overrides.get(patient_id, {})
    removed = [k for k, v in normalised.items() if v is None and k in current]
    for keyword, value in normalised.items():
        if value is None:
            current.pop(keyword, None)
        else:
            current[keyword] = value
    if current:
        overrides[patient_id] = current
    else:
        overrides.pop(patient_id, None)
    batch.overrides = overrides  # a new dict, so the JSON column is seen as changed
    record(session, batch, user, "override", patient_id,
           {"set": {k: v for k, v in normalised.items() if v is not None}, "removed": removed})
    return current
