"""Drill-down reads for dashboards: facilities -> a facility's users -> a user's uploads,
each with totals and a time series over a date range at hour, day or week granularity.

Totals and series come from the materialised tables (pipeline/stats.py): the overview from
``daily_facility_stats`` (or ``hourly_stats`` at hour granularity), a facility and a user
from ``hourly_stats``. Only a user's upload listing reads raw rows, with a fixed number of
statements whatever the page size (no N+1): uploads, then their instances with studies,
then their deliveries grouped per instance, then the batch labels.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from pipeline.models import (
    Batch,
    DailyFacilityStats,
    Delivery,
    Facility,
    HourlyStats,
    Instance,
    Study,
    Upload,
    User,
)
from pipeline.stats import METRIC_COLUMNS, latency_summary, truncate

GRANULARITIES = ("hour", "day", "week")
# Longest range per granularity: bounds the series a single request can ask for.
MAX_POINTS = {"hour": 24 * 93, "day": 3 * 366, "week": 10 * 53}


class RangeError(ValueError):
    pass


@dataclass(frozen=True)
class Range:
    start: datetime
    end: datetime  # exclusive
    granularity: str

    def as_dict(self) -> dict:
        return {"from": self.start.isoformat(), "to": self.end.isoformat(),
                "granularity": self.granularity}


def parse_range(start: str | None, end: str | None, granularity: str | None,
                now: datetime | None = None) -> Range:
    """Dates or datetimes in ISO 8601 (UTC when no offset). Default: the last 30 days by day."""
    granularity = granularity or "day"
    if granularity not in GRANULARITIES:
        raise RangeError(f"granularity must be one of {', '.join(GRANULARITIES)}")
    now = now or datetime.now(UTC)
    try:
        end_at = _parse(end) if end else (now + timedelta(hours=1)).replace(minute=0, second=0,
                                                                            microsecond=0)
        start_at = _parse(start) if start else end_at - timedelta(days=30)
    except ValueError as exc:
        raise RangeError("from and to must be ISO 8601 dates, e.g. 2026-03-01") from exc
    # Whole hours (whole days above hour granularity): materialised rows and buckets line up.
    unit = {"hour": timedelta(hours=1)}.get(granularity, timedelta(days=1))
    floor = {"minute": 0, "second": 0, "microsecond": 0} | ({} if granularity == "hour" else {"hour": 0})
    start_at = start_at.replace(**floor)
    if end_at != end_at.replace(**floor):
        end_at = end_at.replace(**floor) + unit
    if end_at <= start_at:
        raise RangeError("to must be after from")
    step = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}[granularity]
    if (end_at - start_at) / step > MAX_POINTS[granularity]:
        raise RangeError(f"range too long for {granularity} granularity "
                         f"(at most {MAX_POINTS[granularity]} points)")
    return Range(start_at, end_at, granularity)


def _parse(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _as_utc(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _sums(table) -> list:  # noqa: ANN001
    return [func.coalesce(func.sum(getattr(table, name)), 0).label(name) for name in METRIC_COLUMNS] + [
        func.coalesce(func.max(table.latency_max_ms), 0).label("latency_max_ms")]


def measures(row: object) -> dict:
    """The public shape of a group of summed metric columns."""
    return {
        "uploads": int(row.uploads or 0),  # type: ignore[attr-defined]
        "bytes": int(row.bytes or 0),  # type: ignore[attr-defined]
        "studies": int(row.studies or 0),  # type: ignore[attr-defined]
        "quarantined": int(row.quarantined or 0),  # type: ignore[attr-defined]
        "delivered": int(row.delivered or 0),  # type: ignore[attr-defined]
        "pending_deliveries": int(row.pending_deliveries or 0),  # type: ignore[attr-defined]
        "failed_deliveries": int(row.failed_deliveries or 0),  # type: ignore[attr-defined]
        "latency": latency_summary(row),
    }


def _source(rng: Range):  # noqa: ANN202
    """Daily rows answer day and week questions; hourly rows answer hour questions."""
    if rng.granularity == "hour":
        return HourlyStats, HourlyStats.hour
    return DailyFacilityStats, DailyFacilityStats.day


def _series(session: Session, table, time_col, rng: Range, *where) -> list[dict]:  # noqa: ANN001
    bucket = truncate(session, time_col, rng.granularity)
    rows = session.execute(
        select(bucket.label("bucket"), *_sums(table))
        .where(time_col >= rng.start, time_col < rng.end, *where)
        .group_by(bucket).order_by(bucket)
    ).all()
    found = {_as_utc(r.bucket): measures(r) for r in rows}
    # Every bucket of the range, empty ones as zeros, so a chart's time axis is the range.
    return [{"t": t.isoformat(), **found.get(t, measures(_Empty()))} for t in bucket_starts(rng)]


def bucket_starts(rng: Range) -> list[datetime]:
    if rng.granularity == "week":
        first = rng.start - timedelta(days=rng.start.weekday())
        step = timedelta(weeks=1)
    else:
        first = rng.start
        step = timedelta(hours=1) if rng.granularity == "hour" else timedelta(days=1)
    out = []
    while first < rng.end:
        out.append(first)
        first += step
    return out


def facilities_overview(session: Session, rng: Range, facility_ids: Sequence[int] | None) -> dict:
    """Every facility the caller may see (``None``: all) with totals, and the series.
    Two statements: per-facility sums (totals are added up here), and the series."""
    table, time_col = _source(rng)
    scope = [table.facility_id.in_(facility_ids)] if facility_ids is not None else []
    sums = (select(table.facility_id.label("facility_id"), *_sums(table))
            .where(time_col >= rng.start, time_col < rng.end, *scope)
            .group_by(table.facility_id).subquery("sums"))
    rows = session.execute(
        select(Facility.id, Facility.name, sums)
        .outerjoin(sums, sums.c.facility_id == Facility.id)
        .where(*([Facility.id.in_(facility_ids)] if facility_ids is not None else []))
        .order_by(Facility.name)
    ).all()
    return {
        "range": rng.as_dict(),
        "totals": measures(_combine(rows)),
        "series": _series(session, table, time_col, rng, *scope),
        "facilities": [{"id": r.id, "name": r.name, **measures(r)} for r in rows],
    }


class _Empty:
    """A group with no rows: every measure zero."""

    def __getattr__(self, name: str) -> int:
        return 0


class _Combined:
    """Sums of metric rows, added up in Python (a handful of rows, one statement saved)."""

    def __init__(self, rows: Sequence[object]) -> None:
        for name in METRIC_COLUMNS:
            setattr(self, name, sum(int(getattr(r, name) or 0) for r in rows))
        self.latency_max_ms = max((int(r.latency_max_ms or 0) for r in rows), default=0)  # type: ignore[attr-defined]


def _combine(rows: Sequence[object]) -> _Combined:
    return _Combined(rows)


def facility_detail(session: Session, rng: Range, facility_id: int) -> dict | None:
    """Four statements: the facility, its (status, modality) groups (totals and both mixes
    are added up from those few rows), its users with their sums, and the series."""
    facility = session.get(Facility, facility_id)
    if facility is None:
        return None
    window = and_(HourlyStats.facility_id == facility_id, HourlyStats.hour >= rng.start,
                  HourlyStats.hour < rng.end)
    groups = session.execute(
        select(HourlyStats.status, HourlyStats.modality, *_sums(HourlyStats)).where(window)
        .group_by(HourlyStats.status, HourlyStats.modality)).all()
    status_mix: dict[str, int] = defaultdict(int)
    modality_mix: dict[str, int] = defaultdict(int)
    for group in groups:
        status_mix[group.status] += int(group.uploads or 0)
        modality_mix[group.modality or "unknown"] += int(group.uploads or 0)
    # Users with their totals in one statement (join, not a query per user).
    users = session.execute(
        select(User.id, User.email, User.role, *_sums(HourlyStats))
        .join(HourlyStats, and_(HourlyStats.user_id == User.id, window), isouter=True)
        .where(User.facility_id == facility_id)
        .group_by(User.id, User.email, User.role)
        .order_by(func.coalesce(func.sum(HourlyStats.uploads), 0).desc(), User.id)
    ).all()
    if rng.granularity == "hour":
        series = _series(session, HourlyStats, HourlyStats.hour, rng, HourlyStats.facility_id == facility_id)
    else:
        series = _series(session, DailyFacilityStats, DailyFacilityStats.day, rng,
                         DailyFacilityStats.facility_id == facility_id)
    return {
        "range": rng.as_dict(),
        "facility": {"id": facility.id, "name": facility.name},
        "totals": measures(_combine(groups)),
        "series": series,
        "status_mix": dict(sorted(status_mix.items(), key=lambda kv: -kv[1])),
        "modality_mix": dict(sorted(modality_mix.items(), key=lambda kv: -kv[1])),
        "users": [{"id": u.id, "email": u.email, "role": u.role, **measures(u)} for u in users],
    }


def user_detail(session: Session, rng: Range, facility_id: int, user_id: int, *, limit: int = 50,
                before: datetime | None = None) -> dict | None:
    user = session.get(User, user_id)
    if user is None or user.facility_id != facility_id:
        return None
    window = and_(HourlyStats.user_id == user_id, HourlyStats.hour >= rng.start, HourlyStats.hour < rng.end)
    by_status = session.execute(
        select(HourlyStats.status, *_sums(HourlyStats)).where(window).group_by(HourlyStats.status)).all()
    return {
        "range": rng.as_dict(),
        "facility": {"id": facility_id},
        "user": {"id": user.id, "email": user.email, "role": user.role},
        "totals": measures(_combine(by_status)),
        "series": _series(session, HourlyStats, HourlyStats.hour, rng, HourlyStats.user_id == user_id),
        "status_mix": {g.status: int(g.uploads or 0) for g in by_status},
        "uploads": upload_listing(session, user_id, rng, limit=limit, before=before),
    }


def upload_listing(session: Session, user_id: int, rng: Range, *, limit: int = 50,
                   before: datetime | None = None) -> list[dict]:
    """A user's uploads in the range, newest first, in four statements whatever ``limit``."""
    query = (select(Upload).where(Upload.user_id == user_id, Upload.created_at >= rng.start,
                                  Upload.created_at < rng.end)
             .order_by(Upload.created_at.desc(), Upload.id.desc()).limit(limit))
    if before is not None:
        query = query.where(Upload.created_at < before)
    uploads = session.scalars(query).all()
    if not uploads:
        return []
    facility_ids = {u.facility_id for u in uploads}
    sops = [u.sop_instance_uid for u in uploads if u.sop_instance_uid]
    instances: dict[tuple[int, str], tuple[Instance, Study]] = {}
    if sops:
        for instance, study in session.execute(
            select(Instance, Study).join(Study, Study.id == Instance.study_id)
            .where(Instance.facility_id.in_(facility_ids), Instance.sop_instance_uid.in_(sops))
        ):
            instances[(instance.facility_id, instance.sop_instance_uid)] = (instance, study)
    deliveries: dict[int, dict[str, int]] = defaultdict(dict)
    if instances:
        for instance_id, state, count in session.execute(
            select(Delivery.instance_id, Delivery.state, func.count())
            .where(Delivery.instance_id.in_([i.id for i, _ in instances.values()]))
            .group_by(Delivery.instance_id, Delivery.state)
        ):
            deliveries[instance_id][state] = count
    labels = dict(session.execute(
        select(Batch.id, Batch.label).where(Batch.id.in_({u.batch_id for u in uploads}))).all())
    rows = []
    for upload in uploads:
        found = instances.get((upload.facility_id, upload.sop_instance_uid or ""))
        instance, study = found if found else (None, None)
        rows.append({
            "id": upload.id,
            "batch_id": upload.batch_id,
            "batch_label": labels.get(upload.batch_id),
            "created_at": upload.created_at.isoformat(),
            "state": upload.state,
            "length": upload.length,
            "quarantine_reason": upload.quarantine_reason,
            "modality": study.modality if study else None,
            "study_id": study.id if study else None,
            "deliveries": deliveries.get(instance.id, {}) if instance else {},
        })
    return rows


def upload_listing_naive(session: Session, user_id: int, rng: Range, *, limit: int = 50) -> list[dict]:
    """The same listing the way an ORM invites: lazy loads per row (N+1). Kept only as the
    benchmark's and the statement-count test's baseline."""
    uploads = session.scalars(
        select(Upload).where(Upload.user_id == user_id, Upload.created_at >= rng.start,
                             Upload.created_at < rng.end)
        .order_by(Upload.created_at.desc(), Upload.id.desc()).limit(limit)).all()
    rows = []
    for upload in uploads:
        instance = session.scalar(select(Instance).where(
            Instance.facility_id == upload.facility_id,
            Instance.sop_instance_uid == upload.sop_instance_uid)) if upload.sop_instance_uid else None
        study = session.get(Study, instance.study_id) if instance else None
        states: dict[str, int] = {}
        if instance is not None:
            for delivery in session.scalars(select(Delivery).where(Delivery.instance_id == instance.id)):
                states[delivery.state] = states.get(delivery.state, 0) + 1
        rows.append({
            "id": upload.id, "batch_id": upload.batch_id, "batch_label": upload.batch.label,
            "created_at": upload.created_at.isoformat(), "state": upload.state,
            "length": upload.length, "quarantine_reason": upload.quarantine_reason,
            "modality": study.modality if study else None, "study_id": study.id if study else None,
            "deliveries": states,
        })
    return rows


__all__ = ["GRANULARITIES", "Range", "RangeError", "facilities_overview",
           "facility_detail", "parse_range", "upload_listing", "upload_listing_naive", "user_detail"]
