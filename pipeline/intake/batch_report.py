"""What a client polls: every file's state, every study found, every delivery of a batch,
the conflicts between versions of one instance, and what the batch still waits for."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from pipeline.dicom.versions import conflicts_of_batch
from pipeline.editing.batch_edits import change_log
from pipeline.editing.study_organisation import batch_studies, problems_of
from pipeline.models import (
    MAX_ROW_ID,
    TERMINAL_UPLOAD_STATES,
    Batch,
    BatchState,
    ConflictState,
    Delivery,
    DeliveryState,
    Destination,
    Instance,
    InstanceVersion,
    Study,
    Upload,
    UploadState,
    utcnow,
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def batch_summary(batch: Batch | BatchRow) -> dict:
    return {
        "id": batch.id,
        "label": batch.label,
        "state": batch.state,
        "facility_id": batch.facility_id,
        "template": batch.template,
        "created_at": _iso(batch.created_at),
        "completed_at": _iso(batch.completed_at),
        "forwarding_started_at": _iso(batch.forwarding_started_at),
        "held": bool(batch.held),
        "confirmed_at": _iso(batch.confirmed_at),
    }


def waiting_for(batch: Batch | BatchRow, uploads: list[Upload] | list[UploadRow],
                conflicts: list[dict], quiet_seconds: float | None, pending: int,
                now: datetime | None = None) -> dict:
    """What the batch still waits for, in the terms a client can show: unfinished files
    with their offsets, conflicts a person must resolve, the end of the quiet period (after
    which the settled files go out whatever the unfinished ones do), deliveries not done."""
    now = now or utcnow()
    unfinished = [u for u in uploads if u.state not in TERMINAL_UPLOAD_STATES]
    receiving = [u for u in unfinished if u.state == UploadState.RECEIVING]
    quiet_ends = None
    # The quiet period is what releases the batch from uploads still being received; files
    # in the gateway's own hands are waited for.
    if (quiet_seconds is not None and receiving and len(receiving) == len(unfinished)
            and not batch.held and batch.state in (BatchState.OPEN, BatchState.COMPLETED)):
        last = batch.last_activity_at
        last = last if last.tzinfo else last.replace(tzinfo=now.tzinfo)
        quiet_ends = last + timedelta(seconds=quiet_seconds)
    return {
        "files_receiving": len(receiving),
        "files_processing": len(unfinished) - len(receiving),
        "unfinished_files": [
            {"upload_id": u.id, "filename": u.filename, "state": u.state, "offset": u.offset,
             "length": u.length, "updated_at": _iso(u.updated_at)}
            for u in unfinished
        ],
        "conflicts_open": sum(1 for c in conflicts if c["state"] == ConflictState.OPEN),
        "quiet_period_ends_at": _iso(quiet_ends),
        "quiet_period_ends_in_seconds": (max(0.0, round((quiet_ends - now).total_seconds(), 1))
                                         if quiet_ends else None),
        "deliveries_pending": pending or 0,
        "confirmation": bool(batch.held),  # held: nothing goes out until a person confirms
    }


def batch_report(session: Session, batch: Batch, quiet_seconds: float | None = None) -> dict:
    uploads = session.scalars(
        select(Upload).where(Upload.batch_id == batch.id).order_by(Upload.created_at, Upload.id)
    ).all()
    # Each file's own version, or (a duplicate of bytes already recorded) the version that
    # goes out for its SOPInstanceUID.
    own = {i.upload_id: i for i in session.scalars(
        select(Instance).where(Instance.upload_id.in_([u.id for u in uploads])))} if uploads else {}
    sop_uids = [u.sop_instance_uid for u in uploads if u.sop_instance_uid and u.id not in own]
    current = {i.sop_instance_uid: i for i in session.scalars(
        select(Instance).where(Instance.facility_id == batch.facility_id,
                               Instance.sop_instance_uid.in_(sop_uids),
                               Instance.version_state == InstanceVersion.CURRENT))} if sop_uids else {}
    of_upload = {u.id: own.get(u.id) or current.get(u.sop_instance_uid or "") for u in uploads}
    instances = {i.id: i for i in of_upload.values() if i is not None}
    instance_ids = [i.id for i in instances.values()]
    deliveries = session.scalars(
        select(Delivery).where(Delivery.instance_id.in_(instance_ids)).order_by(Delivery.id)
    ).all() if instance_ids else []
    # Names of the destinations these deliveries went to, not every destination's row.
    destinations = dict(session.execute(
        select(Destination.id, Destination.name)
        .where(Destination.id.in_({d.destination_id for d in deliveries})))
        .all()) if deliveries else {}
    studies = {
        s.id: s
        for s in session.scalars(
            select(Study).where(Study.id.in_({i.study_id for i in instances.values()}))
        )
    } if instances else {}
    by_id = {i.id: i for i in instances.values()}

    files = []
    for u in uploads:
        instance = of_upload[u.id]
        files.append(_file(u, studies[instance.study_id].study_instance_uid if instance else None,
                           instance.version_state if instance else None))

    per_study: dict[int, dict] = defaultdict(lambda: {"instances": set(), "series": set(),
                                                      "deliveries": defaultdict(Counter)})
    for instance in instances.values():
        per_study[instance.study_id]["instances"].add(instance.id)
        per_study[instance.study_id]["series"].add(instance.series_id)
    for d in deliveries:
        per_study[d.study_id]["deliveries"][destinations.get(d.destination_id, "?")][d.state] += 1
    study_rows = [
        {
            "study_instance_uid": studies[sid].study_instance_uid,
            "patient_id": studies[sid].patient_id,
            "modality": studies[sid].modality,
            "study_date": studies[sid].study_date,
            "series": len(info["series"]),
            "instances": len(info["instances"]),
            "deliveries": {dest: dict(c) for dest, c in info["deliveries"].items()},
        }
        for sid, info in sorted(per_study.items())
    ]
    delivery_rows = [
        {
            "sop_instance_uid": by_id[d.instance_id].sop_instance_uid,
            "destination": destinations.get(d.destination_id),
            "state": d.state,
            "attempts": d.attempts,
            "status_code": d.status_code,
            "reason": d.reason,
            "delivered_at": _iso(d.delivered_at),
            # Which bytes went out: the original, or a rewritten rendition of it.
            "sent_object_key": d.sent_object_key,
            "sent_sha256": d.sent_sha256,
            "rewritten": d.sent_object_key is not None
            and d.sent_object_key != by_id[d.instance_id].object_key,
        }
        for d in deliveries
    ]
    conflicts = conflicts_of_batch(session, batch)
    return _report(batch, list(uploads), files, study_rows, delivery_rows,
                   Counter(d.state for d in deliveries), change_log(session, batch.id),
                   problems_of(batch_studies(session, batch)), conflicts,
                   _pending_deliveries(session, batch.id), quiet_seconds)


def _file(u: Upload | UploadRow, study_instance_uid: str | None, version: str | None) -> dict[str, Any]:
    return {
        "upload_id": u.id,
        "filename": u.filename,
        "state": u.state,
        "offset": u.offset,
        "length": u.length,
        "quarantine_reason": u.quarantine_reason,
        "quarantine_detail": u.quarantine_detail,
        "sop_instance_uid": u.sop_instance_uid,
        "study_instance_uid": study_instance_uid,
        # current: goes out; held: waits for a person; superseded: another version was chosen.
        "version": version,
    }


def _report(batch: Batch | BatchRow, uploads: list[Upload] | list[UploadRow], files: list[dict],
            studies: list[dict], deliveries: list[dict], delivery_states: Counter, changes: list[dict],
            problems: list, conflicts: list[dict], pending: int, quiet_seconds: float | None) -> dict:
    """The report's one shape, whichever read gathered its parts."""
    return {
        **batch_summary(batch),
        "totals": {
            "files": len(files),
            "bytes": sum(u.length for u in uploads),
            "bytes_received": sum(u.offset for u in uploads),
            "files_by_state": dict(Counter(f["state"] for f in files)),
            "studies": len(studies),
            "deliveries_by_state": dict(delivery_states),
        },
        "files": files,
        "studies": studies,
        "deliveries": deliveries,
        # Who changed what (template, overrides, moves), and what still looks wrong.
        "changes": changes,
        "problems": problems,
        # SOPInstanceUIDs that arrived in several versions: each with every version, the one
        # chosen (or none: a person must choose) and the rule that chose it.
        "conflicts": conflicts,
        "waiting": waiting_for(batch, uploads, conflicts, quiet_seconds, pending),
    }


def _pending_deliveries(session: Session, batch_id: int) -> int:
    return session.scalar(select(func.count()).select_from(Delivery).where(
        Delivery.batch_id == batch_id,
        Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING]))) or 0


# -- the polled read in one statement ---------------------------------------------------------
#
# Every client polls its batch while it uploads; until the workers have parsed a file there
# are no instances, studies, deliveries or conflicts to report, and what remains (the batch,
# its uploads, its change log, the pending deliveries) comes back from PostgreSQL in one
# statement, aggregated as JSON, with a flag that says whether any instance belongs to the
# batch. Only then does the read take the full path above (a constant number of statements
# more). Timestamps inside the JSON travel as microseconds since the epoch, so they come out
# exactly as the ORM path's isoformat() writes them.

@dataclass(frozen=True, slots=True)
class BatchRow:
    id: int
    label: str | None
    state: str
    facility_id: int
    template: str | None
    created_at: datetime
    completed_at: datetime | None
    forwarding_started_at: datetime | None
    held: bool
    confirmed_at: datetime | None
    last_activity_at: datetime


@dataclass(frozen=True, slots=True)
class UploadRow:
    id: str
    filename: str
    state: str
    offset: int
    length: int
    quarantine_reason: str | None
    quarantine_detail: str | None
    sop_instance_uid: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """What the one statement read: enough for the whole report while ``has_instances`` is
    false."""

    batch: BatchRow
    uploads: list[UploadRow]
    changes: list[dict]
    pending_deliveries: int
    has_instances: bool


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _maybe_micros(value: int | None) -> datetime | None:
    return _from_micros(value) if value is not None else None


BATCH_STATUS_SQL = """
SELECT json_build_array(
       b.id, b.label, b.state, b.facility_id, b.template,
       (extract(epoch from b.created_at) * 1000000)::bigint,
       (extract(epoch from b.completed_at) * 1000000)::bigint,
       (extract(epoch from b.forwarding_started_at) * 1000000)::bigint, b.held,
       (extract(epoch from b.confirmed_at) * 1000000)::bigint,
       (extract(epoch from b.last_activity_at) * 1000000)::bigint,
       (SELECT json_agg(json_build_array(u.id, u.filename, u.state, u."offset", u.length,
                                         u.quarantine_reason, u.quarantine_detail,
                                         u.sop_instance_uid,
                                         (extract(epoch from u.updated_at) * 1000000)::bigint)
                        ORDER BY u.created_at, u.id)
          FROM uploads u WHERE u.batch_id = b.id),
       (SELECT json_agg(json_build_array(m.id, (extract(epoch from m.created_at) * 1000000)::bigint,
                                         us.email, m.kind, m.subject, m.detail) ORDER BY m.id)
          FROM metadata_changes m JOIN users us ON us.id = m.user_id WHERE m.batch_id = b.id),
       (SELECT count(*) FROM deliveries d
         WHERE d.batch_id = b.id AND d.state IN ($2, $3)),
       EXISTS (SELECT 1 FROM instances i WHERE i.batch_id = b.id)
       OR EXISTS (SELECT 1 FROM uploads u JOIN instances i ON i.upload_id = u.id
                   WHERE u.batch_id = b.id)
       OR EXISTS (SELECT 1 FROM uploads u JOIN instances i
                    ON i.facility_id = b.facility_id AND i.sop_instance_uid = u.sop_instance_uid
                   AND i.version_state = $4
                   WHERE u.batch_id = b.id AND u.sop_instance_uid IS NOT NULL))
  FROM batches b WHERE b.id = $1
"""
# Prepared once per connection (the pool keeps it): planning this statement cost PostgreSQL
# more than running it (measured 0.71 ms a read unprepared, 0.20 ms prepared, empty batch).
# One JSON value, not fifteen columns: SQLAlchemy builds a result's column metadata anew for
# every textual statement, ~35 us of the API's CPU a read for fifteen columns (timestamps as
# epoch microseconds, as the nested rows already were).
_PREPARED = "relaypacs_batch_status"
_PREPARE = "PREPARE relaypacs_batch_status (integer, text, text, text) AS " + BATCH_STATUS_SQL


def batch_status(connection: Connection, batch_id: int) -> BatchStatus | None:
    """The batch's status in one round trip (PostgreSQL; the connection's first call also
    prepares the statement), or None when there is no such batch."""
    if not 0 < batch_id <= MAX_ROW_ID:
        return None  # no row has it, and the prepared statement's integer would refuse it
    info = connection.connection.info
    if not info.get(_PREPARED):
        connection.exec_driver_sql(_PREPARE)
        info[_PREPARED] = True
    row = connection.exec_driver_sql("EXECUTE relaypacs_batch_status (%s, %s, %s, %s)", (
        batch_id, DeliveryState.PENDING.value, DeliveryState.SENDING.value,
        InstanceVersion.CURRENT.value)).first()
    if row is None:
        return None
    (id_, label, state, facility_id, template, created_at, completed_at, forwarding_started_at,
     held, confirmed_at, last_activity_at, uploads, changes, pending, has_instances) = row[0]
    batch = BatchRow(id_, label, state, facility_id, template, _from_micros(created_at),
                     _maybe_micros(completed_at), _maybe_micros(forwarding_started_at), bool(held),
                     _maybe_micros(confirmed_at), _from_micros(last_activity_at))
    return BatchStatus(
        batch=batch,
        uploads=[UploadRow(*u[:8], _from_micros(u[8])) for u in uploads or ()],
        changes=[{"id": c[0], "at": _from_micros(c[1]).isoformat(), "by": c[2], "kind": c[3],
                  "subject": c[4], "detail": c[5]} for c in changes or ()],
        pending_deliveries=int(pending or 0),
        has_instances=bool(has_instances),
    )


def report_without_instances(status: BatchStatus, quiet_seconds: float | None = None) -> dict:
    """``batch_report`` of a batch none of whose files has an instance yet (no studies,
    deliveries or conflicts to report), from ``batch_status`` alone."""
    if status.has_instances:
        raise ValueError("the batch has instances: use batch_report")
    return _report(status.batch, status.uploads, [_file(u, None, None) for u in status.uploads],
                   [], [], Counter(), status.changes, [], [], status.pending_deliveries, quiet_seconds)
