"""Delivered studies and radiology reports in bulk, for the report tests and benchmark: each
study has a batch (its uploader), an upload, one instance and one delivered delivery row to a
destination, as the pipeline would have left them. Core INSERTs, so 100,000 rows take seconds."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydicom.uid import generate_uid
from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from pipeline.models import (
    Batch,
    Delivery,
    Destination,
    Instance,
    RadiologyReport,
    ReportStatusChange,
    Series,
    Study,
    Upload,
    utcnow,
)


@dataclass(frozen=True)
class SeededStudy:
    id: int
    facility_id: int
    study_instance_uid: str


def _advance_sequences(session: Session, *models: type) -> None:
    """Rows inserted with explicit ids leave PostgreSQL's sequences behind: move them on, so
    the application's own inserts that follow get fresh ids (SQLite needs nothing)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for model in models:
        last = session.scalar(select(func.max(model.id)))
        if last is not None:
            session.execute(text("SELECT setval(pg_get_serial_sequence(:table, 'id'), :last)"),
                            {"table": model.__tablename__, "last": last})


def _next_id(session: Session, model: type) -> int:
    return (session.scalar(select(func.max(model.id))) or 0) + 1


def delivered_studies(
    session: Session,
    facility_id: int,
    uploader_id: int,
    destination_id: int,
    count: int,
    delivered_at: datetime | None = None,
    study_uids: list[str] | None = None,
) -> list[SeededStudy]:
    """``count`` studies of one facility, delivered to ``destination_id`` at ``delivered_at``."""
    at = delivered_at or utcnow()
    uids = study_uids or [generate_uid() for _ in range(count)]
    batch_id = _next_id(session, Batch)
    session.execute(
        insert(Batch),
        [
            {
                "id": batch_id,
                "facility_id": facility_id,
                "user_id": uploader_id,
                "state": "done",
                "created_at": at,
                "last_activity_at": at,
            }
        ],
    )
    study0, series0, instance0 = (
        _next_id(session, Study),
        _next_id(session, Series),
        _next_id(session, Instance),
    )
    delivery0 = _next_id(session, Delivery)
    studies, series, uploads, instances, deliveries = [], [], [], [], []
    for i, uid in enumerate(uids):
        upload_id = hashlib.sha256(f"{batch_id}-{i}".encode()).hexdigest()[:32]
        sop = generate_uid()
        studies.append(
            {
                "id": study0 + i,
                "facility_id": facility_id,
                "study_instance_uid": uid,
                "modality": "CR",
                "study_date": "20260101",
                "created_at": at,
            }
        )
        series.append(
            {
                "id": series0 + i,
                "study_id": study0 + i,
                "series_instance_uid": generate_uid(),
                "modality": "CR",
            }
        )
        uploads.append(
            {
                "id": upload_id,
                "batch_id": batch_id,
                "facility_id": facility_id,
                "user_id": uploader_id,
                "filename": f"f{i}.dcm",
                "length": 1,
                "offset": 1,
                "state": "parsed",
                "created_at": at,
                "updated_at": at,
                "expires_at": at + timedelta(days=1),
                "unfinished_attempts": 0,
            }
        )
        instances.append(
            {
                "id": instance0 + i,
                "facility_id": facility_id,
                "series_id": series0 + i,
                "study_id": study0 + i,
                "sop_instance_uid": sop,
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1",
                "object_key": f"k/{sop}",
                "size": 1,
                "sha256": "0" * 64,
                "batch_id": batch_id,
                "upload_id": upload_id,
                "version_state": "current",
                "created_at": at,
            }
        )
        deliveries.append(
            {
                "id": delivery0 + i,
                "instance_id": instance0 + i,
                "destination_id": destination_id,
                "study_id": study0 + i,
                "batch_id": batch_id,
                "state": "delivered",
                "attempts": 1,
                "created_at": at,
                "updated_at": at,
                "delivered_at": at,
            }
        )
    for model, rows in (
        (Study, studies),
        (Series, series),
        (Upload, uploads),
        (Instance, instances),
        (Delivery, deliveries),
    ):
        session.execute(insert(model), rows)
    _advance_sequences(session, Batch, Study, Series, Instance, Delivery)
    session.flush()
    return [SeededStudy(s["id"], facility_id, s["study_instance_uid"]) for s in studies]


def reports_for(
    session: Session, studies: list[SeededStudy], destination_id: int | None, status: str = "final"
) -> list[int]:
    """One PACS report per study, with its first history row."""
    report0 = _next_id(session, RadiologyReport)
    now = utcnow()
    rows, history = [], []
    for i, study in enumerate(studies):
        text = f"Findings for study {study.id}: no acute abnormality."
        rows.append(
            {
                "id": report0 + i,
                "facility_id": study.facility_id,
                "study_id": study.id,
                "study_instance_uid": study.study_instance_uid,
                "source": "pacs",
                "destination_id": destination_id,
                "sop_instance_uid": generate_uid(),
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.11",
                "status": status,
                "text": text,
                "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
                "content_type": "application/dicom",
                "created_at": now,
                "updated_at": now,
            }
        )
        history.append({"report_id": report0 + i, "from_status": None, "to_status": status, "at": now})
    session.execute(insert(RadiologyReport), rows)
    session.execute(insert(ReportStatusChange), history)
    _advance_sequences(session, RadiologyReport)
    session.flush()
    return [r["id"] for r in rows]


def destination(session: Session, name: str, url: str = "http://127.0.0.1:9/dicom-web") -> Destination:
    dest = Destination(name=name, kind="stowrs", options={"url": url})
    session.add(dest)
    session.flush()
    return dest


def comments_for(session: Session, report_ids: list[int], facility_id: int, author_ids: list[int],
                 per_report: int = 3) -> int:
    """Threads on reports of one facility: report ``i`` gets ``i % (per_report + 1)`` comments
    (so counts vary), each by one of ``author_ids`` in turn; every third thread's first comment
    has a corrected second version. Returns the number of rows."""
    from pipeline.models import ReportComment

    now = utcnow()
    rows: list[dict] = []
    for i, report_id in enumerate(report_ids):
        for n in range(i % (per_report + 1)):
            key = hashlib.sha256(f"{report_id}-{n}".encode()).hexdigest()[:32]
            versions = 2 if n == 0 and i % 3 == 0 else 1
            for version in range(1, versions + 1):
                rows.append({"report_id": report_id, "facility_id": facility_id, "thread_key": key,
                             "version": version, "author_id": author_ids[(i + n) % len(author_ids)],
                             "text": f"Comment {n} on report {report_id}, version {version}.",
                             "recipients": [], "created_at": now})
    if rows:
        session.execute(insert(ReportComment), rows)
        session.flush()
    return len(rows)
