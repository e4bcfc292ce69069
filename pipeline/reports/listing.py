"""Reading radiology reports for people: the listing and one report with its history and its
thread, each in a constant number of SQL statements whatever the number of reports (no lazy
loading: every figure of a row is a column or a correlated scalar subquery of ONE statement).

Why plain columns and one cached statement: with 50 rows the SQL takes under a millisecond on
PostgreSQL, so what a request costs is Python. Building the statement (aliased users,
correlated subqueries) cost about 3 ms a request and loading ORM entities about as much; the
statement is now built once (rebuilt when a count is registered) and rows are plain column
tuples, never entities in the session. The report's text is read by the detail only.

Counts of what hangs off a report (comments, consults, ...) come from ``ROW_COUNTS``: a name
and a function that returns a scalar subquery correlated to ``RadiologyReport.id``. The
threads and consults of a report register theirs at import (``register_count``); a count
nobody registered is 0.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import cache

from sqlalchemy import ColumnElement, Row, Select, func, literal, select
from sqlalchemy.orm import Session, aliased

from pipeline.models import (
    Batch,
    Facility,
    Instance,
    RadiologyReport,
    ReportComment,
    ReportStatusChange,
    Study,
    User,
)

ROW_COUNTS: dict[str, Callable[[], ColumnElement[int]]] = {
    "comment_count": lambda: literal(0),
    "consult_count": lambda: literal(0),
}


def register_count(name: str, subquery: Callable[[], ColumnElement[int]]) -> None:
    """Add or replace a per-report count: ``subquery()`` must be a scalar subquery correlated
    to ``RadiologyReport.id`` (e.g. ``select(func.count(Comment.id)).where(Comment.report_id ==
    RadiologyReport.id).scalar_subquery()``)."""
    ROW_COUNTS[name] = subquery
    _row_select.cache_clear()


MAX_LIMIT = 200


@dataclass(frozen=True)
class ReportQuery:
    facility_ids: Collection[int] | None  # None: every facility (admins)
    limit: int = 50
    before_id: int | None = None  # keyset paging: reports with a smaller id
    status: str | None = None
    study_id: int | None = None
    facility_id: int | None = None  # narrow to one readable facility
    include_superseded: bool = False


# The report's own columns a row carries (its text only in the detail: a listing never needs it).
REPORT_COLUMNS = ("id", "facility_id", "status", "source", "study_id", "study_instance_uid", "author_id",
                  "document_author", "destination_id", "sop_instance_uid", "content_type", "object_key",
                  "predecessor_id", "superseded_by_id", "document_at", "created_at", "updated_at")


def _uploader_columns() -> list[ColumnElement]:
    """Who uploaded the study: the user of the batch that brought its first instance."""
    first_batch = (select(Instance.batch_id).where(Instance.study_id == RadiologyReport.study_id)
                   .order_by(Instance.id).limit(1).correlate(RadiologyReport).scalar_subquery())
    uploader = aliased(User)
    uploader_id = (select(Batch.user_id).where(Batch.id == first_batch)
                   .correlate(RadiologyReport).scalar_subquery())
    uploader_email = (select(uploader.email).where(uploader.id == uploader_id)
                      .correlate(RadiologyReport).scalar_subquery())
    return [uploader_id.label("uploader_id"), uploader_email.label("uploader_email")]


@cache
def _row_select(detail: bool = False) -> Select:
    """The one statement of a row, built once per process (and per registered count set)."""
    author = aliased(User)
    counts = [make().label(name) for name, make in ROW_COUNTS.items()]
    text = [RadiologyReport.text, RadiologyReport.text_sha256] if detail else []
    return (select(*(getattr(RadiologyReport, name) for name in REPORT_COLUMNS), *text,
                   Study.study_date, Study.modality, Study.description,
                   Facility.name.label("facility_name"), author.email.label("author_email"),
                   *_uploader_columns(), *counts)
            .join(Study, Study.id == RadiologyReport.study_id)
            .join(Facility, Facility.id == RadiologyReport.facility_id)
            .outerjoin(author, author.id == RadiologyReport.author_id))


def _iso(value) -> str | None:  # noqa: ANN001 - a datetime or None
    return value.isoformat() if value is not None else None


def row_dict(row: Row) -> dict:
    """One report as the API shows it, from a row of ``_row_select`` (or any object with the
    same attribute names)."""
    out = {
        "id": row.id, "facility_id": row.facility_id, "facility": row.facility_name,
        "status": row.status, "source": row.source,
        "study": {"id": row.study_id, "study_instance_uid": row.study_instance_uid,
                  "study_date": row.study_date, "modality": row.modality, "description": row.description},
        "uploader": {"id": row.uploader_id, "email": row.uploader_email} if row.uploader_id else None,
        "author": {"id": row.author_id, "email": row.author_email} if row.author_id else None,
        "document_author": row.document_author,
        "destination_id": row.destination_id, "sop_instance_uid": row.sop_instance_uid,
        "content_type": row.content_type, "has_original": row.object_key is not None,
        "predecessor_id": row.predecessor_id, "superseded_by_id": row.superseded_by_id,
        "document_at": _iso(row.document_at),
        "created_at": row.created_at.isoformat(), "updated_at": row.updated_at.isoformat(),
    }
    for name in ROW_COUNTS:
        out[name] = int(getattr(row, name) or 0)
    return out


def list_reports(session: Session, query: ReportQuery) -> list[dict]:
    """One statement: the page of reports with study, facility, uploader, author and counts."""
    stmt = _row_select()
    if query.facility_ids is not None:
        stmt = stmt.where(RadiologyReport.facility_id.in_(sorted(query.facility_ids)))
    if query.facility_id is not None:
        stmt = stmt.where(RadiologyReport.facility_id == query.facility_id)
    if not query.include_superseded:
        stmt = stmt.where(RadiologyReport.superseded_by_id.is_(None))
    if query.status is not None:
        stmt = stmt.where(RadiologyReport.status == query.status)
    if query.study_id is not None:
        stmt = stmt.where(RadiologyReport.study_id == query.study_id)
    if query.before_id is not None:
        stmt = stmt.where(RadiologyReport.id < query.before_id)
    stmt = stmt.order_by(RadiologyReport.id.desc()).limit(max(1, min(query.limit, MAX_LIMIT)))
    return [row_dict(row) for row in session.execute(stmt)]


@cache
def _history_select() -> Select:
    by = aliased(User)
    return (select(ReportStatusChange.from_status, ReportStatusChange.to_status, ReportStatusChange.at,
                   ReportStatusChange.by_user_id, ReportStatusChange.reason, by.email)
            .outerjoin(by, by.id == ReportStatusChange.by_user_id).order_by(ReportStatusChange.id))


@cache
def _thread_select() -> Select:
    """The newest version of each comment of a report, in order of first posting."""
    other = aliased(ReportComment)
    newest = (select(func.max(other.version)).where(other.thread_key == ReportComment.thread_key)
              .correlate(ReportComment).scalar_subquery())
    first = (select(func.min(other.id)).where(other.thread_key == ReportComment.thread_key)
             .correlate(ReportComment).scalar_subquery())
    author = aliased(User)
    return (select(ReportComment.id, ReportComment.thread_key, ReportComment.version,
                   ReportComment.author_id, author.email, ReportComment.text, ReportComment.recipients,
                   ReportComment.created_at)
            .join(author, author.id == ReportComment.author_id)
            .where(ReportComment.version == newest).order_by(first))


def history_dict(c: Row) -> dict:
    return {"from": c.from_status, "to": c.to_status, "at": c.at.isoformat(),
            "by": {"id": c.by_user_id, "email": c.email} if c.by_user_id else None, "reason": c.reason}


def comment_dict(c: Row) -> dict:
    return {"id": c.id, "key": c.thread_key, "version": c.version,
            "author": {"id": c.author_id, "email": c.email}, "text": c.text,
            "recipients": c.recipients or [], "created_at": c.created_at.isoformat()}


def report_detail(session: Session, report_id: int, facility_ids: Collection[int] | None) -> dict | None:
    """One report (None when missing or not readable) with its text, its status history and
    its thread (the newest version of each comment): three statements."""
    stmt = _row_select(detail=True).where(RadiologyReport.id == report_id)
    if facility_ids is not None:
        stmt = stmt.where(RadiologyReport.facility_id.in_(sorted(facility_ids)))
    row = session.execute(stmt).first()
    if row is None:
        return None
    out = row_dict(row)
    out["text"] = row.text
    out["text_sha256"] = row.text_sha256
    history = session.execute(_history_select().where(ReportStatusChange.report_id == report_id))
    out["history"] = [history_dict(c) for c in history]
    thread = session.execute(_thread_select().where(ReportComment.report_id == report_id))
    out["comments"] = [comment_dict(c) for c in thread]
    return out
