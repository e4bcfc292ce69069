"""The storage cost report: objects and bytes per tier and per facility, the estimated monthly
bill from per-GB prices, and the saving against keeping every instance in STANDARD.

From the catalogue only (no bucket listing). Billing follows S3's rules that matter here:
IA and GLACIER_IR bill at least 128 KiB per object; GLACIER and DEEP_ARCHIVE add 32 KiB per
object at their own price and 8 KiB at the STANDARD price. Bundles exist to beat exactly
those rules for small instances. The baseline prices every instance's bytes as its own
STANDARD object: what the bill would be with no lifecycle at all.

The benchmark computes its savings with this same module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from pipeline.lifecycle import CLASSES, DEFAULT_PRICES
from pipeline.models import DrState, Facility, ObjectState, StoredObject, StoredObjectKind

# AWS quotes "per GB-month" and meters 2^30 bytes as a GB.
GIB = 1024**3

# Objects physically in the primary bucket.
PRESENT = (ObjectState.KEPT, ObjectState.BUNDLED, ObjectState.REHYDRATED)


@dataclass
class Line:
    objects: int = 0
    bytes: int = 0
    billable_bytes: int = 0  # after minimum object sizes and per-object overheads
    monthly_cost: float = 0.0

    def add(self, other: Line) -> None:
        self.objects += other.objects
        self.bytes += other.bytes
        self.billable_bytes += other.billable_bytes
        self.monthly_cost += other.monthly_cost

    def as_dict(self) -> dict:
        return {"objects": self.objects, "bytes": self.bytes, "billable_bytes": self.billable_bytes,
                "monthly_cost": round(self.monthly_cost, 6)}


def line_cost(storage_class: str, objects: int, size_bytes: int, floored_bytes: int,
              prices: dict[str, float]) -> Line:
    """One (class, objects, bytes) aggregate priced. ``floored_bytes`` is the byte sum with
    each object raised to the class's minimum billable size."""
    facts = CLASSES[storage_class]
    billable = floored_bytes + objects * facts.overhead_bytes
    cost = billable / GIB * prices[storage_class]
    cost += objects * facts.overhead_standard_bytes / GIB * prices["STANDARD"]
    return Line(objects, size_bytes, billable + objects * facts.overhead_standard_bytes, cost)


@dataclass
class StorageReport:
    prices: dict[str, float]
    by_class: dict[str, Line] = field(default_factory=dict)
    by_facility: dict[str, dict[str, Line]] = field(default_factory=dict)
    total: Line = field(default_factory=Line)
    baseline: Line = field(default_factory=Line)
    instances: int = 0
    bundles: int = 0
    bundled_instances: int = 0
    dr: dict = field(default_factory=dict)

    @property
    def saving(self) -> float:
        """Fraction of the all-STANDARD bill saved (0.7 = 70% lower)."""
        if self.baseline.monthly_cost <= 0:
            return 0.0
        return 1.0 - self.total.monthly_cost / self.baseline.monthly_cost

    def as_dict(self) -> dict:
        return {
            "currency": "USD",
            "prices_per_gb_month": self.prices,
            "by_class": {c: line.as_dict() for c, line in self.by_class.items()},
            "by_facility": {
                name: {
                    "by_class": {c: line.as_dict() for c, line in lines.items()},
                    "total": _sum(lines.values()).as_dict(),
                }
                for name, lines in self.by_facility.items()
            },
            "total": self.total.as_dict(),
            "all_standard": self.baseline.as_dict(),
            "monthly_saving": round(self.baseline.monthly_cost - self.total.monthly_cost, 6),
            "saving_fraction": round(self.saving, 4),
            "instances": self.instances,
            "bundles": self.bundles,
            "bundled_instances": self.bundled_instances,
            "dr": self.dr,
        }


def _sum(lines) -> Line:  # noqa: ANN001
    total = Line()
    for line in lines:
        total.add(line)
    return total


def _floored(column, minimum: int):  # noqa: ANN001, ANN202
    return func.sum(case((column < minimum, minimum), else_=column)) if minimum else func.sum(column)


def build(session: Session, prices: dict[str, float] | None = None, *,
          facility_ids: Sequence[int] | None = None, dr_storage_class: str | None = None) -> StorageReport:
    """The report over the catalogue (optionally some facilities only)."""
    prices = {**DEFAULT_PRICES, **(prices or {})}
    report = StorageReport(prices=prices)
    names = dict(session.execute(select(Facility.id, Facility.name)).all())
    scope = [StoredObject.facility_id.in_(list(facility_ids))] if facility_ids else []

    for storage_class, facts in CLASSES.items():
        rows = session.execute(
            select(StoredObject.facility_id, func.count(), func.sum(StoredObject.size),
                   _floored(StoredObject.size, facts.min_billable_bytes))
            .where(StoredObject.storage_class == storage_class, StoredObject.state.in_(PRESENT), *scope)
            .group_by(StoredObject.facility_id)
        ).all()
        for facility_id, objects, size, floored in rows:
            line = line_cost(storage_class, objects, int(size or 0), int(floored or 0), prices)
            report.by_class.setdefault(storage_class, Line()).add(line)
            per = report.by_facility.setdefault(names.get(facility_id, str(facility_id)), {})
            per.setdefault(storage_class, Line()).add(line)
            report.total.add(line)

    # The baseline: every instance version as its own STANDARD object.
    objects, size = session.execute(
        select(func.count(), func.sum(StoredObject.size))
        .where(StoredObject.kind == StoredObjectKind.INSTANCE, StoredObject.state != ObjectState.MISSING,
               *scope)
    ).one()
    report.baseline = line_cost("STANDARD", objects, int(size or 0), int(size or 0), prices)
    report.instances = objects
    report.bundles = session.scalar(select(func.count()).where(
        StoredObject.kind == StoredObjectKind.BUNDLE, StoredObject.state == ObjectState.KEPT, *scope)) or 0
    report.bundled_instances = session.scalar(select(func.count()).where(
        StoredObject.state.in_([ObjectState.BUNDLED, ObjectState.RELEASED, ObjectState.REHYDRATED]),
        *scope)) or 0

    dr_rows = dict(session.execute(
        select(StoredObject.dr_state, func.count()).where(*scope).group_by(StoredObject.dr_state)).all())
    copied_objects, copied_bytes = session.execute(
        select(func.count(), func.sum(StoredObject.size))
        .where(StoredObject.dr_state == DrState.COPIED, *scope)
    ).one()
    report.dr = {"states": {str(k): v for k, v in dr_rows.items()}}
    if dr_storage_class:
        facts = CLASSES[dr_storage_class]
        floored = session.scalar(select(_floored(StoredObject.size, facts.min_billable_bytes))
                                 .where(StoredObject.dr_state == DrState.COPIED, *scope)) or 0
        report.dr["copy"] = line_cost(dr_storage_class, copied_objects, int(copied_bytes or 0),
                                      int(floored), prices).as_dict()
        report.dr["storage_class"] = dr_storage_class
    return report


def by_class_table(report: StorageReport) -> list[tuple[str, int, int, float]]:
    """Rows for a text table: class, objects, bytes, monthly cost."""
    lines = report.by_class
    return [(c, lines[c].objects, lines[c].bytes, lines[c].monthly_cost) for c in CLASSES if c in lines]
