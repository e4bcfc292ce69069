"""Hourly stats: materialising the raw rows (uploads, instances, studies, deliveries) into
``hourly_stats`` and its ``daily_facility_stats`` and ``weekly_facility_stats`` rollups, and
reading percentiles back from them.

Incremental and idempotent. A run recomputes whole (hour, facility) slices, never adds
deltas, so running twice, or recomputing a slice that did not change, is harmless. It
recomputes the slices that:
- hold rows created or changed since the last watermark (minus an overlap, so a transaction
  that committed late with an earlier timestamp is still seen): late rows included, since a
  row inserted today for last month's hour has today's ``updated_at``;
- were still ``open`` last time: an upload not yet parsed or quarantined, or a delivery
  pending or in flight. Those rows change state without touching a timestamp, so an open
  slice is looked at on every run until it settles.
Uploads are attributed to the hour they were created in; a delivery's latency to the upload
that brought its instance in (a duplicate re-send counts as an upload, not as a delivery).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, case, delete, distinct, func, insert, or_, select, text, union
from sqlalchemy.orm import Session

from pipeline.models import (
    LATENCY_BUCKETS_MS,
    TERMINAL_UPLOAD_STATES,
    AnalyticsWatermark,
    DailyFacilityStats,
    Delivery,
    DeliveryState,
    HourlyStats,
    Instance,
    InstanceVersion,
    Study,
    Upload,
    UploadState,
    WeeklyFacilityStats,
    utcnow,
)

WATERMARK = "hourly_stats"
# A writer's transaction may commit this long after the timestamp it wrote.
OVERLAP = timedelta(minutes=10)
BUCKET_COLUMNS = tuple(f"lat_b{i}" for i in range(len(LATENCY_BUCKETS_MS)))
METRIC_COLUMNS = ("uploads", "bytes", "studies", "quarantined", "delivered", "pending_deliveries",
                  "failed_deliveries", "latency_sum_ms", *BUCKET_COLUMNS)
OPEN_UPLOAD_STATES = tuple(s.value for s in UploadState if s not in TERMINAL_UPLOAD_STATES)
# Slices recomputed per statement: bounds the IN list and the transaction's size.
SLICES_PER_STATEMENT = 500


# --------------------------------------------------------------------------- pure helpers


def bucket_index(latency_ms: float) -> int:
    for index, bound in enumerate(LATENCY_BUCKETS_MS):
        if bound is None or latency_ms < bound:
            return index
    return len(LATENCY_BUCKETS_MS) - 1


def percentile_from_buckets(counts: Sequence[int], pct: float, max_ms: float | None = None) -> float | None:
    """The ``pct`` percentile of a latency histogram, interpolated linearly inside the
    bucket it falls in (the open last bucket ends at ``max_ms``). None when empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = pct / 100.0 * total
    seen = 0
    low = 0.0
    for index, count in enumerate(counts):
        bound = LATENCY_BUCKETS_MS[index]
        high = float(bound if bound is not None else max(max_ms or low, low))
        if max_ms is not None:
            high = min(high, float(max_ms))
        if count and seen + count >= rank:
            fraction = (rank - seen) / count
            return round(low + (max(high, low) - low) * fraction, 1)
        seen += count
        low = float(bound) if bound is not None else low
    return float(max_ms) if max_ms is not None else low


def hour_floor(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def _runs(starts: Iterable[datetime], step: timedelta) -> list[tuple[datetime, datetime]]:
    """Contiguous runs of ``step``-long periods (given by their starts) as half-open
    [start, end) windows."""
    runs: list[tuple[datetime, datetime]] = []
    for start in sorted(set(starts)):
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], start + step)
        else:
            runs.append((start, start + step))
    return runs


def hour_runs(hours: Iterable[datetime]) -> list[tuple[datetime, datetime]]:
    """Contiguous runs of hours as half-open [start, end) windows."""
    return _runs(hours, timedelta(hours=1))


# --------------------------------------------------------------------------- SQL pieces


def truncate(session: Session, column, unit: str):  # noqa: ANN001, ANN201
    """``column`` truncated to ``unit`` (hour, day, week: weeks start on Monday) in UTC,
    in the dialect's own storage format, so results compare equal to stored values."""
    if session.get_bind().dialect.name == "postgresql":
        naive = func.date_trunc(unit, func.timezone("UTC", column))
        return func.timezone("UTC", naive)
    # SQLite stores naive UTC text 'YYYY-MM-DD HH:MM:SS.ffffff' (SQLAlchemy's format).
    if unit == "hour":
        return func.strftime("%Y-%m-%d %H:00:00.000000", column)
    if unit == "day":
        return func.strftime("%Y-%m-%d 00:00:00.000000", column)
    if unit == "week":
        return func.strftime("%Y-%m-%d 00:00:00.000000", column, "weekday 0", "-6 days")
    raise ValueError(f"unknown unit {unit!r}")


def _count_if(condition) -> object:  # noqa: ANN001
    return func.sum(case((condition, 1), else_=0))


def _delivery_rollup(window):  # noqa: ANN001, ANN202
    """Per instance brought in by an upload of the window: delivery counts, latency sum,
    max and histogram. Grouped per instance first, so a join never multiplies uploads."""
    delivered = Delivery.state == DeliveryState.DELIVERED
    latency = func.coalesce(Delivery.latency_ms, 0)
    buckets = []
    low = None
    for index, bound in enumerate(LATENCY_BUCKETS_MS):
        conditions = [delivered]
        if low is not None:
            conditions.append(latency >= low)
        if bound is not None:
            conditions.append(latency < bound)
        buckets.append(_count_if(and_(*conditions)).label(BUCKET_COLUMNS[index]))
        low = bound
    return (
        select(
            Delivery.instance_id.label("instance_id"),
            _count_if(delivered).label("delivered"),
            _count_if(Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING]))
            .label("pending"),
            _count_if(Delivery.state == DeliveryState.FAILED).label("failed"),
            func.sum(case((delivered, latency), else_=0)).label("latency_sum"),
            func.max(case((delivered, latency), else_=0)).label("latency_max"),
            *buckets,
        )
        .join(Instance, Instance.id == Delivery.instance_id)
        .join(Upload, Upload.id == Instance.upload_id)
        .where(window)
        .group_by(Delivery.instance_id)
        .subquery("per_instance")
    )


def _slice_select(session: Session, window):  # noqa: ANN001, ANN202
    """SELECT producing hourly_stats rows for the uploads matching ``window``."""
    per_instance = _delivery_rollup(window)
    hour = truncate(session, Upload.created_at, "hour")
    modality = func.coalesce(Study.modality, "")
    own = Instance.upload_id == Upload.id  # latency goes to the upload that brought the bytes
    metric = {
        "uploads": func.count(Upload.id),
        "bytes": func.coalesce(func.sum(Upload.length), 0),
        "studies": func.count(distinct(Instance.study_id)),
        "quarantined": _count_if(Upload.state == UploadState.QUARANTINED),
        "delivered": func.coalesce(func.sum(case((own, per_instance.c.delivered))), 0),
        "pending_deliveries": func.coalesce(func.sum(case((own, per_instance.c.pending))), 0),
        "failed_deliveries": func.coalesce(func.sum(case((own, per_instance.c.failed))), 0),
        "latency_sum_ms": func.coalesce(func.sum(case((own, per_instance.c.latency_sum))), 0),
        **{
            name: func.coalesce(func.sum(case((own, per_instance.c[name]))), 0)
            for name in BUCKET_COLUMNS
        },
        "latency_max_ms": func.coalesce(func.max(case((own, per_instance.c.latency_max))), 0),
    }
    is_open = or_(
        _count_if(Upload.state.in_(OPEN_UPLOAD_STATES)) > 0,
        func.coalesce(func.sum(case((own, per_instance.c.pending))), 0) > 0,
    )
    return (
        select(
            hour.label("hour"),
            Upload.facility_id,
            modality.label("modality"),
            Upload.state.label("status"),
            Upload.user_id,
            case((is_open, True), else_=False).label("open"),
            *(expr.label(name) for name, expr in metric.items()),
        )
        .select_from(Upload)
        .outerjoin(Instance, and_(Instance.facility_id == Upload.facility_id,
                                  Instance.sop_instance_uid == Upload.sop_instance_uid,
                                  Instance.version_state == InstanceVersion.CURRENT))
        .outerjoin(Study, Study.id == Instance.study_id)
        .outerjoin(per_instance, per_instance.c.instance_id == Instance.id)
        .where(window)
        .group_by(hour, Upload.facility_id, modality, Upload.state, Upload.user_id)
    )


HOURLY_COLUMNS = ("hour", "facility_id", "modality", "status", "user_id", "open", *METRIC_COLUMNS,
                  "latency_max_ms")


def _rebuild_window(session: Session, start: datetime, end: datetime,
                    facility_ids: Sequence[int] | None) -> int:
    """Replace hourly_stats for uploads created in [start, end) (of ``facility_ids``)."""
    window = and_(Upload.created_at >= start, Upload.created_at < end)
    stale = and_(HourlyStats.hour >= start, HourlyStats.hour < end)
    if facility_ids is not None:
        window = and_(window, Upload.facility_id.in_(facility_ids))
        stale = and_(stale, HourlyStats.facility_id.in_(facility_ids))
    session.execute(delete(HourlyStats).where(stale).execution_options(synchronize_session=False))
    result = session.execute(
        insert(HourlyStats).from_select(list(HOURLY_COLUMNS), _slice_select(session, window))
    )
    return result.rowcount or 0


def _rollup_days(session: Session, days: Iterable[datetime], facility_ids: Sequence[int] | None) -> None:
    """Re-derive daily_facility_stats for whole days from hourly_stats (and their weeks)."""
    days = list(days)
    whole_days = [d.replace(hour=0, minute=0, second=0, microsecond=0) for d in days]
    _rollup(session, DailyFacilityStats.day, HourlyStats.hour, "day",
            _runs(whole_days, timedelta(days=1)), facility_ids)
    _rollup_weeks(session, days, facility_ids)


def week_floor(value: datetime) -> datetime:
    """Monday 00:00 of the value's week (ISO weeks, as the dashboards bucket them)."""
    day = value.replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def _rollup_weeks(session: Session, days: Iterable[datetime], facility_ids: Sequence[int] | None) -> None:
    """Re-derive weekly_facility_stats for the whole weeks holding ``days``, from the daily rows."""
    _rollup(session, WeeklyFacilityStats.week, DailyFacilityStats.day, "week",
            _runs((week_floor(d) for d in days), timedelta(weeks=1)), facility_ids)


def _rollup(session: Session, period, source_period, unit: str,  # noqa: ANN001
            runs: Iterable[tuple[datetime, datetime]], facility_ids: Sequence[int] | None) -> None:
    """Replace the rollup rows whose ``period`` column falls in ``runs`` by the sums of the
    finer rows (``source_period``, truncated to ``unit``), per facility."""
    target, source = period.class_, source_period.class_
    for start, end in runs:
        stale = and_(period >= start, period < end)
        rows = and_(source_period >= start, source_period < end)
        if facility_ids is not None:
            stale = and_(stale, target.facility_id.in_(facility_ids))
            rows = and_(rows, source.facility_id.in_(facility_ids))
        session.execute(delete(target).where(stale).execution_options(synchronize_session=False))
        bucket = truncate(session, source_period, unit)
        summed = [func.sum(getattr(source, name)).label(name) for name in METRIC_COLUMNS]
        rollup = (
            select(bucket.label(period.key), source.facility_id, *summed,
                   func.max(source.latency_max_ms).label("latency_max_ms"))
            .where(rows)
            .group_by(bucket, source.facility_id)
        )
        session.execute(insert(target).from_select(
            [period.key, "facility_id", *METRIC_COLUMNS, "latency_max_ms"], rollup))


# --------------------------------------------------------------------------- the job


@dataclass
class RefreshResult:
    full: bool
    slices: int
    rows_written: int
    watermark: datetime


def _watermark(session: Session) -> AnalyticsWatermark | None:
    return session.get(AnalyticsWatermark, WATERMARK)


def changed_slices(session: Session, since: datetime) -> set[tuple[datetime, int]]:
    """(hour, facility) of every upload created or changed since ``since``, of every upload
    whose instance's deliveries changed since then, and of every slice still open."""
    upload_hour = truncate(session, Upload.created_at, "hour")
    touched_uploads = select(upload_hour.label("hour"), Upload.facility_id.label("facility_id")).where(
        or_(Upload.updated_at >= since, Upload.created_at >= since))
    touched_deliveries = (
        select(upload_hour.label("hour"), Upload.facility_id.label("facility_id"))
        .select_from(Delivery)
        .join(Instance, Instance.id == Delivery.instance_id)
        .join(Upload, Upload.id == Instance.upload_id)
        .where(Delivery.updated_at >= since)
    )
    still_open = select(HourlyStats.hour.label("hour"), HourlyStats.facility_id.label("facility_id")).where(
        HourlyStats.open.is_(True))
    rows = session.execute(union(touched_uploads, touched_deliveries, still_open)).all()
    return {(_as_datetime(hour), facility_id) for hour, facility_id in rows}


def _as_datetime(value: datetime | str) -> datetime:
    """SQLite hands computed timestamps back as text; normalise to aware UTC."""
    from datetime import UTC

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def recompute_slices(session: Session, slices: Iterable[tuple[datetime, int]]) -> int:
    """Recompute the given (hour, facility) slices and the days they fall in."""
    by_hour: dict[datetime, set[int]] = {}
    for hour, facility_id in slices:
        by_hour.setdefault(hour_floor(hour), set()).add(facility_id)
    written = 0
    # Hours with the same facility set are recomputed together, a run of hours at a time.
    groups: dict[frozenset[int], list[datetime]] = {}
    for hour, facilities in by_hour.items():
        groups.setdefault(frozenset(facilities), []).append(hour)
    for facilities, hours in groups.items():
        ids = sorted(facilities)
        for start, end in hour_runs(hours):
            for offset in range(0, len(ids), SLICES_PER_STATEMENT):
                written += _rebuild_window(session, start, end, ids[offset:offset + SLICES_PER_STATEMENT])
            _rollup_days(session, _days_between(start, end), ids)
    return written


def _days_between(start: datetime, end: datetime) -> list[datetime]:
    day = start.replace(hour=0)
    days = []
    while day < end:
        days.append(day)
        day += timedelta(days=1)
    return days


def rebuild_all(session: Session, now: datetime | None = None) -> RefreshResult:
    """Recompute everything from the raw rows (first run, or on demand)."""
    now = now or utcnow()
    session.execute(delete(HourlyStats).execution_options(synchronize_session=False))
    session.execute(delete(DailyFacilityStats).execution_options(synchronize_session=False))
    session.execute(delete(WeeklyFacilityStats).execution_options(synchronize_session=False))
    first, last = session.execute(select(func.min(Upload.created_at), func.max(Upload.created_at))).one()
    written = 0
    if first is not None:
        written = _rebuild_window(session, hour_floor(first), hour_floor(last) + timedelta(hours=1), None)
        _rollup_all_days(session)
    _set_watermark(session, now)
    session.flush()
    if session.get_bind().dialect.name == "postgresql":
        # Every row was just rewritten: without fresh planner statistics PostgreSQL guessed
        # 3 rows for a facility's year (1,162) and read 1,005 heap pages instead of the
        # covering index, until autovacuum came round.
        for table in (HourlyStats, DailyFacilityStats, WeeklyFacilityStats):
            session.execute(text(f"ANALYZE {table.__tablename__}"))
    return RefreshResult(full=True, slices=written, rows_written=written, watermark=now)


def _rollup_all_days(session: Session) -> None:
    first, last = session.execute(select(func.min(HourlyStats.hour), func.max(HourlyStats.hour))).one()
    if first is None:
        return
    first, last = _as_datetime(first), _as_datetime(last)
    _rollup_days(session, [first, last] + _days_between(first, last), None)


def _set_watermark(session: Session, value: datetime) -> None:
    row = _watermark(session)
    if row is None:
        session.add(AnalyticsWatermark(name=WATERMARK, value=value, updated_at=utcnow()))
    else:
        row.value = value
        row.updated_at = utcnow()


def as_of(session: Session) -> datetime | None:
    """Rows committed before this moment are in the materialised stats (the watermark)."""
    mark = _watermark(session)
    return _as_datetime(mark.value) if mark is not None else None


def refresh(session: Session, now: datetime | None = None, overlap: timedelta = OVERLAP) -> RefreshResult:
    """One run of the beat job: incremental after the first run; the caller commits."""
    now = now or utcnow()
    mark = _watermark(session)
    if mark is None:
        return rebuild_all(session, now)
    slices = changed_slices(session, mark.value - overlap)
    written = recompute_slices(session, slices)
    _set_watermark(session, now)
    session.flush()
    return RefreshResult(full=False, slices=len(slices), rows_written=written, watermark=now)


# --------------------------------------------------------------------------- reading back


_NO_LATENCY = {"count": 0, "mean_ms": None, "p50_ms": None, "p95_ms": None, "max_ms": None}


def latency_summary(row: object) -> dict:
    """Count, mean, p50, p95 and max from a row with the summed metric columns."""
    counts = [int(getattr(row, name) or 0) for name in BUCKET_COLUMNS]
    count = sum(counts)
    if not count:
        # Most buckets of a long series and most users are empty: skip the percentiles
        # (a dashboard answer has hundreds of these).
        return dict(_NO_LATENCY)
    max_ms = int(getattr(row, "latency_max_ms", 0) or 0)
    return {
        "count": count,
        # float: PostgreSQL's SUM is a Decimal, which Flask would write as a JSON string.
        "mean_ms": round(float(getattr(row, "latency_sum_ms", 0) or 0) / count, 1),
        "p50_ms": percentile_from_buckets(counts, 50, max_ms),
        "p95_ms": percentile_from_buckets(counts, 95, max_ms),
        "max_ms": max_ms,
    }



# Any constant unique to this job: PostgreSQL advisory locks are one global namespace.
ADVISORY_LOCK_KEY = 5_050_001


def try_lock(session: Session) -> bool:
    """One materialisation at a time (a slow run must not race the next beat tick):
    a transaction-scoped advisory lock on PostgreSQL; SQLite has one writer anyway."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.execute(select(func.pg_try_advisory_xact_lock(ADVISORY_LOCK_KEY))).scalar())
