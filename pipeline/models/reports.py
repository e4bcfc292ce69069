"""Radiology reports on the studies the gateway delivered: each document (a Structured Report
or Encapsulated PDF read back from a PACS, or a report a radiologist wrote or uploaded here),
its status history, and the poll's state per destination.

Not to be confused with the QA managers' scheduled exports (pipeline/models/exports.py).
Statuses follow FHIR DiagnosticReport. A document is never rewritten: an amending document is a
row of its own that names its predecessor, and the predecessor records ``superseded_by_id``;
listings show the documents nobody superseded.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.models.base import Base, utcnow


class ReportStatus(enum.StrEnum):
    REGISTERED = "registered"  # exists, no result yet (a manual report opened before its text)
    PRELIMINARY = "preliminary"  # verified-not-yet or incomplete (SR PARTIAL or UNVERIFIED)
    FINAL = "final"  # complete and verified
    AMENDED = "amended"  # changed after it was final (a newer document names it)
    APPENDED = "appended"  # final, with an addendum (a consult's answer); the text is unchanged
    CANCELLED = "cancelled"  # withdrawn


class ReportSource(enum.StrEnum):
    PACS = "pacs"  # read back from a destination by the report poll
    MANUAL = "manual"  # written or uploaded by a radiologist through the API


class RadiologyReport(Base):
    __tablename__ = "radiology_reports"
    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    # The StudyInstanceUID that actually went out to the destination (the delivery ledger's).
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(8))  # ReportSource
    # The PACS it was read from (source pacs); None for a manual report.
    destination_id: Mapped[int | None] = mapped_column(ForeignKey("destinations.id"))
    # The document's own DICOM identity (None for a manual text report).
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # ReportStatus
    # The readable text (SR content tree flattened, or the PDF's text); never logged (PHI).
    text: Mapped[str] = mapped_column(Text, default="")
    text_sha256: Mapped[str] = mapped_column(String(64))
    # The original object in the byte store (DICOM Part-10 or an uploaded PDF), byte for byte.
    object_key: Mapped[str | None] = mapped_column(String(512))
    content_type: Mapped[str] = mapped_column(String(64), default="text/plain")
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))  # manual reports
    # Who the document says wrote or verified it (SR VerifyingObserverName / author), for display.
    document_author: Mapped[str | None] = mapped_column(String(200))
    # When the document says it was written (ContentDate/Time), if it says.
    document_at: Mapped[datetime | None]
    predecessor_id: Mapped[int | None] = mapped_column(ForeignKey("radiology_reports.id"))
    superseded_by_id: Mapped[int | None] = mapped_column(ForeignKey("radiology_reports.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (
        # The poll reads a document once per destination, however often it sees it.
        UniqueConstraint("destination_id", "sop_instance_uid", name="uq_radiology_reports_destination_sop"),
        # The listing: a facility's current reports, newest first.
        Index("ix_radiology_reports_facility_id", "facility_id", "id"),
    )


class ReportStatusChange(Base):
    """One move of a report's status (from None when it was created): who, when, why."""

    __tablename__ = "report_status_changes"
    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("radiology_reports.id", ondelete="CASCADE"),
                                           index=True)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))  # None: the report poll
    reason: Mapped[str | None] = mapped_column(Text)


class ReportPollState(Base):
    """The report poll per destination: when it may ask next, how many times in a row it did
    not answer QIDO-RS, and why. A destination that does not answer waits longer each time
    (never retried hot) and shows as ``unreachable`` in the API until it answers again."""

    __tablename__ = "report_poll_states"
    destination_id: Mapped[int] = mapped_column(ForeignKey("destinations.id", ondelete="CASCADE"),
                                                primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="ok")  # ok | unreachable | unsupported
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    next_poll_at: Mapped[datetime | None]
    last_polled_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    studies_checked: Mapped[int] = mapped_column(Integer, default=0)  # in the last round
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class StudyReportCheck(Base):
    """When the poll last asked a destination about one delivered study, and when it is due
    again (the schedule in pipeline/reports/poll.py thins out as the study ages)."""

    __tablename__ = "study_report_checks"
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True)
    destination_id: Mapped[int] = mapped_column(ForeignKey("destinations.id", ondelete="CASCADE"),
                                                primary_key=True)
    # The study's first delivery to this destination: its age sets how often it is asked.
    delivered_at: Mapped[datetime]
    last_checked_at: Mapped[datetime | None]
    next_check_at: Mapped[datetime | None] = mapped_column(index=True)
    documents_seen: Mapped[int] = mapped_column(Integer, default=0)
