"""Upload volume forecasts: facility calendars (closures) and stored forecasts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.models.base import Base, utcnow


class FacilityCalendar(Base):
    """A facility's calendar for the daily forecast: its country's public holidays (the
    ``holidays`` package), its own closed days (ISO dates), and whether it closes on the
    public holidays. A public holiday is a closed day (forecast zero) only when
    ``closes_on_public_holidays`` says so; otherwise its effect is learnt from the history."""

    __tablename__ = "facility_calendars"
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    country: Mapped[str | None] = mapped_column(String(8))
    subdivision: Mapped[str | None] = mapped_column(String(16))
    closed_days: Mapped[list] = mapped_column(JSON, default=list)
    closes_on_public_holidays: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class UploadForecast(Base):
    """One forecast run for one facility (``facility_id`` null: every facility together) and
    one measure (uploads or bytes): the model used, why, its backtest and the daily points."""

    __tablename__ = "upload_forecasts"
    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int | None] = mapped_column(ForeignKey("facilities.id"))
    metric: Mapped[str] = mapped_column(String(16))
    # "day": ``horizon`` days ahead; "hour": the next ``horizon`` hours (points carry "hour").
    granularity: Mapped[str] = mapped_column(String(8), default="day", server_default="day")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    horizon: Mapped[int] = mapped_column(Integer)
    # daily: a name of pipeline.forecasting.daily.CANDIDATES (seasonal_naive, weekday_mean_4w,
    # theta, ets, auto_arima, sarimax, combination, median_all);
    # hourly: seasonal_naive | weekly_mean | profile
    model: Mapped[str] = mapped_column(String(32))
    model_order: Mapped[list | None] = mapped_column(JSON)  # [[p, d, q], [P, D, Q, s]]
    aic: Mapped[float | None]
    train_start: Mapped[datetime | None]
    train_end: Mapped[datetime | None]
    fallback_reason: Mapped[str | None] = mapped_column(Text)
    regressors: Mapped[list] = mapped_column(JSON, default=list)
    candidates: Mapped[list] = mapped_column(JSON, default=list)
    backtest: Mapped[dict] = mapped_column(JSON, default=dict)
    points: Mapped[list] = mapped_column(JSON, default=list)
    __table_args__ = (Index("ix_upload_forecasts_facility_metric_created", "facility_id", "metric",
                            "created_at"),
                      Index("ix_upload_forecasts_granularity_facility_metric", "granularity", "facility_id",
                            "metric", "id"))
