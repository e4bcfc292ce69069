"""Report schedules: cron in an IANA timezone across DST, missed slots, run keys, periods."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline.exports.definitions import ExportSpec, period_bounds, period_label
from pipeline.exports.schedule import ScheduleError, latest_due, next_due, run_key, zone

BERLIN = "Europe/Berlin"


def _local(instant: datetime) -> str:
    return instant.astimezone(zone(BERLIN)).strftime("%a %H:%M")


@pytest.mark.parametrize("start", [datetime(2026, 3, 16, tzinfo=UTC), datetime(2026, 10, 19, tzinfo=UTC)])
def test_monday_0700_berlin_stays_monday_0700_across_dst(start):
    due, slots = start, []
    for _ in range(4):
        due = next_due("weekly", BERLIN, due)
        slots.append(due)
    assert [_local(s) for s in slots] == ["Mon 07:00"] * 4
    # The UTC hour moves with the offset: 06:00 UTC in winter (CET), 05:00 UTC in summer (CEST).
    assert sorted({s.hour for s in slots}) == [5, 6]


def test_spring_forward_missing_time_runs_once_after_the_gap():
    due = next_due("30 2 * * *", BERLIN, datetime(2026, 3, 28, 12, tzinfo=UTC))
    assert due == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 03:30 CEST, the day 02:30 does not exist
    assert next_due("30 2 * * *", BERLIN, due) == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)


def test_fall_back_repeated_time_runs_once():
    first = next_due("30 2 * * *", BERLIN, datetime(2026, 10, 24, 12, tzinfo=UTC))
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # the first 02:30 (CEST)
    assert next_due("30 2 * * *", BERLIN, first) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)


def test_missed_slots_collapse_into_the_latest_one():
    # Down for three weeks: the dispatcher runs only the last Monday, once.
    now = datetime(2026, 4, 22, 9, tzinfo=UTC)
    assert latest_due("weekly", BERLIN, now) == datetime(2026, 4, 20, 5, tzinfo=UTC)
    assert latest_due("weekly", BERLIN, datetime(2026, 4, 20, 5, tzinfo=UTC)) == datetime(2026, 4, 20, 5,
                                                                                         tzinfo=UTC)


def test_run_key_is_per_report_and_due_time():
    due = datetime(2026, 3, 30, 5, tzinfo=UTC)
    assert run_key(7, due) == run_key(7, due.astimezone(zone(BERLIN))) == "export-7@2026-03-30T05:00Z"
    assert run_key(8, due) != run_key(7, due)


def test_last_week_is_local_monday_to_monday():
    start, end = period_bounds("last_week", datetime(2026, 3, 30, 5, tzinfo=UTC), BERLIN)
    # The week holds the spring-forward Sunday: 167 hours, bounds on local midnights.
    assert start == datetime(2026, 3, 22, 23, tzinfo=UTC)
    assert end == datetime(2026, 3, 29, 22, tzinfo=UTC)
    assert period_label(start, end, BERLIN) == "2026-03-23_to_2026-03-29"
    month = period_bounds("last_month", datetime(2026, 3, 1, 6, tzinfo=UTC), BERLIN)
    assert period_label(*month, BERLIN) == "2026-02-01_to_2026-02-28"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("schedule", "61 * * * *", "invalid cron expression"),
    ("timezone", "Mars/Olympus", "unknown timezone"),
    ("metrics", ["uploads", "vibes"], "unknown metric"),
    ("grouping", ["day", "week"], "at most one time unit"),
    ("recipients", ["not-an-address"], "not an email address"),
    ("formats", ["docx"], "Input should be"),
])
def test_spec_validation_says_what_is_wrong(field, value, message):
    body = {"name": "Weekly QA", "metrics": ["uploads"], field: value}
    with pytest.raises(ValueError, match=message):
        ExportSpec.model_validate(body)


def test_bad_cron_raises_schedule_error():
    with pytest.raises(ScheduleError):
        next_due("not cron", "UTC", datetime(2026, 1, 1, tzinfo=UTC))
