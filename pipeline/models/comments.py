"""What people say about a radiology report: comment threads (every version kept), consults
with their state rows, addenda, the notifications they cause (with read state) and each
user's mail preference.

Rows carry the report's ``facility_id`` so every read is scoped in the query. Comments and
addenda are only ever added: a correction is a new version of a comment, an addendum never
touches the report's own text.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.models.base import Base, utcnow

# A comment, a consult question or an addendum: bounded, enforced by the database too.
MAX_TEXT = 4000
REPORTS_TABLE = "radiology_reports"


class ReportComment(Base):
    """One version of a comment. Versions of one comment share ``thread_key``; the newest
    version is the one shown, the older ones stay (and each correction is audited)."""

    __tablename__ = "report_comments"
    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey(f"{REPORTS_TABLE}.id"), index=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    # The comment's identity across its versions (random, 32 hex characters).
    thread_key: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer, default=1)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    text: Mapped[str] = mapped_column(Text)
    # Users the comment is addressed to (ids); empty: the thread.
    recipients: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (
        UniqueConstraint("thread_key", "version"),
        CheckConstraint(f"length(text) <= {MAX_TEXT}", name="ck_report_comments_text_length"),
        Index("ix_report_comments_report_created", "report_id", "created_at"),
    )


class ConsultRequest(Base):
    """A consult asked on a report: of a named consultant, or of a subspecialty pool
    (``consultant_id`` NULL until someone accepts it). States: pipeline.reports.consults."""

    __tablename__ = "consult_requests"
    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey(f"{REPORTS_TABLE}.id"), index=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    requester_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    consultant_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    subspecialty: Mapped[str | None] = mapped_column(String(64))
    question: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="requested")
    due_at: Mapped[datetime]
    reminded_at: Mapped[datetime | None]
    # How many times it went back to the pool for being overdue.
    reoffers: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (
        CheckConstraint(f"length(question) <= {MAX_TEXT}", name="ck_consult_requests_question_length"),
        Index("ix_consult_requests_state_due", "state", "due_at"),
    )


class ConsultStateChange(Base):
    """Every move of a consult: from, to, the action and who made it (NULL: the beat job)."""

    __tablename__ = "consult_state_changes"
    id: Mapped[int] = mapped_column(primary_key=True)
    consult_id: Mapped[int] = mapped_column(ForeignKey("consult_requests.id"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ReportAddendum(Base):
    """Text added to a report after it was signed (a consult's answer). The report's own
    text is never changed; the addendum PDF (original plus every addendum) goes back to the
    PACS as an Encapsulated PDF instance of the study, through the delivery ledger."""

    __tablename__ = "report_addenda"
    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey(f"{REPORTS_TABLE}.id"), index=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    consult_id: Mapped[int | None] = mapped_column(ForeignKey("consult_requests.id"))
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The DICOM object made for it: set once by the worker that builds it.
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), unique=True)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id"))
    __table_args__ = (
        CheckConstraint(f"length(text) <= {MAX_TEXT}", name="ck_report_addenda_text_length"),
    )


class Notification(Base):
    """Something a user should see: shown in the pages until read (``read_at``), mailed
    according to their preference (``mailed_at``: sent, alone or in a digest)."""

    __tablename__ = "notifications"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"))
    kind: Mapped[str] = mapped_column(String(32))  # pipeline.reports.notices.NoticeKind
    report_id: Mapped[int | None] = mapped_column(ForeignKey(f"{REPORTS_TABLE}.id"))
    comment_id: Mapped[int | None] = mapped_column(ForeignKey("report_comments.id"))
    consult_id: Mapped[int | None] = mapped_column(ForeignKey("consult_requests.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    read_at: Mapped[datetime | None]
    mailed_at: Mapped[datetime | None]
    __table_args__ = (
        Index("ix_notifications_user_unread", "user_id", "read_at"),
        # One notice per recipient per comment, whatever a retry does.
        UniqueConstraint("user_id", "comment_id", name="uq_notifications_user_comment"),
    )


class MailPreference(Base):
    """How a user wants notices mailed: each, daily digest or none. No row: each. The
    token in the unsubscribe link only ever turns mail off, so it is kept as it is."""

    __tablename__ = "mail_preferences"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    mode: Mapped[str] = mapped_column(String(8), default="each")
    unsubscribe_token: Mapped[str] = mapped_column(String(64), unique=True)
    digest_sent_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
