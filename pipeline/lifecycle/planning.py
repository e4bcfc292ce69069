"""What is due: which kept objects go to a colder class at ``now``, read from the catalogue.

The decision is ours, not the bucket's: S3-compatible test servers store lifecycle rules but
never run them, MinIO runs only some of them, and S3 itself skips objects under 128 KB. So the
nightly run asks the database (never a bucket listing) which kept objects are due for a colder
class at ``now`` (an argument: tests and the benchmark move the clock), and small instances are
bundled per study before they go cold. ``plan`` reads the catalogue (``StoredObject``) through
an explicit session and changes nothing; the tiers and classes it decides by are in
pipeline/lifecycle/policy.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from pipeline.lifecycle.policy import CLASSES, DEFAULT_BUNDLE_MAX_BYTES, TierPolicy, rank
from pipeline.models import ObjectState, StoredObject, StoredObjectKind


@dataclass(frozen=True)
class Move:
    """Copy one kept object onto itself in a colder class."""

    object_id: int
    object_key: str
    size: int
    from_class: str
    to_class: str


@dataclass(frozen=True)
class BundlePlan:
    """Small instances of one study that go cold together, as one archive object."""

    facility_id: int
    study_id: int
    storage_class: str
    member_ids: tuple[int, ...]


@dataclass
class Plan:
    moves: list[Move] = field(default_factory=list)
    bundles: list[BundlePlan] = field(default_factory=list)

    def summary(self) -> dict:
        by_class: dict[str, int] = defaultdict(int)
        bytes_by_class: dict[str, int] = defaultdict(int)
        for move in self.moves:
            by_class[move.to_class] += 1
            bytes_by_class[move.to_class] += move.size
        return {
            "moves": len(self.moves),
            "moves_by_class": dict(by_class),
            "bytes_by_class": dict(bytes_by_class),
            "bundles": len(self.bundles),
            "bundled_instances": sum(len(b.member_ids) for b in self.bundles),
        }


def _tiered_candidates(facility_ids: Sequence[int] | None):  # noqa: ANN202
    """Objects whose own bytes are tiered: instances kept as themselves, and bundles."""
    where = [
        StoredObject.state == ObjectState.KEPT,
        StoredObject.moving_to.is_(None),
        StoredObject.bundle_id.is_(None),
    ]
    if facility_ids:
        where.append(StoredObject.facility_id.in_(list(facility_ids)))
    return and_(*where)


def _served_minimum(classes: Sequence[str], now: datetime):  # noqa: ANN202
    """In one of ``classes`` and kept there its minimum duration. An object that reached a
    class late (a backlog, a policy change) waits there rather than leave early: leaving
    bills the rest of the minimum anyway, on top of the colder class. So tiering itself never
    causes an early-deletion charge."""
    free = [c for c in classes if CLASSES[c].min_days == 0]
    since = func.coalesce(StoredObject.tiered_at, StoredObject.stored_at)
    options = [StoredObject.storage_class.in_(free)] if free else []
    options += [and_(StoredObject.storage_class == c, since <= now - timedelta(days=CLASSES[c].min_days))
                for c in classes if CLASSES[c].min_days > 0]
    return or_(*options)


def plan(
    session: Session,
    policy: TierPolicy,
    now: datetime,
    *,
    bundle_below: int,
    bundle_max_bytes: int = DEFAULT_BUNDLE_MAX_BYTES,
    facility_ids: Sequence[int] | None = None,
    limit: int | None = None,
) -> Plan:
    """What is due at ``now``, from the catalogue: each object goes straight to the class of
    its age (a run that missed a night does not stop half way), small instances in a bundle.

    Coldest tier first, each a range query on (storage_class, stored_at), so a night's work is
    found by index, not by reading every row. ``limit`` caps moves plus bundled instances.
    A study's members past ``bundle_max_bytes`` go into a second bundle, and so on.
    """
    result = Plan()
    budget = limit if limit is not None else float("inf")
    small: dict[tuple[int, int, str], list[tuple[int, int]]] = defaultdict(list)
    seen: set[int] = set()
    cold_tiers = list(policy.tiers[1:])
    for index in range(len(cold_tiers) - 1, -1, -1):
        tier = cold_tiers[index]
        if budget <= 0:
            break
        warmer = [c for c in CLASSES if rank(c) < rank(tier.storage_class)]
        older_than = now - timedelta(days=tier.after_days)
        conditions = [
            _tiered_candidates(facility_ids),
            _served_minimum(warmer, now),
            StoredObject.stored_at <= older_than,
        ]
        if index + 1 < len(cold_tiers):
            # Objects old enough for the next colder tier were taken in the previous pass.
            conditions.append(StoredObject.stored_at > now - timedelta(days=cold_tiers[index + 1].after_days))
        rows = session.execute(
            select(StoredObject.id, StoredObject.object_key, StoredObject.size,
                   StoredObject.storage_class, StoredObject.kind, StoredObject.facility_id,
                   StoredObject.study_id)
            .where(*conditions)
            .order_by(StoredObject.stored_at, StoredObject.id)
            .limit(None if limit is None else int(budget))
        ).all()
        for row in rows:
            if row.id in seen:
                continue
            seen.add(row.id)
            if (row.kind == StoredObjectKind.INSTANCE and row.size < bundle_below
                    and row.storage_class == "STANDARD" and row.study_id is not None):
                # S3 will not transition it (< 128 KB) and a transition request alone costs
                # more than years of its storage: it goes cold inside its study's bundle.
                small[(row.facility_id, row.study_id, tier.storage_class)].append((row.id, row.size))
            else:
                result.moves.append(Move(row.id, row.object_key, row.size, row.storage_class,
                                         tier.storage_class))
            budget -= 1
    for (facility_id, study_id, storage_class), members in sorted(small.items()):
        for part in split_members(sorted(members), bundle_max_bytes):
            result.bundles.append(BundlePlan(facility_id, study_id, storage_class, part))
    return result


def split_members(members: Sequence[tuple[int, int]], max_bytes: int) -> list[tuple[int, ...]]:
    """(id, size) pairs in order, cut into runs of at most ``max_bytes`` (a member larger
    than that alone still makes one run)."""
    parts: list[tuple[int, ...]] = []
    current: list[int] = []
    total = 0
    for object_id, size in members:
        if current and total + size > max_bytes:
            parts.append(tuple(current))
            current, total = [], 0
        current.append(object_id)
        total += size
    if current:
        parts.append(tuple(current))
    return parts
