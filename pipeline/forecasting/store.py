"""Forecasts over the materialised stats: read a facility's daily (or hourly) history, run
``pipeline.forecasting.daily`` (or ``pipeline.forecasting.hourly``) on it, store the result, read
the latest back.

Reads ``daily_facility_stats`` and ``hourly_stats`` only (the analytics job keeps them
current), never raw uploads. Never commits: the task or the command that calls it owns the
transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.forecasting import daily as forecasting
from pipeline.forecasting import hourly as hourly_forecasting
from pipeline.models import DailyFacilityStats, Facility, FacilityCalendar, HourlyStats, UploadForecast

METRICS = ("uploads", "bytes")
GRANULARITIES = ("day", "hour")
# Hours read for the next-48-hour forecast: the candidates' weeks plus the backtest's days.
HOURLY_HISTORY_HOURS = (hourly_forecasting.DEFAULT_WEEKS + 2) * hourly_forecasting.WEEK_HOURS
# History read per run: the fit window plus the backtest holdouts in front of it.
HISTORY_DAYS = forecasting.MAX_HISTORY_DAYS + forecasting.DEFAULT_FOLDS * forecasting.DEFAULT_HORIZON


def _day(value: datetime) -> date:
    return value.astimezone(UTC).date() if value.tzinfo else value.date()


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def daily_history(session: Session, facility_id: int | None, metric: str, last_day: date,
                  max_days: int = HISTORY_DAYS) -> tuple[date, list[float]]:
    """(first day, one value per day up to ``last_day``): from the facility's first day with
    stats (at most ``max_days`` back), every day present, a day without rows as zero."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    column = getattr(DailyFacilityStats, metric)
    window_start = last_day - timedelta(days=max_days - 1)
    query = (select(DailyFacilityStats.day, func.sum(column))
             .where(DailyFacilityStats.day >= _midnight(window_start),
                    DailyFacilityStats.day < _midnight(last_day + timedelta(days=1)))
             .group_by(DailyFacilityStats.day))
    if facility_id is not None:
        query = query.where(DailyFacilityStats.facility_id == facility_id)
    values: dict[date, float] = {}
    for day, total in session.execute(query):
        day = _day(day) if isinstance(day, datetime) else date.fromisoformat(str(day)[:10])
        values[day] = values.get(day, 0.0) + float(total or 0)
    if not values:
        return last_day + timedelta(days=1), []
    first = min(values)
    return first, forecasting.daily_series(values, first, last_day).tolist()


def calendar_days(session: Session, facility_id: int | None, start: date,
                  end: date) -> tuple[list[date], list[date]]:
    """(closed days, public holidays) of the facility between ``start`` and ``end``: its own
    closures (and the public holidays too when it closes on them) and its country's holidays.
    The all-facility total has no calendar."""
    calendar = session.get(FacilityCalendar, facility_id) if facility_id is not None else None
    if calendar is None:
        return [], []
    closed = {date.fromisoformat(d) for d in calendar.closed_days or []}
    public: set[date] = set()
    if calendar.country:
        import holidays

        years = range(start.year, end.year + 1)
        public = set(holidays.country_holidays(calendar.country, subdiv=calendar.subdivision, years=years))
    if calendar.closes_on_public_holidays:
        closed |= public
    return sorted(d for d in closed if start <= d <= end), sorted(d for d in public if start <= d <= end)


def calendar_json(calendar: FacilityCalendar | None, facility_id: int) -> dict:
    if calendar is None:
        return {"facility_id": facility_id, "country": None, "subdivision": None, "closed_days": [],
                "closes_on_public_holidays": False, "updated_at": None}
    return {"facility_id": calendar.facility_id, "country": calendar.country,
            "subdivision": calendar.subdivision, "closed_days": sorted(calendar.closed_days or []),
            "closes_on_public_holidays": bool(calendar.closes_on_public_holidays),
            "updated_at": calendar.updated_at.isoformat() if calendar.updated_at else None}


def check_country(country: str | None, subdivision: str | None) -> None:
    """ValueError unless the ``holidays`` package knows the country (and subdivision)."""
    if country is None:
        if subdivision is not None:
            raise ValueError("a subdivision needs a country")
        return
    import holidays

    try:
        holidays.country_holidays(country, subdiv=subdivision, years=[2026])
    except NotImplementedError as exc:
        raise ValueError(f"unknown country or subdivision: {exc}") from exc


def save_calendar(session: Session, facility_id: int, *, country: str | None, subdivision: str | None,
                  closed_days: Sequence[date], closes_on_public_holidays: bool) -> FacilityCalendar:
    """Create or replace the facility's calendar (the caller audits and commits)."""
    check_country(country, subdivision)
    calendar = session.get(FacilityCalendar, facility_id)
    if calendar is None:
        calendar = FacilityCalendar(facility_id=facility_id)
        session.add(calendar)
    calendar.country, calendar.subdivision = country, subdivision
    calendar.closed_days = sorted({d.isoformat() for d in closed_days})
    calendar.closes_on_public_holidays = closes_on_public_holidays
    calendar.updated_at = datetime.now(UTC)
    session.flush()
    return calendar


def run_forecast(session: Session, facility_id: int | None, metric: str = "uploads", *,
                 horizon: int = forecasting.DEFAULT_HORIZON, today: date | None = None,
                 **options: object) -> UploadForecast:
    """Forecast ``horizon`` days from ``today`` (UTC) on the complete days before it."""
    today = today or datetime.now(UTC).date()
    last_day = today - timedelta(days=1)
    first_day, series = daily_history(session, facility_id, metric, last_day)
    # The calendar reaches past the horizon: Christmas to New Year is a holiday season even
    # when the New Year falls after the last day forecast.
    closed, public = calendar_days(session, facility_id, first_day,
                                   last_day + timedelta(days=horizon + forecasting.CALENDAR_REACH_DAYS))
    result = forecasting.forecast_series(series, first_day, horizon=horizon, closed=closed,
                                         holidays=public, **options)  # type: ignore[arg-type]
    row = UploadForecast(
        facility_id=facility_id, metric=metric, granularity="day", horizon=horizon, model=result.model,
        model_order=result.order, aic=result.aic,
        train_start=_midnight(result.train_start) if result.train_start else None,
        train_end=_midnight(result.train_end) if result.train_end else None,
        fallback_reason=result.fallback_reason, regressors=result.regressors,
        candidates=result.candidates, points=result.points(),
        # What was compared and why the winner won, how the intervals were made, and a short
        # history's note ride in the backtest record (JSON), for the API and the forecast page.
        backtest={**result.backtest, "intervals": result.intervals,
                  **({"history_note": result.history_note} if result.history_note else {})},
    )
    session.add(row)
    session.flush()
    return row


def hourly_history(session: Session, facility_id: int | None, metric: str, last_hour: datetime,
                   max_hours: int = HOURLY_HISTORY_HOURS) -> tuple[datetime, list[float]]:
    """(first hour, one value per hour up to ``last_hour``): the facility's hours from its
    first hour with stats (at most ``max_hours`` back), an hour without rows as zero."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    column = getattr(HourlyStats, metric)
    window_start = last_hour - timedelta(hours=max_hours - 1)
    query = (select(HourlyStats.hour, func.sum(column))
             .where(HourlyStats.hour >= window_start, HourlyStats.hour <= last_hour)
             .group_by(HourlyStats.hour))
    if facility_id is not None:
        query = query.where(HourlyStats.facility_id == facility_id)
    values: dict[datetime, float] = {}
    for hour, total in session.execute(query):
        hour = hour if hour.tzinfo else hour.replace(tzinfo=UTC)
        values[hour] = values.get(hour, 0.0) + float(total or 0)
    if not values:
        return last_hour + timedelta(hours=1), []
    first = min(values)
    return first, hourly_forecasting.hourly_series(values, first, last_hour).tolist()


def run_hourly_forecast(session: Session, facility_id: int | None, metric: str = "uploads", *,
                        horizon: int = hourly_forecasting.DEFAULT_HORIZON_HOURS,
                        now: datetime | None = None) -> UploadForecast:
    """Forecast the ``horizon`` hours from the current hour (UTC) on the complete hours before it."""
    now = now or datetime.now(UTC)
    this_hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    first_hour, series = hourly_history(session, facility_id, metric, this_hour - timedelta(hours=1))
    ahead_end = this_hour + timedelta(hours=horizon)
    closed, _public = calendar_days(session, facility_id, this_hour.date(), ahead_end.date())
    result = hourly_forecasting.forecast_hours(series, first_hour, horizon=horizon, closed=closed)
    row = UploadForecast(
        facility_id=facility_id, metric=metric, granularity="hour", horizon=horizon, model=result.model,
        train_start=result.train_start, train_end=result.train_end,
        fallback_reason=result.fallback_reason, regressors=[], candidates=[], backtest=result.backtest,
        points=result.points(),
    )
    session.add(row)
    session.flush()
    return row


def facilities_with_stats(session: Session) -> list[int]:
    return list(session.scalars(select(DailyFacilityStats.facility_id).distinct()
                                .order_by(DailyFacilityStats.facility_id)))


def facilities_with_recent_hours(session: Session, now: datetime | None = None) -> list[int]:
    """Facilities with hourly stats inside the hourly forecast's history window: a facility
    quiet for longer gets no next-48-hour forecast (its daily one says enough)."""
    since = (now or datetime.now(UTC)) - timedelta(hours=HOURLY_HISTORY_HOURS)
    return list(session.scalars(select(HourlyStats.facility_id).where(HourlyStats.hour >= since).distinct()
                                .order_by(HourlyStats.facility_id)))


def facility_by_name_or_id(session: Session, key: str) -> Facility | None:
    if key.isdigit():
        found = session.get(Facility, int(key))
        if found is not None:
            return found
    return session.scalars(select(Facility).where(Facility.name == key)).first()


def latest(session: Session, facility_ids: Sequence[int | None] | None, metric: str,
           granularity: str = "day") -> list[UploadForecast]:
    """The newest forecast of each facility (``None`` in ``facility_ids``: the total;
    ``facility_ids`` None: every facility and the total)."""
    newest = (select(UploadForecast.facility_id, func.max(UploadForecast.id).label("id"))
              .where(UploadForecast.metric == metric, UploadForecast.granularity == granularity)
              .group_by(UploadForecast.facility_id))
    if facility_ids is not None:
        wanted = [f for f in facility_ids if f is not None]
        condition = UploadForecast.facility_id.in_(wanted)
        if None in facility_ids:
            condition = condition | UploadForecast.facility_id.is_(None)
        newest = newest.where(condition)
    ids = [row.id for row in session.execute(newest)]
    if not ids:
        return []
    return list(session.scalars(select(UploadForecast).where(UploadForecast.id.in_(ids))
                                .order_by(UploadForecast.facility_id)))


def latest_for_facility(session: Session, facility_id: int | None, metric: str = "uploads",
                        granularity: str = "day") -> UploadForecast | None:
    """The newest stored forecast of one facility (``None``: the all-facility total), or None
    if it has none yet."""
    rows = latest(session, [facility_id], metric, granularity)
    return rows[0] if rows else None


def latest_for_facility_all_granularities(session: Session, facility_id: int,
                                          metric: str = "uploads") -> dict[str, UploadForecast | None]:
    """{"day": ..., "hour": ...}: the newest forecast of each granularity of one facility, in
    one statement (the dashboard's facility page asks on every load)."""
    newest = (select(func.max(UploadForecast.id))
              .where(UploadForecast.facility_id == facility_id, UploadForecast.metric == metric)
              .group_by(UploadForecast.granularity))
    rows = session.scalars(select(UploadForecast).where(UploadForecast.id.in_(newest)))
    found = {row.granularity: row for row in rows}
    return {granularity: found.get(granularity) for granularity in GRANULARITIES}
