"""Reports a radiologist writes or uploads here, for PACS that do not expose theirs: for a
study the gateway delivered, with text, or a PDF whose text is read with pypdf (the PDF is kept
byte for byte in the object store)."""

from __future__ import annotations

import io
import secrets
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.models import Delivery, DeliveryState, RadiologyReport, ReportSource, ReportStatus, Study
from pipeline.ops import events
from pipeline.reports import status
from pipeline.reports.documents import pdf_text, text_sha256

MAX_TEXT_CHARS = 100_000
MAX_PDF_BYTES = 20 * 1024 * 1024
# A person starts a report in one of these; the rest are moves (pipeline/reports/status.py).
INITIAL_STATUSES = (ReportStatus.REGISTERED, ReportStatus.PRELIMINARY, ReportStatus.FINAL)


class ReportRefused(ValueError):
    """The request cannot make a report (the message says why; the API answers 4xx)."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


def first_delivery_destination(session: Session, study_id: int) -> int | None:
    """The destination a study first reached (None: it was never delivered)."""
    return session.scalar(select(Delivery.destination_id).where(
        Delivery.study_id == study_id, Delivery.state == DeliveryState.DELIVERED)
        .order_by(Delivery.delivered_at, Delivery.id).limit(1))


def create_manual(session: Session, store: object, study: Study, author_id: int, *, text: str | None,
                  pdf: bytes | None, initial_status: str,
                  now: datetime) -> tuple[RadiologyReport, events.Event]:
    """A new manual report and its first history row; the event to publish after the commit."""
    if ReportStatus(initial_status) not in INITIAL_STATUSES:
        raise ReportRefused(f"a new report is one of: {', '.join(s.value for s in INITIAL_STATUSES)}")
    destination_id = first_delivery_destination(session, study.id)
    if destination_id is None:
        raise ReportRefused(f"study {study.id} has not been delivered yet", 409)
    if (text is None) == (pdf is None):
        raise ReportRefused("give the report as text or as one PDF file, not both, not neither")
    key = None
    content_type = "text/plain"
    if pdf is not None:
        if len(pdf) > MAX_PDF_BYTES:
            raise ReportRefused(f"the PDF is over {MAX_PDF_BYTES // (1024 * 1024)} MiB", 413)
        if not pdf.startswith(b"%PDF-"):
            raise ReportRefused("the file is not a PDF")
        try:
            text = pdf_text(pdf)
        except ValueError as exc:
            raise ReportRefused(str(exc)) from exc
        key = f"reports/{study.facility_id}/{study.id}/manual-{secrets.token_hex(8)}.pdf"
        store.put_stream(key, io.BytesIO(pdf))  # type: ignore[attr-defined]
        content_type = "application/pdf"
    assert text is not None
    if len(text) > MAX_TEXT_CHARS:
        raise ReportRefused(f"text over {MAX_TEXT_CHARS} characters", 413)
    report = RadiologyReport(
        facility_id=study.facility_id, study_id=study.id, study_instance_uid=study.study_instance_uid,
        source=ReportSource.MANUAL.value, destination_id=destination_id, sop_instance_uid=None,
        status=ReportStatus(initial_status).value, text=text, text_sha256=text_sha256(text),
        object_key=key, content_type=content_type, author_id=author_id, created_at=now, updated_at=now)
    session.add(report)
    session.flush()
    event = status.record_initial(session, report, by_user_id=author_id, reason="written by a radiologist",
                                  now=now)
    return report, event
