"""Scheduled exports for QA managers: definitions and their runs."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.models.base import Base, utcnow


class ExportRunState(enum.StrEnum):
    QUEUED = "queued"  # created by the dispatcher or "run now"; a task is on its way
    WORKING = "working"  # claimed by a worker; recovered after the working timeout
    RETRYING = "retrying"  # failed, another attempt is scheduled (error says why)
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # gave up after the retry cap; replayable through the API


class ExportDefinition(Base):
    """A QA manager's report: what to compute (metrics, filters, grouping), in which
    formats, for whom, and when (cron in an IANA timezone). ``next_due_at`` is what the
    dispatcher selects on; it is derived from the schedule, never edited by hand."""

    __tablename__ = "export_definitions"
    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    # The validated definition (pipeline/exports/definitions.py ExportSpec) as JSON.
    spec: Mapped[dict] = mapped_column(JSON, default=dict)
    cron: Mapped[str] = mapped_column(String(120))
    timezone: Mapped[str] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(default=True)
    next_due_at: Mapped[datetime | None]
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (
        UniqueConstraint("facility_id", "name", name="uq_export_definitions_facility_name"),
        Index("ix_export_definitions_due", "enabled", "next_due_at"),
    )


class ExportRun(Base):
    """One execution of a report for one due time. ``run_key`` (report and due time) is
    unique, so two dispatchers racing for the same slot create one row, one mail."""

    __tablename__ = "export_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    export_id: Mapped[int] = mapped_column(ForeignKey("export_definitions.id", ondelete="CASCADE"),
                                           index=True)
    run_key: Mapped[str] = mapped_column(String(80), unique=True)
    trigger: Mapped[str] = mapped_column(String(16), default="schedule")  # schedule | manual
    due_at: Mapped[datetime]
    period_start: Mapped[datetime | None]
    period_end: Mapped[datetime | None]
    state: Mapped[str] = mapped_column(String(16), default=ExportRunState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    # {format-or-file name: object key}; kept across attempts so a retry re-sends, not rebuilds.
    artifacts: Mapped[dict] = mapped_column(JSON, default=dict)
    artifact_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    recipients_notified: Mapped[list] = mapped_column(JSON, default=list)
    # Set once the mail went out: a redelivered task never mails twice.
    notified_at: Mapped[datetime | None]
    delivery: Mapped[str | None] = mapped_column(String(16))  # attachment | link | none
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index("ix_export_runs_state_started", "state", "started_at"),)
