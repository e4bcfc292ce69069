"""The report poll: for each DICOMweb destination, ask about the studies the gateway delivered
there whether the PACS now holds report documents for them, and read the new ones.

Which studies: the delivery ledger's. A study counts as delivered to a destination from its
first delivered instance; the StudyInstanceUID asked about is the one that went out (moves
and overrides happen before sending and rewrite the study's row, so the ledger's study row
carries the UID the PACS has).

How often, by the study's age since that first delivery (``SCHEDULE``):

    age < 1 day     every 10 minutes   (most reports are written the same day)
    age < 3 days    every hour
    age < 7 days    every 6 hours
    age < 30 days   once a day
    after 30 days   never again        (``POLL_DAYS``: a later report is entered by hand)

Whether a study has anything to read comes from a QIDO-RS query at study level
(ModalitiesInStudy), asked for ``LIST_BATCH`` studies at once by UID list matching; a study the
batched answer leaves out is asked about alone. Only for a study with SR or DOC are its report
instances listed and each new one fetched with WADO-RS, kept byte for byte in the object store
and read (pipeline/reports/documents.py).
Documents under ``ADDENDUM_UID_PREFIX`` are the gateway's own addenda and are skipped.

Per destination, backoff: a destination that does not answer (connection, 5xx, 401/403,
501, not JSON) ends its round at once, is marked ``unreachable`` with the reason, and is not
asked again before ``BACKOFF_BASE`` x 2^(failures-1) (at most ``BACKOFF_CAP``); the first
answer puts it back to ``ok``. Its studies keep their place in the schedule meanwhile.

Pure logic over an explicit session, store and reader: the Celery task commits and publishes.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.models import (
    Delivery,
    DeliveryState,
    Destination,
    RadiologyReport,
    ReportPollState,
    ReportSource,
    ReportStatus,
    Study,
    StudyReportCheck,
)
from pipeline.ops import events
from pipeline.reports import is_own_addendum, status
from pipeline.reports.dicomweb import LIST_BATCH, DestinationUnavailable, DicomWebReader, value
from pipeline.reports.documents import ReportDocument, UnreadableDocument, read_document

log = logging.getLogger(__name__)

SCHEDULE: tuple[tuple[timedelta, timedelta], ...] = (
    (timedelta(days=1), timedelta(minutes=10)),
    (timedelta(days=3), timedelta(hours=1)),
    (timedelta(days=7), timedelta(hours=6)),
    (timedelta(days=30), timedelta(days=1)),
)
POLL_DAYS = 30
BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=6)
STATE_OK = "ok"
STATE_UNREACHABLE = "unreachable"


def next_check_at(delivered_at: datetime, now: datetime) -> datetime | None:
    """When to ask again about a study first delivered at ``delivered_at`` (None: never)."""
    age = now - delivered_at
    for younger_than, every in SCHEDULE:
        if age < younger_than:
            return now + every
    return None


def backoff(failures: int) -> timedelta:
    return min(BACKOFF_CAP, BACKOFF_BASE * (2 ** max(0, failures - 1)))


@dataclass
class PollResult:
    destination_id: int
    state: str = STATE_OK
    skipped: bool = False  # backing off, or another poller holds this destination
    studies_checked: int = 0
    documents_read: int = 0
    documents_unreadable: int = 0
    events: list[events.Event] = field(default_factory=list)
    more_due: bool = False  # the limit stopped the round; call again


def object_key(facility_id: int, study_id: int, sop_instance_uid: str) -> str:
    return f"reports/{facility_id}/{study_id}/{sop_instance_uid}.dcm"


def register_delivered(session: Session, destination_id: int, now: datetime) -> int:
    """A check row for each study newly delivered to the destination (within POLL_DAYS)."""
    first = (select(Delivery.study_id, func.min(Delivery.delivered_at).label("first"))
             .where(Delivery.destination_id == destination_id, Delivery.state == DeliveryState.DELIVERED,
                    Delivery.delivered_at.is_not(None))
             .group_by(Delivery.study_id)
             .having(func.min(Delivery.delivered_at) >= now - timedelta(days=POLL_DAYS))).subquery()
    known = select(StudyReportCheck.study_id).where(StudyReportCheck.destination_id == destination_id)
    rows = session.execute(select(first.c.study_id, first.c.first)
                           .where(first.c.study_id.not_in(known))).all()
    session.add_all(StudyReportCheck(study_id=study_id, destination_id=destination_id, delivered_at=at,
                                     next_check_at=now, documents_seen=0) for study_id, at in rows)
    session.flush()
    return len(rows)


def _poll_state(session: Session, destination_id: int, now: datetime) -> ReportPollState | None:
    """The destination's state row, locked for this round (None: another poller has it)."""
    state = session.scalar(select(ReportPollState).where(ReportPollState.destination_id == destination_id)
                           .with_for_update(skip_locked=True))
    if state is not None:
        return state
    exists = session.scalar(select(ReportPollState.destination_id)
                            .where(ReportPollState.destination_id == destination_id))
    if exists is not None:
        return None  # locked by another poller
    state = ReportPollState(destination_id=destination_id, state=STATE_OK, consecutive_failures=0,
                            studies_checked=0, updated_at=now)
    session.add(state)
    session.flush()
    return state


def _store_document(store: object, key: str, data: bytes) -> None:
    store.put_stream(key, io.BytesIO(data))  # type: ignore[attr-defined]


def _ingest(session: Session, store: object, destination_id: int, study: Study,
            fetched: list[tuple[ReportDocument, bytes]], now: datetime) -> list[events.Event]:
    """New report rows for the documents read, predecessors first; supersede what they amend."""
    out: list[events.Event] = []
    pending = list(fetched)
    batch_uids = {doc.sop_instance_uid for doc, _ in fetched}
    while pending:
        # A document whose predecessor is also new waits for it (then it can point at it).
        ready = [(d, b) for d, b in pending if not (set(d.predecessor_uids) & batch_uids)] or pending[:1]
        for doc, data in ready:
            pending.remove((doc, data))
            batch_uids.discard(doc.sop_instance_uid)
            key = object_key(study.facility_id, study.id, doc.sop_instance_uid)
            _store_document(store, key, data)
            report = RadiologyReport(
                facility_id=study.facility_id, study_id=study.id, study_instance_uid=study.study_instance_uid,
                source=ReportSource.PACS.value, destination_id=destination_id,
                sop_instance_uid=doc.sop_instance_uid, sop_class_uid=doc.sop_class_uid, status=doc.status,
                text=doc.text, text_sha256=doc.text_sha256, object_key=key, content_type=doc.content_type,
                document_author=doc.author, document_at=doc.written_at, created_at=now, updated_at=now)
            session.add(report)
            session.flush()
            out.append(status.record_initial(session, report, by_user_id=None,
                                             reason="read from the PACS", now=now))
            if doc.predecessor_uids:
                earlier = session.scalars(select(RadiologyReport).where(
                    RadiologyReport.study_id == study.id,
                    RadiologyReport.sop_instance_uid.in_(doc.predecessor_uids),
                    RadiologyReport.superseded_by_id.is_(None))).all()
                for old in earlier:
                    report.predecessor_id = old.id
                    old.superseded_by_id = report.id
                    if old.status != ReportStatus.AMENDED:
                        # The document says so: followed even from preliminary (no person's move).
                        out.append(status.change_status(session, old, ReportStatus.AMENDED, by_user_id=None,
                                                        reason=f"amended by report {report.id}", now=now,
                                                        check=False))
    return out


NOT_ASKED = object()  # check_study's ``has`` when no batched answer covered the study


def check_study(session: Session, store: object, reader: DicomWebReader, destination_id: int,
                study: Study, now: datetime, has: object = NOT_ASKED) -> tuple[list[events.Event], int, int]:
    """Ask about one study (unless ``has`` is the batched answer about it); read and record its
    new documents. Raises DestinationUnavailable. Returns the events, documents read,
    documents unreadable."""
    if has is NOT_ASKED:
        has = reader.study_has_reports(study.study_instance_uid)
    if has is False:
        return [], 0, 0
    known = set(session.scalars(select(RadiologyReport.sop_instance_uid).where(
        RadiologyReport.study_id == study.id, RadiologyReport.destination_id == destination_id)))
    fetched: list[tuple[ReportDocument, bytes]] = []
    unreadable = 0
    for item in reader.report_instances(study.study_instance_uid):
        sop_uid, series_uid = value(item, "SOPInstanceUID"), value(item, "SeriesInstanceUID")
        if not sop_uid or not series_uid or sop_uid in known or is_own_addendum(sop_uid):
            continue
        known.add(sop_uid)
        data = reader.retrieve(study.study_instance_uid, series_uid, sop_uid)
        try:
            doc = read_document(data)
        except UnreadableDocument as exc:
            unreadable += 1
            log.warning("report document on destination %s not readable: %s", destination_id, exc)
            continue
        fetched.append((doc, data))
    return _ingest(session, store, destination_id, study, fetched, now), len(fetched), unreadable


def poll_destination(session: Session, store: object, destination: Destination,
                     reader_for: Callable[[Destination], DicomWebReader], now: datetime,
                     limit: int = 500) -> PollResult:
    """One round for one destination: up to ``limit`` due studies."""
    result = PollResult(destination.id)
    state = _poll_state(session, destination.id, now)
    if state is None or (state.next_poll_at is not None and now < state.next_poll_at):
        result.skipped = True
        result.state = state.state if state is not None else STATE_OK
        return result
    register_delivered(session, destination.id, now)
    due = session.execute(
        select(StudyReportCheck, Study).join(Study, Study.id == StudyReportCheck.study_id)
        .where(StudyReportCheck.destination_id == destination.id, StudyReportCheck.next_check_at <= now)
        .order_by(StudyReportCheck.next_check_at, StudyReportCheck.study_id).limit(limit + 1)).all()
    result.more_due = len(due) > limit
    reader = reader_for(destination)
    state.last_polled_at = now
    try:
        # First whether each study holds anything, LIST_BATCH studies per QIDO-RS query; a
        # study the batched answer leaves out is asked about alone in check_study.
        answers: dict[str, bool | None] = {}
        for first in range(0, min(len(due), limit), LIST_BATCH):
            answers.update(reader.studies_with_reports(
                [study.study_instance_uid for _, study in due[first:min(first + LIST_BATCH, limit)]]))
        for check, study in due[:limit]:
            found, read, unreadable = check_study(session, store, reader, destination.id, study, now,
                                                  answers.get(study.study_instance_uid, NOT_ASKED))
            result.events.extend(found)
            result.documents_read += read
            result.documents_unreadable += unreadable
            result.studies_checked += 1
            check.last_checked_at = now
            check.documents_seen += read
            check.next_check_at = next_check_at(check.delivered_at, now)
    except DestinationUnavailable as exc:
        state.consecutive_failures += 1
        state.state = STATE_UNREACHABLE
        state.last_error = str(exc)[:500]
        state.next_poll_at = now + backoff(state.consecutive_failures)
        result.state = STATE_UNREACHABLE
        result.more_due = False
        log.warning("report poll: destination %s unreachable (%s), next try in %s", destination.id, exc,
                    backoff(state.consecutive_failures))
    else:
        state.state = STATE_OK
        state.consecutive_failures = 0
        state.last_error = None
        state.next_poll_at = None
        state.last_success_at = now
    finally:
        reader.close()
    state.studies_checked = result.studies_checked
    state.updated_at = now
    session.flush()
    return result


def pollable_destinations(session: Session) -> list[Destination]:
    """Destinations that speak DICOMweb (the STOW-RS kind; its root also answers QIDO/WADO)."""
    return list(session.scalars(select(Destination).where(Destination.kind == "stowrs",
                                                          Destination.enabled.is_(True))
                                .order_by(Destination.id)))


def reader_for(destination: Destination, secret_box: object) -> DicomWebReader:
    """A DICOMweb reader for a STOW-RS destination, its secrets opened only here."""
    from pipeline.delivery.destinations.credentials import sender_options

    options = sender_options(destination, secret_box)  # type: ignore[arg-type]
    return DicomWebReader(options["url"], user=options.get("user"), password=options.get("password"),
                          token=options.get("token"))
