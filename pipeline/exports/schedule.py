"""When a report is due: cron expressions evaluated in the definition's IANA timezone.

Cron fields are read as local wall-clock time, never as UTC: a "Monday 07:00
Europe/Berlin" report runs at 06:00 UTC in winter and 05:00 UTC in summer, and stays on
Monday (Redash stored UTC schedules and drifted across DST). croniter iterates naive local
times; zoneinfo turns each into an instant:
- a local time that does not exist (spring forward, 02:30) runs at the same distance after
  the gap (03:30), once;
- a local time that happens twice (fall back) runs at its first occurrence, once.

Every function takes ``now``/``after`` explicitly: the clock is the caller's, so tests and
the dispatcher share one notion of "now".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter

# Presets offered next to raw cron: Monday 07:00 and the 1st of the month 07:00, local time.
PRESETS = {"weekly": "0 7 * * 1", "monthly": "0 7 1 * *", "daily": "0 7 * * *"}


class ScheduleError(ValueError):
    """A cron expression or timezone that cannot be used."""


def zone(name: str) -> ZoneInfo:
    # ZoneInfo also accepts file paths; only names from the IANA database are allowed.
    if name not in available_timezones():
        raise ScheduleError(f"unknown timezone {name!r}: use an IANA name such as Europe/Berlin")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"unknown timezone {name!r}") from exc


def check_cron(expression: str) -> str:
    expression = PRESETS.get(expression, expression).strip()
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise ScheduleError(
            f"invalid cron expression {expression!r}: five fields, minute hour day month weekday "
            "(e.g. '0 7 * * 1'), or a preset: " + ", ".join(PRESETS))
    return expression


def _instant(local: datetime, tz: ZoneInfo) -> datetime:
    # fold=0: the first of two ambiguous times; for a missing time, the pre-gap offset,
    # which lands the same distance after the gap.
    return local.replace(tzinfo=tz, fold=0).astimezone(UTC)


def _local(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def next_due(expression: str, timezone: str, after: datetime) -> datetime:
    """The first slot strictly after ``after`` (aware), as an aware UTC datetime."""
    tz = zone(timezone)
    expression = check_cron(expression)
    it = croniter(expression, _local(after, tz).replace(second=0, microsecond=0))
    for _ in range(10_000):
        candidate = _instant(it.get_next(datetime), tz)
        # In a repeated hour the local clock goes back: skip slots already passed.
        if candidate > after:
            return candidate
    raise ScheduleError(f"no future slot for {expression!r}")  # pragma: no cover


def latest_due(expression: str, timezone: str, now: datetime) -> datetime | None:
    """The most recent slot at or before ``now``: what a dispatcher runs, once, however many
    slots it missed while down."""
    tz = zone(timezone)
    expression = check_cron(expression)
    start = _local(now, tz).replace(second=0, microsecond=0) + timedelta(minutes=1)
    it = croniter(expression, start)
    for _ in range(10_000):
        candidate = _instant(it.get_prev(datetime), tz)
        if candidate <= now:
            return candidate
    return None  # pragma: no cover


def run_key(export_id: int, due_at: datetime) -> str:
    """One run per report and due time: the unique key two dispatchers collide on."""
    return f"export-{export_id}@{due_at.astimezone(UTC):%Y-%m-%dT%H:%MZ}"
