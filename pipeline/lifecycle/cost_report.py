"""The storage cost report: objects and bytes per tier and per facility, the estimated monthly
bill from per-GB prices, and the saving against keeping every instance in STANDARD.

From the catalogue only (no bucket listing). Billing follows S3's rules that matter here:
IA and GLACIER_IR bill at least 128 KiB per object; GLACIER and DEEP_ARCHIVE add 32 KiB per
object at their own price and 8 KiB at the STANDARD price. Bundles exist to beat exactly
those rules for small instances. The baseline prices every instance's bytes as its own
STANDARD object: what the bill would be with no lifecycle at all.

The monthly bill is storage plus the fees the lifecycle causes over the 30 days before
``now`` (``Fees``):
- transitions: one write request into the new class per object the job moved or bundle it
  wrote (``tiered_at`` in the window), at the class's PUT/COPY/transition price, plus the
  STANDARD GET of every member a bundle written in the window read;
- cold reads: a modelled share of the bytes in IA and GLACIER_IR read back per month
  (``cold_reads_per_month``), at their per-GB retrieval price, and one GET per instance read
  (a bundled instance is a range GET of its bundle, so bundles do not cut this line); the
  baseline pays the STANDARD GET price for the same reads;
- restores: each archive object restored in the window (restore requests), per GB, per
  request, and its temporary copy billed at the STANDARD price for the restore days.
Minimum-duration (early deletion) charges have no line because the gateway never incurs
them: the job moves an object out of a class only after its minimum (``lifecycle.plan``),
the policy keeps each class at least its minimum, renditions expire while in STANDARD, and
nothing cold is deleted otherwise. DEEP_ARCHIVE's 180 days are never cut short: it is the
last tier.

The benchmark computes its savings with this same module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from pipeline.lifecycle.policy import (
    CLASSES,
    DEFAULT_COLD_READS_PER_MONTH,
    DEFAULT_PRICES,
    GET_REQUEST_PRICES,
    RESTORE_PRICES,
    RETRIEVAL_PRICES,
    WRITE_REQUEST_PRICES,
)
from pipeline.models import (
    DrState,
    Facility,
    ObjectState,
    RestoreRequest,
    RestoreState,
    StoredObject,
    StoredObjectKind,
    utcnow,
)

# AWS quotes "per GB-month" and meters 2^30 bytes as a GB.
GIB = 1024**3

# Objects physically in the primary bucket.
PRESENT = (ObjectState.KEPT, ObjectState.BUNDLED, ObjectState.REHYDRATED)
# The fees of one month: the 30 days before the report's clock.
MONTH = timedelta(days=30)
FEE_KINDS = ("transitions", "cold_reads", "restores")


@dataclass
class Fees:
    """Request and retrieval charges of one month, USD, with what they are counted from."""

    usd: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FEE_KINDS, 0.0))
    transition_requests: dict[str, int] = field(default_factory=dict)  # by class
    cold_read_bytes: float = 0.0
    cold_read_requests: float = 0.0
    bundled_member_reads: int = 0
    restores: int = 0
    restored_bytes: int = 0

    @property
    def total(self) -> float:
        return sum(self.usd.values())

    def add(self, kind: str, usd: float) -> None:
        self.usd[kind] = self.usd.get(kind, 0.0) + usd

    def as_dict(self) -> dict:
        return {
            **{kind: round(value, 6) for kind, value in self.usd.items()},
            "total": round(self.total, 6),
            "transition_requests": dict(self.transition_requests),
            "cold_read_gib": round(self.cold_read_bytes / GIB, 3),
            "cold_read_requests": round(self.cold_read_requests, 1),
            "bundled_member_reads": self.bundled_member_reads,
            "restores": self.restores,
            "restored_gib": round(self.restored_bytes / GIB, 3),
        }


@dataclass
class Line:
    objects: int = 0
    bytes: int = 0
    billable_bytes: int = 0  # after minimum object sizes and per-object overheads
    monthly_cost: float = 0.0
    instances: int = 0  # readable one by one: a bundle counts its members

    def add(self, other: Line) -> None:
        self.objects += other.objects
        self.bytes += other.bytes
        self.billable_bytes += other.billable_bytes
        self.monthly_cost += other.monthly_cost
        self.instances += other.instances

    def as_dict(self) -> dict:
        return {"objects": self.objects, "instances": self.instances, "bytes": self.bytes,
                "billable_bytes": self.billable_bytes, "monthly_cost": round(self.monthly_cost, 6)}


def line_cost(storage_class: str, objects: int, size_bytes: int, floored_bytes: int,
              prices: dict[str, float]) -> Line:
    """One (class, objects, bytes) aggregate priced. ``floored_bytes`` is the byte sum with
    each object raised to the class's minimum billable size."""
    facts = CLASSES[storage_class]
    billable = floored_bytes + objects * facts.overhead_bytes
    cost = billable / GIB * prices[storage_class]
    cost += objects * facts.overhead_standard_bytes / GIB * prices["STANDARD"]
    return Line(objects, size_bytes, billable + objects * facts.overhead_standard_bytes, cost, objects)


@dataclass
class StorageReport:
    prices: dict[str, float]
    by_class: dict[str, Line] = field(default_factory=dict)
    by_facility: dict[str, dict[str, Line]] = field(default_factory=dict)
    total: Line = field(default_factory=Line)  # storage
    baseline: Line = field(default_factory=Line)  # storage with no lifecycle
    fees: Fees = field(default_factory=Fees)
    baseline_fees: Fees = field(default_factory=Fees)
    facility_fees: dict[str, Fees] = field(default_factory=dict)
    cold_reads_per_month: float = DEFAULT_COLD_READS_PER_MONTH
    window: tuple[datetime, datetime] | None = None
    instances: int = 0
    bundles: int = 0
    bundled_instances: int = 0
    dr: dict = field(default_factory=dict)

    @property
    def monthly_cost(self) -> float:
        """Storage plus the month's request and retrieval fees."""
        return self.total.monthly_cost + self.fees.total

    @property
    def baseline_cost(self) -> float:
        return self.baseline.monthly_cost + self.baseline_fees.total

    @property
    def saving(self) -> float:
        """Fraction of the all-STANDARD bill saved, fees included (0.7 = 70% lower)."""
        if self.baseline_cost <= 0:
            return 0.0
        return 1.0 - self.monthly_cost / self.baseline_cost

    @property
    def storage_saving(self) -> float:
        """The same, storage only (what the saving was before fees were counted)."""
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
                    "fees": self.facility_fees.get(name, Fees()).as_dict(),
                }
                for name, lines in self.by_facility.items()
            },
            "total": self.total.as_dict(),
            "fees": self.fees.as_dict(),
            "monthly_cost": round(self.monthly_cost, 6),
            "all_standard": self.baseline.as_dict(),
            "all_standard_fees": self.baseline_fees.as_dict(),
            "all_standard_monthly_cost": round(self.baseline_cost, 6),
            "monthly_saving": round(self.baseline_cost - self.monthly_cost, 6),
            "saving_fraction": round(self.saving, 4),
            "storage_saving_fraction": round(self.storage_saving, 4),
            "cold_reads_per_month": self.cold_reads_per_month,
            "fees_window": [t.isoformat() for t in self.window] if self.window else None,
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


def _fees(session: Session, report: StorageReport, names: dict[int, str], scope: list, now: datetime,
          restore_days: int) -> None:
    """The month's fees, in total and per facility (see the module docstring)."""
    start = now - MONTH

    def charge(facility_id: int, kind: str, usd: float) -> Fees:
        report.fees.add(kind, usd)
        per = report.facility_fees.setdefault(names.get(facility_id, str(facility_id)), Fees())
        per.add(kind, usd)
        return per

    # Transitions: the job's copies and bundle writes (their own requests, whoever ran them).
    rows = session.execute(
        select(StoredObject.facility_id, StoredObject.storage_class, func.count())
        .where(StoredObject.tiered_at > start, StoredObject.tiered_at <= now,
               StoredObject.state.in_(PRESENT), *scope)
        .group_by(StoredObject.facility_id, StoredObject.storage_class)
    ).all()
    for facility_id, storage_class, count in rows:
        per = charge(facility_id, "transitions", count * WRITE_REQUEST_PRICES[storage_class] / 1000)
        for fees in (report.fees, per):
            fees.transition_requests[storage_class] = fees.transition_requests.get(storage_class, 0) + count
    # Bundling reads each member once from STANDARD (``created_at``: a bundle's later moves
    # to colder classes copy it server-side and read no member again).
    members = _members_per_bundle([ObjectState.BUNDLED, ObjectState.RELEASED, ObjectState.REHYDRATED], scope)
    rows = session.execute(
        select(StoredObject.facility_id, func.sum(members.c.members))
        .join(members, members.c.bundle_id == StoredObject.id)
        .where(StoredObject.kind == StoredObjectKind.BUNDLE, StoredObject.created_at > start,
               StoredObject.created_at <= now, StoredObject.state.in_(PRESENT), *scope)
        .group_by(StoredObject.facility_id)
    ).all()
    for facility_id, count in rows:
        count = int(count or 0)  # SUM is a numeric on PostgreSQL
        charge(facility_id, "transitions", count * GET_REQUEST_PRICES["STANDARD"] / 1000)
        report.fees.bundled_member_reads += count

    # Cold reads (modelled): a share of what sits in classes read without a restore.
    share = report.cold_reads_per_month
    ids = {name: facility_id for facility_id, name in names.items()}
    for facility_name, lines in report.by_facility.items():
        facility_id = ids.get(facility_name) or int(facility_name)
        for storage_class, line in lines.items():
            if storage_class not in RETRIEVAL_PRICES or share == 0:
                continue
            read_bytes, reads = line.bytes * share, line.instances * share
            charge(facility_id, "cold_reads",
                   read_bytes / GIB * RETRIEVAL_PRICES[storage_class]
                   + reads * GET_REQUEST_PRICES[storage_class] / 1000)
            report.fees.cold_read_bytes += read_bytes
            report.fees.cold_read_requests += reads
            # With no lifecycle the same reads are STANDARD GETs.
            report.baseline_fees.add("cold_reads", reads * GET_REQUEST_PRICES["STANDARD"] / 1000)

    # Restores: one per archive object brought back in the window, however many asked for it.
    restored = session.execute(
        select(StoredObject.facility_id, StoredObject.storage_class, StoredObject.size,
               func.min(RestoreRequest.restore_tier))
        .join(RestoreRequest, RestoreRequest.stored_object_id == StoredObject.id)
        .where(RestoreRequest.requested_at > start, RestoreRequest.requested_at <= now,
               RestoreRequest.state != RestoreState.FAILED, *scope)
        .group_by(StoredObject.id, StoredObject.facility_id, StoredObject.storage_class, StoredObject.size)
    ).all()
    for facility_id, storage_class, size, tier in restored:
        if (storage_class, tier) not in RESTORE_PRICES:
            continue  # readable without a restore: nothing was restored
        per_gb, per_thousand = RESTORE_PRICES[(storage_class, tier)]
        gib = size / GIB
        charge(facility_id, "restores", gib * per_gb + per_thousand / 1000
               + gib * report.prices["STANDARD"] * restore_days / 30)
        report.fees.restores += 1
        report.fees.restored_bytes += size


def _members_per_bundle(states: Sequence[ObjectState], scope: list):  # noqa: ANN202
    """(bundle_id, members) in ``states``: counted per bundle first and then joined, so one
    pass over the members, whatever the planner believes about how many bundles there are."""
    return (select(StoredObject.bundle_id, func.count().label("members"))
            .where(StoredObject.bundle_id.is_not(None), StoredObject.state.in_(list(states)), *scope)
            .group_by(StoredObject.bundle_id).subquery())


def build(session: Session, prices: dict[str, float] | None = None, *,
          facility_ids: Sequence[int] | None = None, dr_storage_class: str | None = None,
          now: datetime | None = None, cold_reads_per_month: float = DEFAULT_COLD_READS_PER_MONTH,
          restore_days: int = 7) -> StorageReport:
    """The report over the catalogue (optionally some facilities only), with the fees of the
    30 days before ``now`` (the clock is an argument, like the tiering job's)."""
    prices = {**DEFAULT_PRICES, **(prices or {})}
    now = now or utcnow()
    report = StorageReport(prices=prices, cold_reads_per_month=cold_reads_per_month,
                           window=(now - MONTH, now))
    names = dict(session.execute(select(Facility.id, Facility.name)).all())
    scope = [StoredObject.facility_id.in_(list(facility_ids))] if facility_ids else []

    # A bundle counts its members as instances (each read alone by a range GET).
    members = _members_per_bundle([ObjectState.BUNDLED, ObjectState.RELEASED], scope)
    for storage_class, facts in CLASSES.items():
        rows = session.execute(
            select(StoredObject.facility_id, func.count(), func.sum(StoredObject.size),
                   _floored(StoredObject.size, facts.min_billable_bytes),
                   func.sum(func.coalesce(members.c.members, 1)))
            .outerjoin(members, members.c.bundle_id == StoredObject.id)
            .where(StoredObject.storage_class == storage_class, StoredObject.state.in_(PRESENT), *scope)
            .group_by(StoredObject.facility_id)
        ).all()
        for facility_id, objects, size, floored, instances in rows:
            line = line_cost(storage_class, objects, int(size or 0), int(floored or 0), prices)
            line.instances = int(instances or 0)  # SUM is a numeric on PostgreSQL
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
    _fees(session, report, names, scope, now, restore_days)
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
        # Each copy is a PUT in the DR class; those of the month are its fee.
        copies = session.scalar(select(func.count()).where(
            StoredObject.dr_state == DrState.COPIED, StoredObject.dr_copied_at > now - MONTH,
            StoredObject.dr_copied_at <= now, *scope)) or 0
        report.dr["copy_requests"] = copies
        report.dr["copy_requests_usd"] = round(copies * WRITE_REQUEST_PRICES[dr_storage_class] / 1000, 6)
        report.dr["storage_class"] = dr_storage_class
    return report


def by_class_table(report: StorageReport) -> list[tuple[str, int, int, float]]:
    """Rows for a text table: class, objects, bytes, monthly cost."""
    lines = report.by_class
    return [(c, lines[c].objects, lines[c].bytes, lines[c].monthly_cost) for c in CLASSES if c in lines]
