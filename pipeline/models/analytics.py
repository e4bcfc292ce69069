"""Materialised stats for dashboards: hourly rows per facility, user, modality and status, daily
and weekly roll-ups, the watermark of the incremental job, and the raw-row indexes it reads
through.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.models.base import Base, utcnow
from pipeline.models.delivery import Delivery
from pipeline.models.dicom import Instance, Study
from pipeline.models.intake import Upload

# Upper bounds (ms) of the forwarding-latency histogram buckets; the last is open-ended.
# Histograms, unlike stored percentiles, add up across hours, users and facilities.
LATENCY_BUCKETS_MS = (250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000,
                      3_600_000, None)


# The measure columns a covering index carries (the names of _StatsMetrics' columns).
STATS_INCLUDE = ("uploads", "bytes", "studies", "quarantined", "delivered", "pending_deliveries",
                 "failed_deliveries", "latency_sum_ms", "latency_max_ms",
                 *(f"lat_b{i}" for i in range(len(LATENCY_BUCKETS_MS))))


class _StatsMetrics:
    """The measures shared by the hourly and the daily tables (all additive)."""

    uploads: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    studies: Mapped[int] = mapped_column(Integer, default=0)
    quarantined: Mapped[int] = mapped_column(Integer, default=0)
    delivered: Mapped[int] = mapped_column(Integer, default=0)
    pending_deliveries: Mapped[int] = mapped_column(Integer, default=0)
    failed_deliveries: Mapped[int] = mapped_column(Integer, default=0)
    latency_sum_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_max_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    lat_b0: Mapped[int] = mapped_column(Integer, default=0)
    lat_b1: Mapped[int] = mapped_column(Integer, default=0)
    lat_b2: Mapped[int] = mapped_column(Integer, default=0)
    lat_b3: Mapped[int] = mapped_column(Integer, default=0)
    lat_b4: Mapped[int] = mapped_column(Integer, default=0)
    lat_b5: Mapped[int] = mapped_column(Integer, default=0)
    lat_b6: Mapped[int] = mapped_column(Integer, default=0)
    lat_b7: Mapped[int] = mapped_column(Integer, default=0)
    lat_b8: Mapped[int] = mapped_column(Integer, default=0)
    lat_b9: Mapped[int] = mapped_column(Integer, default=0)
    lat_b10: Mapped[int] = mapped_column(Integer, default=0)
    lat_b11: Mapped[int] = mapped_column(Integer, default=0)


class HourlyStats(_StatsMetrics, Base):
    """Uploads of one hour (by creation), one facility, modality, upload state and user.

    Materialised by the analytics beat job from the raw rows (pipeline/analytics/stats.py); ``open``
    marks rows whose uploads or deliveries may still change, recomputed on every run."""

    __tablename__ = "hourly_stats"
    id: Mapped[int] = mapped_column(primary_key=True)
    hour: Mapped[datetime]
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"))
    modality: Mapped[str] = mapped_column(String(16), default="")
    status: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    open: Mapped[bool] = mapped_column(default=False)
    __table_args__ = (
        UniqueConstraint("hour", "facility_id", "modality", "status", "user_id",
                         name="uq_hourly_stats_key"),
        # Covering, facility first: one facility's (or user's) range is an index-only scan
        # instead of a heap page per row (a facility's hours are spread over the table).
        Index("ix_hourly_stats_facility_hour_cover", "facility_id", "hour",
              postgresql_include=["status", "modality", "user_id", *STATS_INCLUDE]),
        Index("ix_hourly_stats_user_hour_cover", "user_id", "hour",
              postgresql_include=["status", *STATS_INCLUDE]),
        Index("ix_hourly_stats_open", "open"),
    )


class DailyFacilityStats(_StatsMetrics, Base):
    """One facility's day, rolled up from hourly_stats: the admin overview reads a few
    hundred of these rows instead of tens of thousands of hourly ones."""

    __tablename__ = "daily_facility_stats"
    day: Mapped[datetime] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    __table_args__ = (
        Index("ix_daily_facility_stats_facility_day_cover", "facility_id", "day",
              postgresql_include=list(STATS_INCLUDE)),
    )


class WeeklyFacilityStats(_StatsMetrics, Base):
    """One facility's ISO week (Monday 00:00 UTC), rolled up from daily_facility_stats: a
    year by week reads 52 rows a facility instead of 365 (days at the range's edges that do
    not make a whole week still come from the daily rows)."""

    __tablename__ = "weekly_facility_stats"
    week: Mapped[datetime] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), primary_key=True)


class AnalyticsWatermark(Base):
    """How far the materialisation has looked at row changes (one row per job)."""

    __tablename__ = "analytics_watermarks"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


# Raw-row indexes for what stays on raw rows: finding changed rows since the watermark,
# a facility's or user's recent uploads (listings), and the naive per-modality queries.
Index("ix_uploads_created_facility", Upload.created_at, Upload.facility_id)


Index("ix_uploads_updated_at", Upload.updated_at)


Index("ix_uploads_user_created", Upload.user_id, Upload.created_at)


# The open-uploads limit counts a user's RECEIVING uploads on every tus creation: a partial
# index keeps that count to the few open ones instead of every upload the user ever sent.
Index("ix_uploads_user_receiving", Upload.user_id,
      postgresql_where=Upload.state == "receiving", sqlite_where=Upload.state == "receiving")


Index("ix_studies_created_modality", Study.created_at, Study.modality)


Index("ix_instances_upload_id", Instance.upload_id)


Index("ix_deliveries_updated_at", Delivery.updated_at)


Index("ix_deliveries_instance_state", Delivery.instance_id, Delivery.state)
