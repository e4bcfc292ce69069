"""Filing an addendum with the PACS: the addendum PDF (the report's original text and every
addendum so far) made into an Encapsulated PDF instance of the report's study, stored, and
put on the ordinary delivery ledger for the destinations that received the study.

The instance is recorded like any other (a batch and an upload of the gateway's own, a
series, an instance, one delivery row per destination), so forwarding, retries, dead
letters, replays and the batch page treat it as they treat images. Its patient and study
attributes come from an instance of the study as it went out (the rendition that was sent,
after any move or template), so the PACS files it in the same study. Idempotent: an
addendum already filed returns its pending deliveries.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.dicom.rewrite import read_header
from pipeline.models import (
    Batch,
    BatchState,
    Delivery,
    DeliveryState,
    Instance,
    InstanceVersion,
    ReportAddendum,
    Series,
    Study,
    Upload,
    UploadState,
    User,
    utcnow,
)
from pipeline.reports import addenda
from pipeline.storage import ObjectStore, iter_object

UPLOAD_FILENAME = "report-addendum.dcm"  # never a patient's name: files names can be PHI


class NotYetDeliverable(RuntimeError):
    """The study has not reached any destination yet: nothing to file the addendum with."""


@dataclass(frozen=True)
class ReportText:
    """What the PDF needs of the report: its signed text, author and time, and status."""

    report_id: int
    facility_id: int
    study_id: int
    text: str
    author: str
    at: datetime
    status: str


def _sent_header(session: Session, store: ObjectStore, study_id: int):  # noqa: ANN202 - a Dataset
    """The header of an instance of the study as it was sent (first delivered row)."""
    row = session.execute(
        select(Delivery.sent_object_key, Instance.object_key)
        .join(Instance, Instance.id == Delivery.instance_id)
        .where(Delivery.study_id == study_id, Delivery.state == DeliveryState.DELIVERED,
               Instance.sop_class_uid != addenda.ENCAPSULATED_PDF_STORAGE)
        .order_by(Delivery.id).limit(1)).first()
    if row is None:
        raise NotYetDeliverable(f"study {study_id} has no delivered instance yet")
    key = row.sent_object_key or row.object_key
    with tempfile.TemporaryDirectory(prefix="relaypacs-addendum-") as tmp:
        path = Path(tmp) / "sent.dcm"
        with open(path, "wb") as out:
            for block in iter_object(store, key):
                out.write(block)
        with open(path, "rb") as fh:
            ds, _ = read_header(fh)
    return ds


def _destinations(session: Session, study_id: int) -> list[int]:
    return list(session.scalars(
        select(Delivery.destination_id).where(Delivery.study_id == study_id,
                                              Delivery.state == DeliveryState.DELIVERED)
        .distinct().order_by(Delivery.destination_id)))


def _pending(session: Session, instance_id: int) -> list[tuple[int, int]]:
    return [(r.study_id, r.destination_id) for r in session.execute(
        select(Delivery.study_id, Delivery.destination_id).where(
            Delivery.instance_id == instance_id, Delivery.state == DeliveryState.PENDING))]


def _email(session: Session, user_id: int) -> str:
    user = session.get(User, user_id)
    return user.email if user is not None else f"user {user_id}"


def file_addendum(session: Session, store: ObjectStore, addendum_id: int, report: ReportText, *,
                  new_uid: Callable[[], str], now: datetime | None = None) -> list[tuple[int, int]]:
    """Make, store and record the addendum instance; returns the (study, destination) pairs
    to forward after the caller's commit."""
    now = now or utcnow()
    addendum = session.get(ReportAddendum, addendum_id, with_for_update=True)
    if addendum is None:
        raise LookupError(f"addendum {addendum_id} not found")
    if addendum.instance_id is not None:
        return _pending(session, addendum.instance_id)
    study = session.get(Study, report.study_id)
    assert study is not None
    header = _sent_header(session, store, study.id)
    every = session.scalars(select(ReportAddendum).where(
        ReportAddendum.report_id == report.report_id, ReportAddendum.id <= addendum.id)
        .order_by(ReportAddendum.id)).all()
    pdf = addenda.addendum_pdf(
        addenda.Entry(report.author, report.at, report.text),
        [addenda.Entry(_email(session, a.author_id), a.created_at, a.text) for a in every],
        status=report.status)
    made = addenda.encapsulated_pdf(pdf, header, new_uid=new_uid, now=now,
                                    instance_number=len(every))
    digest = hashlib.sha256(made.part10).hexdigest()
    key = f"addenda/{report.facility_id}/{report.report_id}/{made.sop_instance_uid}.dcm"
    store.put_stream(key, io.BytesIO(made.part10))

    batch = Batch(facility_id=report.facility_id, user_id=addendum.author_id, label="report addendum",
                  state=BatchState.FORWARDING, created_at=now, last_activity_at=now,
                  completed_at=now, forwarding_started_at=now)
    session.add(batch)
    session.flush()
    upload = Upload(id=secrets.token_hex(16), batch_id=batch.id, facility_id=report.facility_id,
                    user_id=addendum.author_id, filename=UPLOAD_FILENAME, length=len(made.part10),
                    offset=len(made.part10), state=UploadState.PARSED, sha256=digest,
                    object_key=key, created_at=now, updated_at=now, expires_at=now,
                    sop_instance_uid=made.sop_instance_uid)
    series = Series(study_id=study.id, series_instance_uid=made.series_instance_uid, modality="DOC")
    session.add_all([upload, series])
    session.flush()
    instance = Instance(facility_id=report.facility_id, series_id=series.id, study_id=study.id,
                        sop_instance_uid=made.sop_instance_uid,
                        sop_class_uid=addenda.ENCAPSULATED_PDF_STORAGE,
                        transfer_syntax_uid="1.2.840.10008.1.2.1", object_key=key,
                        size=len(made.part10), sha256=digest, batch_id=batch.id, upload_id=upload.id,
                        version_state=InstanceVersion.CURRENT, created_at=now)
    session.add(instance)
    session.flush()
    for destination_id in _destinations(session, study.id):
        session.add(Delivery(instance_id=instance.id, destination_id=destination_id,
                             study_id=study.id, batch_id=batch.id, created_at=now, updated_at=now))
    addendum.sop_instance_uid = made.sop_instance_uid
    addendum.instance_id = instance.id
    session.flush()
    return _pending(session, instance.id)
