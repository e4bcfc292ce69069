"""Drill-down reads for dashboards: facilities -> a facility's users -> a user's uploads,
each with totals and a time series over a date range at hour, day or week granularity.

Totals and series come from the materialised tables (pipeline/analytics/stats.py): the overview and a
facility's series from ``daily_facility_stats`` by day, from ``weekly_facility_stats`` (plus
the daily rows of partial weeks at the range's edges) by week, from ``hourly_stats`` by hour;
a facility's mixes and users and a user's figures from ``hourly_stats`` (covering indexes).
Only a user's upload listing reads raw rows, with a fixed number of statements whatever the
page size (no N+1): uploads with their batch labels, instances and studies, then their
deliveries grouped per instance.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

from sqlalchemy import and_, bindparam, func, select, tuple_, union_all
from sqlalchemy.orm import Session

from pipeline.analytics.stats import METRIC_COLUMNS, latency_summary, truncate, week_floor
from pipeline.models import (
    Batch,
    DailyFacilityStats,
    Delivery,
    Facility,
    HourlyStats,
    Instance,
    InstanceVersion,
    Study,
    Upload,
    User,
    WeeklyFacilityStats,
)

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


# Aggregate expressions are built once per table and statements once per shape (with bind
# parameters for the range and scope): building SQLAlchemy expressions for two dozen
# columns cost more than running the query on a quiet database.
_SUMS: dict[object, list] = {}


def _sums(table) -> list:  # noqa: ANN001
    """SUM of every metric column and MAX of the latency maximum (table, or subquery's .c)."""
    if table not in _SUMS:
        cols = table.c if hasattr(table, "c") else table
        _SUMS[table] = [func.coalesce(func.sum(getattr(cols, name)), 0).label(name)
                        for name in METRIC_COLUMNS] + [
            func.coalesce(func.max(cols.latency_max_ms), 0).label("latency_max_ms")]
    return _SUMS[table]


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


_MEASURE_NAMES = (*METRIC_COLUMNS, "latency_max_ms")


def _scoped(table, statement, scope: str):  # noqa: ANN001, ANN202
    """``statement`` limited to the facilities of ``scope``: "all" (no limit), "some" (the
    ``facility_ids`` parameter) or "one" (``facility_id``)."""
    if scope == "some":
        return statement.where(table.facility_id.in_(bindparam("facility_ids", expanding=True)))
    if scope == "one":
        return statement.where(table.facility_id == bindparam("facility_id"))
    return statement


@cache
def _period_rows(granularity: str, scope: str):  # noqa: ANN202
    """(bucket, facility_id, measures...) rows answering a day or week question: daily rows
    by day; by week, whole weeks from the weekly rollup and the days at either edge of the
    range that do not make a whole week from the daily rows, under their week's bucket."""
    daily, weekly = DailyFacilityStats, WeeklyFacilityStats

    def measures_of(table):  # noqa: ANN001, ANN202
        return [getattr(table, name) for name in _MEASURE_NAMES]

    def days(bucket, start: str, end: str):  # noqa: ANN001, ANN202
        return _scoped(daily, select(bucket.label("bucket"), daily.facility_id, *measures_of(daily))
                       .where(daily.day >= bindparam(start), daily.day < bindparam(end)), scope)

    if granularity == "day":
        return days(daily.day, "start", "end").subquery("period_rows")
    whole = _scoped(weekly, select(weekly.week.label("bucket"), weekly.facility_id, *measures_of(weekly))
                    .where(weekly.week >= bindparam("whole_start"), weekly.week < bindparam("whole_end")),
                    scope)
    head = days(bindparam("head_bucket", type_=daily.day.type), "start", "head_end")
    tail = days(bindparam("tail_bucket", type_=daily.day.type), "tail_start", "end")
    return union_all(whole, head, tail).subquery("period_rows")


def _period_params(rng: Range) -> dict:
    if rng.granularity == "day":
        return {"start": rng.start, "end": rng.end}
    first = week_floor(rng.start)
    whole_start = first if first == rng.start else first + timedelta(weeks=1)
    whole_end = week_floor(rng.end)
    tail_start = max(whole_start, whole_end)
    return {"start": rng.start, "end": rng.end, "whole_start": whole_start, "whole_end": whole_end,
            "head_bucket": first, "head_end": min(whole_start, rng.end),
            "tail_bucket": week_floor(tail_start), "tail_start": tail_start}


@cache
def _period_statements(granularity: str, scope: str):  # noqa: ANN202
    """Per-facility sums and the series, both over _period_rows; and both in one statement
    (GROUPING SETS: one scan, one round trip) for PostgreSQL."""
    rows = _period_rows(granularity, scope)
    by_facility = select(rows.c.facility_id, *_sums(rows)).group_by(rows.c.facility_id)
    series = select(rows.c.bucket, *_sums(rows)).group_by(rows.c.bucket)
    both = (select(rows.c.bucket, rows.c.facility_id, *_sums(rows))
            .group_by(func.grouping_sets(rows.c.bucket, rows.c.facility_id)))
    return by_facility, series, both


def _series_rows(rows, rng: Range) -> list[dict]:  # noqa: ANN001
    found = {_as_utc(r.bucket): measures(r) for r in rows}
    # Every bucket of the range, empty ones as zeros, so a chart's time axis is the range.
    zero = measures(_Empty())
    return [{"t": t.isoformat(), **found.get(t, zero)} for t in bucket_starts(rng)]


def _hourly_series_rows(session: Session, rng: Range, **scope: int) -> list[dict]:
    """A series from hourly rows (hour granularity, or a user's series at any granularity)."""
    table = HourlyStats
    where = [table.hour >= rng.start, table.hour < rng.end]
    for column, value in scope.items():
        where.append(getattr(table, column) == value)
    bucket = table.hour if rng.granularity == "hour" else truncate(session, table.hour, rng.granularity)
    rows = session.execute(
        select(bucket.label("bucket"), *_sums(table)).where(*where).group_by(bucket)).all()
    return _series_rows(rows, rng)


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
    Two statements on PostgreSQL: the facilities, then per-facility sums (totals are added up
    here) and the series together; day and week questions read daily and weekly rollups,
    hour questions hourly rows."""
    scope = "all" if facility_ids is None else "some"
    names = session.execute(
        select(Facility.id, Facility.name)
        .where(*([Facility.id.in_(facility_ids)] if facility_ids is not None else []))
        .order_by(Facility.name)).all()
    if rng.granularity == "hour":
        where = [HourlyStats.hour >= rng.start, HourlyStats.hour < rng.end]
        if facility_ids is not None:
            where.append(HourlyStats.facility_id.in_(facility_ids))
        sums = session.execute(select(HourlyStats.facility_id, *_sums(HourlyStats)).where(*where)
                               .group_by(HourlyStats.facility_id)).all()
        series_rows = session.execute(select(HourlyStats.hour.label("bucket"), *_sums(HourlyStats))
                                      .where(*where).group_by(HourlyStats.hour)).all()
    else:
        by_facility, series, both = _period_statements(rng.granularity, scope)
        params = _period_params(rng)
        if facility_ids is not None:
            params["facility_ids"] = list(facility_ids)
        if session.get_bind().dialect.name == "postgresql":
            # A facility row has no bucket, a bucket row no facility (neither is ever NULL).
            grouped = session.execute(both, params).all()
            sums = [r for r in grouped if r.facility_id is not None]
            series_rows = [r for r in grouped if r.bucket is not None]
        else:
            sums = session.execute(by_facility, params).all()
            series_rows = session.execute(series, params).all()
    by_id = {r.facility_id: r for r in sums}
    facilities = [{"id": f.id, "name": f.name, **measures(by_id.get(f.id, _Empty()))} for f in names]
    return {
        "range": rng.as_dict(),
        "totals": measures(_Combined([by_id[f.id] for f in names if f.id in by_id])),
        "series": _series_rows(series_rows, rng),
        "facilities": facilities,
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


@cache
def _facility_statements(granularity: str):  # noqa: ANN202
    """The facility with its users (one statement; no row: no such facility), and over its
    hourly rows (index-only on the covering facility-first index) the (status, modality)
    groups, per-user sums and the series buckets, in one GROUPING SETS statement
    (PostgreSQL)."""
    people = (select(Facility.id.label("facility_id"), Facility.name, User.id, User.email, User.role)
              .outerjoin(User, User.facility_id == Facility.id)
              .where(Facility.id == bindparam("facility_id")))
    window = and_(HourlyStats.facility_id == bindparam("facility_id"), HourlyStats.hour >= bindparam("start"),
                  HourlyStats.hour < bindparam("end"))
    # The series comes from the same scan of the facility's hourly rows (a year is ~1,200
    # rows): one statement and its planning fewer than reading the daily or weekly rollup,
    # which hold the same sums. Buckets truncate in UTC, weeks from Monday.
    bucket = (HourlyStats.hour if granularity == "hour" else
              func.timezone("UTC", func.date_trunc(granularity, func.timezone("UTC", HourlyStats.hour))))
    sets = [tuple_(HourlyStats.status, HourlyStats.modality), HourlyStats.user_id, bucket]
    grouped = (select(HourlyStats.status, HourlyStats.modality, HourlyStats.user_id,
                      bucket.label("bucket"), *_sums(HourlyStats))
               .where(window).group_by(func.grouping_sets(*sets)))
    return people, grouped


def facility_detail(session: Session, rng: Range, facility_id: int) -> dict | None:
    """The facility and its users, then its grouped hourly sums: status and modality mixes
    and totals added up from the few (status, modality) rows, per-user sums, and the series
    (two statements)."""
    if session.get_bind().dialect.name != "postgresql":
        return _facility_detail_portable(session, rng, facility_id)
    people_statement, grouped_statement = _facility_statements(rng.granularity)
    params = {"facility_id": facility_id, "start": rng.start, "end": rng.end}
    people = session.execute(people_statement, params).all()
    if not people:
        return None
    grouped = session.execute(grouped_statement, params).all()
    # Which grouping set a row belongs to: the one key that is not NULL (none ever is).
    groups = [r for r in grouped if r.status is not None]
    per_user = {r.user_id: r for r in grouped if r.user_id is not None}
    series = _series_rows([r for r in grouped if r.bucket is not None], rng)
    users = sorted((p for p in people if p.id is not None),
                   key=lambda p: (-int(getattr(per_user.get(p.id), "uploads", 0) or 0), p.id))
    return _facility_answer(rng, people[0], groups, series,
                            [{"id": u.id, "email": u.email, "role": u.role,
                              **measures(per_user.get(u.id, _Empty()))} for u in users])


def _facility_answer(rng: Range, facility, groups, series: list[dict], users: list[dict]) -> dict:  # noqa: ANN001
    status_mix: dict[str, int] = defaultdict(int)
    modality_mix: dict[str, int] = defaultdict(int)
    for group in groups:
        status_mix[group.status] += int(group.uploads or 0)
        modality_mix[group.modality or "unknown"] += int(group.uploads or 0)
    return {
        "range": rng.as_dict(),
        "facility": {"id": facility.facility_id, "name": facility.name},
        "totals": measures(_Combined(groups)),
        "series": series,
        "status_mix": dict(sorted(status_mix.items(), key=lambda kv: -kv[1])),
        "modality_mix": dict(sorted(modality_mix.items(), key=lambda kv: -kv[1])),
        "users": users,
    }


def _facility_detail_portable(session: Session, rng: Range, facility_id: int) -> dict | None:
    """The same answer without GROUPING SETS (SQLite): four statements."""
    facility = session.get(Facility, facility_id)
    if facility is None:
        return None
    window = and_(HourlyStats.facility_id == facility_id, HourlyStats.hour >= rng.start,
                  HourlyStats.hour < rng.end)
    groups = session.execute(
        select(HourlyStats.status, HourlyStats.modality, *_sums(HourlyStats)).where(window)
        .group_by(HourlyStats.status, HourlyStats.modality)).all()
    users = session.execute(
        select(User.id, User.email, User.role, *_sums(HourlyStats))
        .join(HourlyStats, and_(HourlyStats.user_id == User.id, window), isouter=True)
        .where(User.facility_id == facility_id)
        .group_by(User.id, User.email, User.role)
        .order_by(func.coalesce(func.sum(HourlyStats.uploads), 0).desc(), User.id)
    ).all()
    if rng.granularity == "hour":
        series = _hourly_series_rows(session, rng, facility_id=facility_id)
    else:
        series_statement = _period_statements(rng.granularity, "one")[1]
        series = _series_rows(session.execute(series_statement,
                                              _period_params(rng) | {"facility_id": facility_id}).all(), rng)
    named = type("Named", (), {"facility_id": facility.id, "name": facility.name})
    return _facility_answer(rng, named, groups, series,
                            [{"id": u.id, "email": u.email, "role": u.role, **measures(u)} for u in users])


def user_detail(session: Session, rng: Range, facility_id: int, user_id: int, *, limit: int = 50,
                before: datetime | None = None) -> dict | None:
    user = session.get(User, user_id)
    if user is None or user.facility_id != facility_id:
        return None
    window = and_(HourlyStats.user_id == user_id, HourlyStats.hour >= rng.start, HourlyStats.hour < rng.end)
    if session.get_bind().dialect.name == "postgresql":
        # Status mix and series in one GROUPING SETS statement (neither key is ever NULL).
        bucket = (HourlyStats.hour if rng.granularity == "hour"
                  else truncate(session, HourlyStats.hour, rng.granularity))
        grouped = session.execute(
            select(HourlyStats.status, bucket.label("bucket"), *_sums(HourlyStats)).where(window)
            .group_by(func.grouping_sets(HourlyStats.status, bucket))).all()
        by_status = [r for r in grouped if r.status is not None]
        series = _series_rows([r for r in grouped if r.bucket is not None], rng)
    else:
        by_status = session.execute(
            select(HourlyStats.status, *_sums(HourlyStats)).where(window).group_by(HourlyStats.status)).all()
        series = _hourly_series_rows(session, rng, user_id=user_id)
    return {
        "range": rng.as_dict(),
        "facility": {"id": facility_id},
        "user": {"id": user.id, "email": user.email, "role": user.role},
        "totals": measures(_Combined(by_status)),
        "series": series,
        "status_mix": {g.status: int(g.uploads or 0) for g in by_status},
        "uploads": upload_listing(session, user_id, rng, limit=limit, before=before),
    }


def upload_listing(session: Session, user_id: int, rng: Range, *, limit: int = 50,
                   before: datetime | None = None) -> list[dict]:
    """A user's uploads in the range, newest first, in two statements whatever ``limit``:
    the uploads with their batch label, instance and study (outer joins on unique keys, so
    no row is repeated), then their instances' deliveries grouped by state."""
    query = (select(Upload.id, Upload.batch_id, Batch.label, Upload.created_at, Upload.state,
                    Upload.length, Upload.quarantine_reason, Instance.id.label("instance_id"),
                    Study.id.label("study_id"), Study.modality)
             .join(Batch, Batch.id == Upload.batch_id)
             .outerjoin(Instance, and_(Instance.facility_id == Upload.facility_id,
                                       Instance.sop_instance_uid == Upload.sop_instance_uid,
                                       Instance.version_state == InstanceVersion.CURRENT))
             .outerjoin(Study, Study.id == Instance.study_id)
             .where(Upload.user_id == user_id, Upload.created_at >= rng.start, Upload.created_at < rng.end)
             .order_by(Upload.created_at.desc(), Upload.id.desc()).limit(limit))
    if before is not None:
        query = query.where(Upload.created_at < before)
    uploads = session.execute(query).all()
    if not uploads:
        return []
    deliveries: dict[int, dict[str, int]] = defaultdict(dict)
    instance_ids = [u.instance_id for u in uploads if u.instance_id is not None]
    if instance_ids:
        for instance_id, state, count in session.execute(
            select(Delivery.instance_id, Delivery.state, func.count())
            .where(Delivery.instance_id.in_(instance_ids))
            .group_by(Delivery.instance_id, Delivery.state)
        ):
            deliveries[instance_id][state] = count
    return [{
        "id": u.id,
        "batch_id": u.batch_id,
        "batch_label": u.label,
        "created_at": u.created_at.isoformat(),
        "state": u.state,
        "length": u.length,
        "quarantine_reason": u.quarantine_reason,
        "modality": u.modality,
        "study_id": u.study_id,
        "deliveries": deliveries.get(u.instance_id, {}) if u.instance_id is not None else {},
    } for u in uploads]


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
            Instance.sop_instance_uid == upload.sop_instance_uid,
            Instance.version_state == InstanceVersion.CURRENT)) if upload.sop_instance_uid else None
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
