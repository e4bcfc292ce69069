"""Reading radiology reports for people: the listing and one report with its history, each in
a constant number of SQL statements whatever the number of reports (no lazy loading: every
figure of a row is a column or a correlated scalar subquery of ONE statement).

Counts of what hangs off a report (comments, consults, ...) come from ``ROW_COUNTS``: a name
and a function that returns a scalar subquery correlated to ``RadiologyReport.id``. The
threads and consults of a report register theirs at import (``register_count``); a count
nobody registered is 0.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Select, literal, select
from sqlalchemy.orm import Session, aliased

from pipeline.models import Batch, Facility, Instance, RadiologyReport, ReportStatusChange, Study, User

ROW_COUNTS: dict[str, Callable[[], ColumnElement[int]]] = {
    "comment_count": lambda: literal(0),
    "consult_count": lambda: literal(0),
}


def register_count(name: str, subquery: Callable[[], ColumnElement[int]]) -> None:
    """Add or replace a per-report count: ``subquery()`` must be a scalar subquery correlated
    to ``RadiologyReport.id`` (e.g. ``select(func.count(Comment.id)).where(Comment.report_id ==
    RadiologyReport.id).scalar_subquery()``)."""
    ROW_COUNTS[name] = subquery


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


def _row_select() -> Select:
    author = aliased(User)
    counts = [make().label(name) for name, make in ROW_COUNTS.items()]
    return (select(RadiologyReport, Study.study_date, Study.modality, Study.description,
                   Facility.name.label("facility_name"), author.email.label("author_email"),
                   *_uploader_columns(), *counts)
            .join(Study, Study.id == RadiologyReport.study_id)
            .join(Facility, Facility.id == RadiologyReport.facility_id)
            .outerjoin(author, author.id == RadiologyReport.author_id))


def row_dict(row) -> dict:  # noqa: ANN001 - a Row of _row_select
    report: RadiologyReport = row[0]
    out = {
        "id": report.id, "facility_id": report.facility_id, "facility": row.facility_name,
        "status": report.status, "source": report.source,
        "study": {"id": report.study_id, "study_instance_uid": report.study_instance_uid,
                  "study_date": row.study_date, "modality": row.modality, "description": row.description},
        "uploader": {"id": row.uploader_id, "email": row.uploader_email} if row.uploader_id else None,
        "author": {"id": report.author_id, "email": row.author_email} if report.author_id else None,
        "document_author": report.document_author,
        "destination_id": report.destination_id, "sop_instance_uid": report.sop_instance_uid,
        "content_type": report.content_type, "has_original": report.object_key is not None,
        "predecessor_id": report.predecessor_id, "superseded_by_id": report.superseded_by_id,
        "document_at": report.document_at.isoformat() if report.document_at else None,
        "created_at": report.created_at.isoformat(), "updated_at": report.updated_at.isoformat(),
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


def report_detail(session: Session, report_id: int, facility_ids: Collection[int] | None) -> dict | None:
    """One report (None when missing or not readable) with its text and status history:
    two statements."""
    stmt = _row_select().where(RadiologyReport.id == report_id)
    if facility_ids is not None:
        stmt = stmt.where(RadiologyReport.facility_id.in_(sorted(facility_ids)))
    row = session.execute(stmt).first()
    if row is None:
        return None
    out = row_dict(row)
    out["text"] = row[0].text
    out["text_sha256"] = row[0].text_sha256
    by = aliased(User)
    history = session.execute(
        select(ReportStatusChange, by.email).outerjoin(by, by.id == ReportStatusChange.by_user_id)
        .where(ReportStatusChange.report_id == report_id).order_by(ReportStatusChange.id)).all()
    out["history"] = [{"from": c.from_status, "to": c.to_status, "at": c.at.isoformat(),
                       "by": {"id": c.by_user_id, "email": email} if c.by_user_id else None,
                       "reason": c.reason} for c, email in history]
    return out
