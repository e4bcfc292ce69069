"""The numbers of a report, from what is already materialised: hourly stats (volume,
quality, delivery), quarantined uploads by reason, the storage report by tier, and the
stored upload forecasts.

A report is a summary (label, value, number format) and sections (a table each). Section
rows are produced by a callable, so every format (xlsx, pdf, csv) streams them instead of
holding a year of hourly rows in memory.

Grouping happens in the database: hourly rows are bucketed by the report's time unit in the
report's IANA timezone (PostgreSQL: ``date_trunc(unit, timezone(tz, hour))``; SQLite, the
embedded demo: a Python function registered on the connection, since SQLite knows no zones),
summed per bucket and group, and streamed back in order through a server-side cursor. Python
only computes latency percentiles from the summed histograms. Each section selects only the
sums its own metrics need.

The PDF gets smaller views of the same numbers, also from SQL: a chart view (the time unit
alone, coarsened until it fits a chart) and an overview (the other grouping key alone, e.g. one row
per facility for the period), so its cost follows what a PDF shows, not the row count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, Date, DateTime, Float, cast, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from pipeline.analytics.stats import BUCKET_COLUMNS, percentile_from_buckets
from pipeline.exports.definitions import METRICS, STATS_METRICS, TIME_GROUPINGS, ExportSpec
from pipeline.exports.schedule import zone
from pipeline.models import Facility, HourlyStats, Upload, UploadState, User

_SUMS = ("uploads", "bytes", "studies", "quarantined", "delivered", "failed_deliveries",
         "latency_sum_ms", *BUCKET_COLUMNS)
_BUCKETS = slice(7, 7 + len(BUCKET_COLUMNS))
_GROUP_LABELS = {"hour": "Hour", "day": "Day", "week": "Week of", "month": "Month",
                 "facility": "Facility", "modality": "Modality", "user": "User"}
_GROUP_FORMATS = {"hour": "yyyy-mm-dd hh:mm", "day": "yyyy-mm-dd", "week": "yyyy-mm-dd",
                  "month": "yyyy-mm"}
# Metrics the database computes outright; the percentiles need the histogram (Python).
_PERCENTILES = {"delivery_latency_p50": 50, "delivery_latency_p95": 95}
# Rows fetched per round trip from the server-side cursor.
STREAM_ROWS = 5000
# The PDF's chart over time: the report's time unit, or a coarser one until it fits.
TREND_MAX_POINTS = 400
_COARSER = {"hour": "day", "day": "week", "week": "month"}
_UNIT_HOURS = {"hour": 1, "day": 24, "week": 168, "month": 730}
SQLITE_BUCKET_FUNCTION = "relaypacs_local_bucket"


@dataclass(frozen=True)
class Column:
    label: str
    number_format: str | None = None  # Excel format; None for text
    width: int = 14


@dataclass(eq=False)
class SharedRows:
    """One statement's rows for several sections with the same keys (the Volume and Delivery
    sheets, both by hour x facility): each row is the keys, then every section's values in
    section order. A workbook writes all of them in one pass, so the database scans, sums and
    sorts a year of hourly rows once instead of once per sheet (measured: the combined
    statement costs about what the heavier one alone did: the xlsx by hour x facility for a
    year went from 10.1 s to 9.1 s, median of 4 alternating runs at load 3.5)."""

    rows: Callable[[], Iterator[tuple]]
    keys: int
    widths: tuple[int, ...]

    def split(self, row: Sequence) -> list[tuple]:
        """A combined row as one row per section: the keys and that section's values."""
        keys, at, out = tuple(row[:self.keys]), self.keys, []
        for width in self.widths:
            out.append((*keys, *row[at:at + width]))
            at += width
        return out


@dataclass
class Section:
    title: str
    columns: list[Column]
    rows: Callable[[], Iterator[tuple]]
    chart: str | None = None  # "line" | "bar"
    # Columns charted as series (indices); the first column is the category axis.
    chart_series: tuple[int, ...] = ()
    note: str | None = None
    # Smaller views for the PDF (None: it shows the rows themselves, capped): the measures
    # by the first or the time key alone (its chart) and by the other key alone (its table).
    chart_view: Section | None = None
    overview: Section | None = None
    # The number of rows ``rows`` yields, counted without reading them (None: unknown).
    count: Callable[[], int] | None = None
    # The same rows from a statement shared with other sections, and this section's place
    # in it (None: ``rows`` only). ``rows`` stays for readers of one section (CSV, PDF).
    shared: tuple[SharedRows, int] | None = None


@dataclass
class ExportData:
    name: str
    facility_names: list[str]
    period_start: datetime
    period_end: datetime
    timezone: str
    summary: list[tuple[str, object, str | None]] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)


def _stats_filter(stmt, spec: ExportSpec, facility_ids: Sequence[int], start: datetime,  # noqa: ANN001, ANN202
                  end: datetime):
    stmt = stmt.where(HourlyStats.hour >= start, HourlyStats.hour < end,
                      HourlyStats.facility_id.in_(list(facility_ids)))
    if spec.filters.modalities:
        stmt = stmt.where(HourlyStats.modality.in_(spec.filters.modalities))
    if spec.filters.user_ids:
        stmt = stmt.where(HourlyStats.user_id.in_(spec.filters.user_ids))
    return stmt


def local_bucket(unit: str, tz_name: str, hour: str | None) -> str | None:
    """SQLite's bucket function: the UTC hour as stored (naive ISO text) to the start of its
    ``unit`` in ``tz_name`` wall time; ISO text that SQLAlchemy's Date/DateTime types parse."""
    if hour is None:
        return None
    local = datetime.fromisoformat(hour).replace(tzinfo=UTC).astimezone(_zone_cached(tz_name))
    local = local.replace(tzinfo=None, minute=0, second=0, microsecond=0)
    if unit == "hour":
        return local.isoformat(sep=" ")
    day = local.date()
    if unit == "week":
        day -= timedelta(days=day.weekday())
    elif unit == "month":
        day = day.replace(day=1)
    return day.isoformat()


@lru_cache(maxsize=64)
def _zone_cached(name: str) -> ZoneInfo:
    return zone(name)


def _time_bucket(unit: str, tz_name: str, dialect: str) -> ColumnElement:
    kind = DateTime() if unit == "hour" else Date()
    if dialect == "sqlite":
        return func.relaypacs_local_bucket(unit, tz_name, HourlyStats.hour, type_=kind)
    # timezone(tz, timestamptz) is the wall time there; date_trunc's week starts on Monday
    # (ISO), like the Python side. A day/week/month comes back as a date.
    local = func.date_trunc(unit, func.timezone(tz_name, HourlyStats.hour), type_=DateTime())
    return local if unit == "hour" else cast(local, Date)


def _prepare(session: Session) -> str:
    """The dialect name; on SQLite, registers the bucket function on this session's connection."""
    connection = session.connection()
    dialect = connection.dialect.name
    if dialect == "sqlite":
        connection.connection.driver_connection.create_function(  # type: ignore[union-attr]
            SQLITE_BUCKET_FUNCTION, 3, local_bucket, deterministic=True)
    return dialect


@lru_cache(maxsize=65536)
def _percentile(histogram: tuple[int, ...], pct: int, max_ms: int) -> float | None:
    # Hourly histograms of one facility repeat a lot: cached, a year of hours costs little.
    return percentile_from_buckets(histogram, pct, max_ms or None)


def _total(column: ColumnElement) -> ColumnElement:
    # PostgreSQL sums a bigint column as numeric (Decimal in Python): back to an integer.
    return func.coalesce(cast(func.sum(column), BigInteger), 0)


def _measures(metrics: Sequence[str], source) -> tuple[list[ColumnElement], Callable | None]:  # noqa: ANN001
    """SQL columns for ``metrics`` over ``source`` (a subquery of hourly rows), and a row
    function turning the fetched columns into one value per metric (None: as fetched)."""
    columns: list[ColumnElement] = []
    plan: list[tuple[str, int]] = []  # (kind, first fetched column)
    histogram_at: int | None = None
    for metric in metrics:
        if metric in _PERCENTILES:
            if histogram_at is None:
                histogram_at = len(columns)
                columns.append(func.coalesce(func.max(source.c.latency_max_ms), 0))
                columns.extend(_total(source.c[name]) for name in BUCKET_COLUMNS)
            plan.append((metric, histogram_at))
            continue
        if metric == "delivery_success_rate":
            delivered, failed = func.sum(source.c.delivered), func.sum(source.c.failed_deliveries)
            expression = cast(delivered, Float) / func.nullif(delivered + failed, 0)
        else:
            name = "failed_deliveries" if metric == "dead_letters" else metric
            expression = _total(source.c[name])
        plan.append(("value", len(columns)))
        columns.append(expression)
    if histogram_at is None:
        return columns, None
    width = len(BUCKET_COLUMNS)

    def values(fetched: Sequence) -> list[object]:
        out: list[object] = []
        for kind, at in plan:
            if kind == "value":
                out.append(fetched[at])
            else:
                out.append(_percentile(tuple(fetched[at + 1:at + 1 + width]), _PERCENTILES[kind],
                                       int(fetched[at])))
        return out

    return columns, values


def _grouped(session: Session, spec: ExportSpec, facility_ids: Sequence[int], start: datetime,
             end: datetime, dims: Sequence[str], metrics: Sequence[str], *, count: bool = False):  # noqa: ANN202
    """The statement summing hourly rows into one row per ``dims`` (in order), with one
    column per metric; ``count``: the number of such rows instead."""
    dialect = _prepare(session)
    keys: list[ColumnElement] = []
    for dim in dims:
        if dim in TIME_GROUPINGS:
            keys.append(_time_bucket(dim, spec.timezone, dialect).label(dim))
        else:
            keys.append({"facility": HourlyStats.facility_id, "modality": HourlyStats.modality,
                         "user": HourlyStats.user_id}[dim].label(dim))
    needed = sorted({*_SUMS, "latency_max_ms"})
    inner = select(*keys, *[getattr(HourlyStats, n).label(n) for n in needed])
    # Grouping by the subquery's columns: the bucket expression is written once, so its
    # bound parameters (unit, zone) cannot differ between SELECT and GROUP BY. Groups are
    # formed on ids (narrow sort or hash keys); names are joined to the summed rows only.
    source = _stats_filter(inner, spec, facility_ids, start, end).subquery("hourly")
    group = [source.c[d] for d in dims]
    columns, values = _measures(metrics, source)
    sums = select(*group, *[c.label(f"m{i}") for i, c in enumerate(columns)]).group_by(*group)
    if count:
        return select(func.count()).select_from(sums.subquery("groups")), None
    summed = sums.subquery("summed")
    labels: list[ColumnElement] = []
    for dim in dims:
        if dim == "facility":
            labels.append(Facility.name)
        elif dim == "user":
            labels.append(User.email)
        else:
            labels.append(summed.c[dim])
    stmt = select(*labels, *[summed.c[f"m{i}"] for i in range(len(columns))]).select_from(summed)
    if "facility" in dims:
        stmt = stmt.join(Facility, Facility.id == summed.c.facility)
    if "user" in dims:
        stmt = stmt.join(User, User.id == summed.c.user)
    return stmt.order_by(*labels), values


def _stream(session: Session, stmt, values: Callable | None, keys: int) -> Iterator[tuple]:  # noqa: ANN001
    # A server-side cursor on PostgreSQL: rows arrive STREAM_ROWS at a time, never all at once.
    result = session.connection().execute(stmt.execution_options(stream_results=True,
                                                                 yield_per=STREAM_ROWS))
    try:
        if values is None:
            for row in result:
                yield tuple(row)
        else:
            for row in result:
                yield (*row[:keys], *values(row[keys:]))
    finally:
        # A reader that stops early (the PDF's first rows) closes the server-side cursor.
        result.close()


def _stats_section_rows(session: Session, spec: ExportSpec, facility_ids: Sequence[int], start: datetime,
                        end: datetime, dims: Sequence[str], metrics: Sequence[str]) -> Iterator[tuple]:
    stmt, values = _grouped(session, spec, facility_ids, start, end, dims, metrics)
    yield from _stream(session, stmt, values, len(dims))


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


def _trend_unit(unit: str, start: datetime, end: datetime) -> str:
    hours = (end - start).total_seconds() / 3600
    while unit in _COARSER and hours / _UNIT_HOURS[unit] > TREND_MAX_POINTS:
        unit = _COARSER[unit]
    return unit


def _forecast(session: Session, facility_ids: Sequence[int], start: datetime, end: datetime,
              tz: ZoneInfo) -> tuple[list[tuple], tuple[object, str | None]]:
    """Per facility, the newest stored uploads forecast (pipeline/forecasting/store)
    summed over the next period (as long as this one, from its end); and the total for the
    summary. A forecast whose days do not cover the whole next period gives no total (None)
    rather than a number that silently counts fewer days."""
    from pipeline.forecasting import store as forecast_store

    first = end.astimezone(tz).date()
    days = max(1, round((end - start).total_seconds() / 86400))
    last = first + timedelta(days=days - 1)
    names = dict(session.execute(select(Facility.id, Facility.name)
                                 .where(Facility.id.in_(list(facility_ids)))).all())
    rows: list[tuple] = []
    total, complete = 0.0, bool(facility_ids)
    found = {row.facility_id: row for row in forecast_store.latest(session, list(facility_ids), "uploads")}
    for facility_id in sorted(facility_ids, key=lambda f: names.get(f, "")):
        row = found.get(facility_id)
        if row is None:
            rows.append((names.get(facility_id, str(facility_id)), None, None, 0, None))
            complete = False
            continue
        # Forecast days are UTC calendar days (the daily stats); the period's are local ones.
        covered = [p for p in row.points or [] if first <= date.fromisoformat(p["day"]) <= last
                   and p.get("mean") is not None]
        value = round(sum(max(0.0, float(p["mean"])) for p in covered)) if covered else None
        complete = complete and len(covered) == days
        total += value or 0
        rows.append((names.get(facility_id, str(facility_id)), row.model,
                     row.created_at.astimezone(tz).replace(tzinfo=None), len(covered), value))
    note = None if complete else (f"the stored forecasts do not cover all {days} days from "
                                  f"{first:%Y-%m-%d} for every facility; see the Forecast sheet")
    return rows, (round(total) if complete else None, note)


def _summary(session: Session, spec: ExportSpec, facility_ids: Sequence[int], start: datetime,
             end: datetime, forecast_total: tuple[object, str | None] | None,
             ) -> list[tuple[str, object, str | None]]:
    stmt = _stats_filter(select(func.max(HourlyStats.latency_max_ms),
                                *[func.sum(getattr(HourlyStats, n)) for n in _SUMS]),
                         spec, facility_ids, start, end)
    row = session.execute(stmt).one()
    sums = [int(v or 0) for v in row[1:]]
    wanted = [m for m in STATS_METRICS if m in spec.metrics]
    values = _metric_values(sums, wanted, int(row[0] or 0))
    summary = [(METRICS[m][0], v, METRICS[m][2]) for m, v in zip(wanted, values, strict=True)]
    if forecast_total is not None:
        value, note = forecast_total
        summary.append((METRICS["forecast"][0], value, "#,##0"))
        if note:
            summary.append(("Forecast note", note, None))
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
    # The storage catalogue (the lifecycle job fills it) may not be installed: the section is then empty.
    try:
        from pipeline.lifecycle import cost_report as storage_report
    except ImportError:  # pragma: no cover
        return
    report = storage_report.build(session, None, facility_ids=list(facility_ids))
    for storage_class, objects, size, cost in storage_report.by_class_table(report):
        yield storage_class, objects, size, round(cost, 2)


def _group_column(dim: str) -> Column:
    return Column(_GROUP_LABELS[dim], _GROUP_FORMATS.get(dim), 18 if dim == "hour" else 14)


def build(session: Session, spec: ExportSpec, facility_ids: Sequence[int], start: datetime,
          end: datetime) -> ExportData:
    """The report for ``[start, end)``; sections read the database when iterated."""
    tz = zone(spec.timezone)
    names = list(session.scalars(select(Facility.name).where(Facility.id.in_(list(facility_ids)))
                                 .order_by(Facility.name)))
    forecast_rows, forecast_total = (_forecast(session, facility_ids, start, end, tz)
                                     if "forecast" in spec.metrics else ([], None))
    data = ExportData(spec.name, names, start, end, spec.timezone,
                      summary=_summary(session, spec, facility_ids, start, end, forecast_total))
    grouping = list(spec.grouping)
    chart = "line" if grouping[0] in TIME_GROUPINGS else "bar"
    by_section: dict[str, list[str]] = {}
    for metric in STATS_METRICS:
        if metric in spec.metrics:
            by_section.setdefault(METRICS[metric][1], []).append(metric)
    time_dim = next((g for g in grouping if g in TIME_GROUPINGS), None)
    other_dims = [g for g in grouping if g not in TIME_GROUPINGS]

    def view(title: str, dims: list[str], metrics: list[str], kind: str | None) -> Section:
        columns = [_group_column(d) for d in dims] + [
            Column(METRICS[m][0], METRICS[m][2], max(14, len(METRICS[m][0]) + 2)) for m in metrics]
        series = tuple(range(len(dims), len(columns)))
        return Section(
            title, columns,
            lambda: _stats_section_rows(session, spec, facility_ids, start, end, dims, metrics),
            chart=kind, chart_series=series[:1] if title.startswith("Volume") else series,
            count=lambda: int(session.scalar(_grouped(session, spec, facility_ids, start, end, dims,
                                                      metrics, count=True)[0]) or 0))

    shared = None
    if len(by_section) > 1:
        every = [m for metrics in by_section.values() for m in metrics]
        shared = SharedRows(
            lambda: _stats_section_rows(session, spec, facility_ids, start, end, grouping, every),
            len(grouping), tuple(len(metrics) for metrics in by_section.values()))
    for place, (title, metrics) in enumerate(by_section.items()):
        section = view(title, grouping, metrics, chart)
        section.shared = (shared, place) if shared is not None else None
        if time_dim is not None:
            unit = _trend_unit(time_dim, start, end)
            if len(grouping) > 1 or unit != time_dim:
                section.chart_view = view(title, [unit], metrics, "line")
            if other_dims:
                section.overview = view(title, other_dims, metrics, "bar")
        elif len(grouping) > 1:
            section.chart_view = view(title, grouping[:1], metrics, "bar")
        data.sections.append(section)
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
    if "forecast" in spec.metrics:
        data.sections.append(Section(
            "Forecast",
            [Column("Facility", None, 24), Column("Model", None, 16),
             Column("Forecast made", "yyyy-mm-dd hh:mm", 18), Column("Days covered", "#,##0"),
             Column("Uploads forecast", "#,##0", 18)],
            lambda: iter(forecast_rows), chart="bar", chart_series=(4,),
            note="The newest stored forecast of each facility (ARIMA or seasonal naive), "
                 "summed over the days of the next period it covers."))
    return data

