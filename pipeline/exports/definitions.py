"""What a report may ask for: the metrics catalogue, filters, relative periods, grouping,
formats, recipients and schedule, validated into one ``ExportSpec`` with clear errors.

The spec is stored as JSON on ``ExportDefinition.spec``; the API validates bodies with the
same model, so a stored definition is always one the builder can run.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.exports import schedule as export_schedule
from pipeline.models import MAX_ROW_ID

# name -> (label, section, number format). Sections become sheets and PDF chapters.
METRICS: dict[str, tuple[str, str, str]] = {
    "uploads": ("Uploads", "Volume", "#,##0"),
    "bytes": ("Bytes received", "Volume", "#,##0"),
    "studies": ("Studies", "Volume", "#,##0"),
    "quarantined": ("Quarantined", "Quality", "#,##0"),
    "quarantined_by_reason": ("Quarantined by reason", "Quarantine reasons", "#,##0"),
    "delivery_success_rate": ("Delivery success rate", "Delivery", "0.0%"),
    "delivery_latency_p50": ("Delivery latency P50 (ms)", "Delivery", "#,##0.0"),
    "delivery_latency_p95": ("Delivery latency P95 (ms)", "Delivery", "#,##0.0"),
    "dead_letters": ("Dead letters", "Delivery", "#,##0"),
    "storage_by_tier": ("Storage by tier", "Storage", "#,##0"),
    "forecast": ("Uploads forecast, next period", "Summary", "#,##0"),
}
# Metrics read from the materialised hourly stats, in the order of their columns.
STATS_METRICS = ("uploads", "bytes", "studies", "quarantined", "delivery_success_rate",
                 "delivery_latency_p50", "delivery_latency_p95", "dead_letters")
GROUPINGS = ("hour", "day", "week", "month", "facility", "modality", "user")
TIME_GROUPINGS = ("hour", "day", "week", "month")
PERIODS = ("yesterday", "last_week", "last_month", "last_7_days", "last_30_days", "last_365_days")
FORMATS = ("xlsx", "pdf", "csv")
_EMAIL = re.compile(r"^[^@\s<>,;\x00-\x1f]+@[^@\s<>,;\x00-\x1f]+\.[^@\s<>,;\x00-\x1f]+$")
# Database ids are 32-bit on PostgreSQL; larger numbers are refused here, not by the driver.
RowId = Annotated[int, Field(ge=1, le=MAX_ROW_ID)]
Modality = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[A-Za-z0-9_]+$")]


class ExportFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # None: the report's own facility (admins may name others, checked by the API).
    facility_ids: list[RowId] | None = Field(default=None, max_length=500)
    modalities: list[Modality] | None = Field(default=None, max_length=50)
    user_ids: list[RowId] | None = Field(default=None, max_length=500)
    period: Literal[PERIODS] = "last_week"  # type: ignore[valid-type]


class ExportSpec(BaseModel):
    """A report definition as the API receives it and the builder runs it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=120)
    metrics: list[str] = Field(min_length=1)
    filters: ExportFilters = Field(default_factory=ExportFilters)
    grouping: list[str] = Field(default_factory=lambda: ["day"], min_length=1, max_length=2)
    formats: list[Literal[FORMATS]] = Field(default_factory=lambda: ["xlsx"], min_length=1)  # type: ignore[valid-type]
    recipients: list[str] = Field(default_factory=list, max_length=50)
    schedule: str = Field(default="weekly", description="cron (5 fields) or weekly/monthly/daily")
    timezone: str = "UTC"
    enabled: bool = True
    store_in_s3: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("name must not be blank")
        if any(ord(c) < 32 for c in value):
            raise ValueError("name must not contain control characters")
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
        return list(dict.fromkeys(value))

    @field_validator("grouping")
    @classmethod
    def _grouping(cls, value: list[str]) -> list[str]:
        unknown = [g for g in value if g not in GROUPINGS]
        if unknown:
            raise ValueError(f"unknown grouping {', '.join(unknown)}; choose from {', '.join(GROUPINGS)}")
        if len(set(value)) != len(value) or sum(g in TIME_GROUPINGS for g in value) > 1:
            raise ValueError("grouping: at most one time unit (hour, day, week, month), no repeats")
        return value

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        bad = [r for r in value if not _EMAIL.match(r.strip())]
        if bad:
            raise ValueError(f"not an email address: {', '.join(bad)}")
        return [r.strip() for r in value]

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        try:
            export_schedule.check_cron(value)
        except export_schedule.ScheduleError as exc:
            raise ValueError(str(exc)) from exc
        return value.strip()

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            export_schedule.zone(value)
        except export_schedule.ScheduleError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @model_validator(mode="after")
    def _delivered_somewhere(self) -> ExportSpec:
        if not self.recipients and not self.store_in_s3:
            raise ValueError("a report needs recipients or store_in_s3 (else nobody gets it)")
        return self

    @property
    def cron(self) -> str:
        return export_schedule.check_cron(self.schedule)


def period_bounds(period: str, due_at: datetime, timezone: str) -> tuple[datetime, datetime]:
    """[start, end) in UTC of a relative period, judged from the due time in local time:
    "last_week" at Monday 07:00 Berlin is the previous Monday 00:00 to this Monday 00:00."""
    tz = export_schedule.zone(timezone)
    local = due_at.astimezone(tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "yesterday":
        start, end = midnight - timedelta(days=1), midnight
    elif period == "last_week":
        end = midnight - timedelta(days=midnight.weekday())
        start = end - timedelta(days=7)
    elif period == "last_month":
        end = midnight.replace(day=1)
        start = (end - timedelta(days=1)).replace(day=1)
    else:
        days = {"last_7_days": 7, "last_30_days": 30, "last_365_days": 365}[period]
        start, end = midnight - timedelta(days=days), midnight
    # Re-attach the zone: arithmetic on aware datetimes keeps the old offset across DST.
    start = start.replace(tzinfo=None).replace(tzinfo=tz)
    end = end.replace(tzinfo=None).replace(tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def period_label(start: datetime, end: datetime, timezone: str) -> str:
    """For file names: 2026-03-23_to_2026-03-29 (local dates, end inclusive)."""
    tz = export_schedule.zone(timezone)
    last = (end.astimezone(tz) - timedelta(seconds=1)).date()
    first = start.astimezone(tz).date()
    return f"{first:%Y-%m-%d}" if first == last else f"{first:%Y-%m-%d}_to_{last:%Y-%m-%d}"


def slug(name: str) -> str:
    """A report name as a file-name part: letters, digits, dashes."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[:60] or "report"
