"""The numbers of a report, from what is already materialised: hourly stats (volume,
quality, delivery), quarantined uploads by reason, and the storage report by tier.

A report is a summary (label, value, number format) and sections (a table each). Section
rows are produced by a callable, so every format (xlsx, pdf, csv) streams them again
instead of holding a year of hourly rows in memory: hourly stats are read in hour order
with ``yield_per`` and a time bucket is emitted as soon as the next one starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, literal, select
from sqlalchemy.orm import Session

from pipeline.models import Facility, HourlyStats, Upload, UploadState, User
from pipeline.report_definitions import METRICS, STATS_METRICS, TIME_GROUPINGS, ReportSpec
from pipeline.report_schedule import zone
from pipeline.stats import BUCKET_COLUMNS, percentile_from_buckets

_SUMS = ("uploads", "bytes", "studies", "quarantined", "delivered", "failed_deliveries",
         "latency_sum_ms", *BUCKET_COLUMNS)
_BUCKETS = slice(7, 7 + len(BUCKET_COLUMNS))
_GROUP_LABELS = {"hour": "Hour", "day": "Day", "week": "Week of", "month": "Month",
                 "facility": "Facility", "modality": "Modality", "user": "User"}
_GROUP_FORMATS = {"hour": "yyyy-mm-dd hh:mm", "day": "yyyy-mm-dd", "week": "yyyy-mm-dd",
                  "month": "yyyy-mm"}


@dataclass(frozen=True)
class Column:
    label: str
    number_format: str | None = None  # Excel format; None for text
    width: int = 14


@dataclass
class Section:
    title: str
    columns: list[Column]
    rows: Callable[[], Iterator[tuple]]
    chart: str | None = None  # "line" | "bar"
    # Columns charted as series (indices); the first column is the category axis.
    chart_series: tuple[int, ...] = ()
    note: str | None = None


@dataclass
class ReportData:
    name: str
    facility_names: list[str]
    period_start: datetime
    period_end: datetime
    timezone: str
    summary: list[tuple[str, object, str | None]] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)


def _stats_filter(stmt, spec: ReportSpec, facility_ids: Sequence[int], start: datetime,  # noqa: ANN001, ANN202
                  end: datetime):
    stmt = stmt.where(HourlyStats.hour >= start, HourlyStats.hour < end,
                      HourlyStats.facility_id.in_(list(facility_ids)))
    if spec.filters.modalities:
        stmt = stmt.where(HourlyStats.modality.in_(spec.filters.modalities))
    if spec.filters.user_ids:
        stmt = stmt.where(HourlyStats.user_id.in_(spec.filters.user_ids))
    return stmt


def _time_key(unit: str, hour: datetime, tz: ZoneInfo) -> datetime | date:
    local = hour.astimezone(tz).replace(tzinfo=None)
    if unit == "hour":
        return local
    day = local.date()
    if unit == "week":
        return day - timedelta(days=day.weekday())
    if unit == "month":
        return day.replace(day=1)
    return day


def _metric_values(sums: list[int], metrics: Sequence[str], max_ms: int) -> list[object]:
    delivered, failed = sums[4], sums[5]
    buckets = sums[_BUCKETS]
    values: dict[str, object] = {
        "uploads": sums[0], "bytes": sums[1], "studies": sums[2], "quarantined": sums[3],
        "delivery_success_rate": delivered / (delivered + failed) if delivered + failed else None,
        "delivery_latency_p50": percentile_from_buckets(buckets, 50, max_ms or None),
        "delivery_latency_p95": percentile_from_buckets(buckets, 95, max_ms or None),
        "dead_letters": failed,
    }
    return [values[m] for m in metrics]


def _stats_rows(session: Session, spec: ReportSpec, facility_ids: Sequence[int], start: datetime,
                end: datetime, tz: ZoneInfo, metrics: Sequence[str]) -> Iterator[tuple]:
    grouping = spec.grouping
    # The database sums away the dimensions the report does not group by (status, and
    # modality or user unless asked), so Python sees one row per hour and group at most.
    dims: list = [HourlyStats.hour, Facility.name]
    modality, email = literal(""), literal("")
    if "modality" in grouping:
        modality = HourlyStats.modality
        dims.append(modality)
    if "user" in grouping:
        email = User.email
        dims.append(email)
    stmt = select(HourlyStats.hour, Facility.name, modality, email,
                  func.max(HourlyStats.latency_max_ms),
                  *[func.sum(getattr(HourlyStats, name)) for name in _SUMS])
    stmt = stmt.join(Facility, Facility.id == HourlyStats.facility_id)
    if "user" in grouping:
        stmt = stmt.join(User, User.id == HourlyStats.user_id)
    stmt = _stats_filter(stmt, spec, facility_ids, start, end).group_by(*dims).order_by(HourlyStats.hour)
    time_keys: dict[datetime, object] = {}
    time_first = grouping[0] in TIME_GROUPINGS
    groups: dict[tuple, list[int]] = {}
    max_ms: dict[tuple, int] = {}
    current: object = None

    def flush() -> Iterator[tuple]:
        for key in sorted(groups, key=lambda k: tuple(str(p) for p in k) if not time_first else
                          (k[0], *(str(p) for p in k[1:]))):
            yield (*key, *_metric_values(groups[key], metrics, max_ms[key]))
        groups.clear()
        max_ms.clear()

    for row in session.execute(stmt.execution_options(yield_per=5000)):
        parts = {"facility": row[1], "modality": row[2] or "", "user": row[3]}
        when = time_keys.get(row[0])
        if when is None:
            when = time_keys[row[0]] = {g: _time_key(g, row[0], tz) for g in grouping if g in TIME_GROUPINGS}
        key = tuple(when[g] if g in TIME_GROUPINGS else parts[g] for g in grouping)
        if time_first and key[0] != current:
            # Hour order makes time buckets arrive in order: emit the finished one.
            yield from flush()
            current = key[0]
        sums = groups.get(key)
        values = row[5:]
        if sums is None:
            groups[key] = [v or 0 for v in values]
            max_ms[key] = row[4] or 0
        else:
            groups[key] = [a + (v or 0) for a, v in zip(sums, values, strict=True)]
            max_ms[key] = max(max_ms[key], row[4] or 0)
    yield from flush()


class _StatsRows:
    """The grouped stats rows, shared by every stats section and format: read from the
    database once and kept while they stay under ``keep`` rows (a year by day and facility
    is a few thousand); past that, each reader streams them again instead of holding them."""

    def __init__(self, read: Callable[[], Iterator[tuple]], keep: int = 100_000) -> None:
        self.read = read
        self.keep = keep
        self.rows: list[tuple] | None = None

    def project(self, columns: Sequence[int]) -> Iterator[tuple]:
        if self.rows is not None:
            source: Iterator[tuple] = iter(self.rows)
        else:
            source = self._read_and_keep()
        for row in source:
            yield tuple(row[i] for i in columns)

    def _read_and_keep(self) -> Iterator[tuple]:
        kept: list[tuple] | None = []
        for row in self.read():
            if kept is not None:
                kept.append(row)
                if len(kept) > self.keep:
                    kept = None
            yield row
        self.rows = kept


def _summary(session: Session, spec: ReportSpec, facility_ids: Sequence[int], start: datetime,
             end: datetime) -> list[tuple[str, object, str | None]]:
    stmt = _stats_filter(select(func.max(HourlyStats.latency_max_ms),
                                *[func.sum(getattr(HourlyStats, n)) for n in _SUMS]),
                         spec, facility_ids, start, end)
    row = session.execute(stmt).one()
    sums = [int(v or 0) for v in row[1:]]
    wanted = [m for m in STATS_METRICS if m in spec.metrics]
    values = _metric_values(sums, wanted, int(row[0] or 0))
    summary = [(METRICS[m][0], v, METRICS[m][2]) for m, v in zip(wanted, values, strict=True)]
    if "forecast" in spec.metrics:
        # Naive but explainable: a straight line through this period and the one before.
        before = start - (end - start)
        prev = session.scalar(_stats_filter(select(func.sum(HourlyStats.uploads)), spec, facility_ids,
                                            before, start)) or 0
        summary.append((METRICS["forecast"][0], max(0, 2 * sums[0] - int(prev)), "#,##0"))
    return summary


def _quarantine_rows(session: Session, facility_ids: Sequence[int], start: datetime,
                     end: datetime) -> Iterator[tuple]:
    stmt = (select(Facility.name, Upload.quarantine_reason, func.count())
            .join(Facility, Facility.id == Upload.facility_id)
            .where(Upload.state == UploadState.QUARANTINED, Upload.created_at >= start,
                   Upload.created_at < end, Upload.facility_id.in_(list(facility_ids)))
            .group_by(Facility.name, Upload.quarantine_reason)
            .order_by(Facility.name, func.count().desc()))
    for name, reason, count in session.execute(stmt):
        yield name, reason or "unknown", count


def _storage_rows(session: Session, facility_ids: Sequence[int]) -> Iterator[tuple]:
    # The storage catalogue (issue 6) may not be installed: the section is then empty.
    try:
        from pipeline import storage_report
    except ImportError:  # pragma: no cover
        return
    report = storage_report.build(session, None, facility_ids=list(facility_ids))
    for storage_class, objects, size, cost in storage_report.by_class_table(report):
        yield storage_class, objects, size, round(cost, 2)


def build(session: Session, spec: ReportSpec, facility_ids: Sequence[int], start: datetime,
          end: datetime) -> ReportData:
    """The report for ``[start, end)``; sections read the database when iterated."""
    tz = zone(spec.timezone)
    names = list(session.scalars(select(Facility.name).where(Facility.id.in_(list(facility_ids)))
                                 .order_by(Facility.name)))
    data = ReportData(spec.name, names, start, end, spec.timezone,
                      summary=_summary(session, spec, facility_ids, start, end))
    group_cols = [Column(_GROUP_LABELS[g], _GROUP_FORMATS.get(g), 18 if g == "hour" else 14)
                  for g in spec.grouping]
    chart = "line" if spec.grouping[0] in TIME_GROUPINGS else "bar"
    by_section: dict[str, list[str]] = {}
    for metric in STATS_METRICS:
        if metric in spec.metrics:
            by_section.setdefault(METRICS[metric][1], []).append(metric)
    wanted = [m for m in STATS_METRICS if m in spec.metrics]
    shared = _StatsRows(lambda: _stats_rows(session, spec, facility_ids, start, end, tz, wanted))
    keys = len(spec.grouping)
    for title, metrics in by_section.items():
        columns = group_cols + [Column(METRICS[m][0], METRICS[m][2], max(14, len(METRICS[m][0]) + 2))
                                for m in metrics]
        series = tuple(range(len(group_cols), len(columns)))
        picked = [*range(keys), *(keys + wanted.index(m) for m in metrics)]
        data.sections.append(Section(
            title, columns, lambda picked=picked: shared.project(picked),
            chart=chart, chart_series=series[:1] if title == "Volume" else series))
    if "quarantined_by_reason" in spec.metrics:
        data.sections.append(Section(
            "Quarantine reasons",
            [Column("Facility", None, 24), Column("Reason", None, 24), Column("Uploads", "#,##0")],
            lambda: _quarantine_rows(session, facility_ids, start, end), chart="bar", chart_series=(2,)))
    if "storage_by_tier" in spec.metrics:
        data.sections.append(Section(
            "Storage",
            [Column("Storage class", None, 18), Column("Objects", "#,##0"), Column("Bytes", "#,##0", 18),
             Column("USD per month", "#,##0.00")],
            lambda: _storage_rows(session, facility_ids), chart="bar", chart_series=(2,),
            note="Current state of the object store, not limited to the period."))
    return data
