"""Study organisation: a batch's studies with the problems found in them, and moving
instances or whole series into another study or a new one, before they go out.

Problems detected (on identities as the edits make them, so a fixed problem disappears):
- ``mixed_patients``: several PatientIDs in one StudyInstanceUID;
- ``split_study``: one exam split across studies by a wrong UID, i.e. studies of the batch
  sharing PatientID, StudyDate and a non-empty AccessionNumber.

A move changes where the gateway files the instances (their study and series rows, and the
study of their pending deliveries); the stored originals stay as they are. When forwarding,
a moved instance takes the target study's UID and the patient- and study-level attributes of
the target study's first instance (see ``pipeline.delivery.renditions``). The first instance of a
study is its earliest-recorded instance that was born in it (not moved in), so that what
moved instances copy cannot change as more are moved in.

Moves are refused (``EditConflict``) once a moved instance's delivery has started: the PACS
would keep the instance under its old study too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.uid import generate_uid
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from pipeline.dicom.attributes import MetadataError
from pipeline.dicom.headers import UID_PATTERN
from pipeline.editing.batch_edits import BatchEdits, EditConflict, batch_edits, record, started_deliveries
from pipeline.models import (
    Batch,
    Delivery,
    DeliveryState,
    Instance,
    InstanceOrigin,
    InstanceVersion,
    Series,
    Study,
    Upload,
    User,
)

MAX_UIDS_PER_MOVE = 10_000


class NotFound(LookupError):
    """A study, series or instance named in a request is not there."""


@dataclass(frozen=True)
class Identity:
    """Who and which exam an instance belongs to, once edits and moves are applied."""

    patient_id: str | None
    study_date: str | None
    accession_number: str | None


def first_instance_id(session: Session, study: Study) -> int | None:
    """The instance whose patient and study attributes moved instances take."""
    # A version that no longer goes out (superseded by a corrected one) is never copied from.
    going_out = Instance.version_state != InstanceVersion.SUPERSEDED
    native = session.scalar(
        select(func.min(Instance.id))
        .join(InstanceOrigin, InstanceOrigin.instance_id == Instance.id)
        .where(Instance.study_id == study.id, going_out,
               InstanceOrigin.study_instance_uid == study.study_instance_uid)
    )
    if native is not None:
        return native
    return session.scalar(select(func.min(Instance.id)).where(Instance.study_id == study.id, going_out))


def is_moved(study: Study, origin: InstanceOrigin | None) -> bool:
    return origin is not None and origin.study_instance_uid != study.study_instance_uid


def own_identity(origin: InstanceOrigin | None, edits: BatchEdits) -> Identity:
    if origin is None:
        return Identity(None, None, None)
    values = edits.values_for(origin.patient_id)

    def pick(keyword: str, original: str | None) -> str | None:
        value = values.get(keyword, original)
        return value if not isinstance(value, list) else "\\".join(value)

    return Identity(pick("PatientID", origin.patient_id), pick("StudyDate", origin.study_date),
                    pick("AccessionNumber", origin.accession_number))


@dataclass
class StudyContents:
    study: Study
    instances: list[Instance]
    origins: dict[int, InstanceOrigin]
    identities: dict[int, Identity]


def study_contents(session: Session, study_ids: Sequence[int]) -> dict[int, StudyContents]:
    """Every instance of these studies (any batch) with its origin and effective identity."""
    if not study_ids:
        return {}
    studies = {s.id: s for s in session.scalars(select(Study).where(Study.id.in_(study_ids)))}
    rows = session.execute(
        select(Instance, InstanceOrigin)
        .outerjoin(InstanceOrigin, InstanceOrigin.instance_id == Instance.id)
        .where(Instance.study_id.in_(study_ids), Instance.version_state != InstanceVersion.SUPERSEDED)
        .order_by(Instance.id)
    ).all()
    edits = {b: batch_edits(session, b) for b in {i.batch_id for i, _ in rows}}
    contents = {sid: StudyContents(s, [], {}, {}) for sid, s in studies.items()}
    for instance, origin in rows:
        entry = contents[instance.study_id]
        entry.instances.append(instance)
        if origin is not None:
            entry.origins[instance.id] = origin
    for entry in contents.values():
        own = {i.id: own_identity(entry.origins.get(i.id), edits[i.batch_id]) for i in entry.instances}
        natives = [i.id for i in entry.instances if not is_moved(entry.study, entry.origins.get(i.id))]
        first = (natives or [i.id for i in entry.instances] or [None])[0]
        for instance in entry.instances:
            moved = is_moved(entry.study, entry.origins.get(instance.id))
            entry.identities[instance.id] = own[first] if moved and first is not None else own[instance.id]
    return contents


def _batch_study_ids(session: Session, batch_id: int) -> list[int]:
    return list(session.scalars(
        select(Instance.study_id).where(Instance.batch_id == batch_id).distinct()
    ))


def batch_studies(session: Session, batch: Batch) -> list[dict]:
    """The batch's studies, each with its series, patients, delivery state and problems."""
    contents = study_contents(session, _batch_study_ids(session, batch.id))
    started = set(session.scalars(
        select(Delivery.study_id).where(
            Delivery.study_id.in_(list(contents)),
            (Delivery.state != DeliveryState.PENDING) | (Delivery.attempts > 0)
            | Delivery.claim.is_not(None),
        ).distinct()
    )) if contents else set()
    series_rows = {s.id: s for s in session.scalars(
        select(Series).where(Series.study_id.in_(list(contents)))
    )} if contents else {}

    by_exam: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for entry in contents.values():
        for identity in set(entry.identities.values()):
            if identity.accession_number and identity.patient_id:
                key = (identity.patient_id, identity.study_date or "", identity.accession_number)
                by_exam[key].add(entry.study.study_instance_uid)

    out = []
    for entry in sorted(contents.values(), key=lambda e: e.study.id):
        uid = entry.study.study_instance_uid
        mine = [i for i in entry.instances if i.batch_id == batch.id]
        per_series: dict[int, list[Instance]] = defaultdict(list)
        for instance in entry.instances:
            per_series[instance.series_id].append(instance)
        patients: dict[str, set[str]] = defaultdict(set)
        for instance in entry.instances:
            patient = entry.identities[instance.id].patient_id or ""
            patients[patient].add(series_rows[instance.series_id].series_instance_uid)
        problems = []
        if len(patients) > 1:
            problems.append({
                "code": "mixed_patients",
                "message": f"{len(patients)} different PatientIDs in one study",
                "series_by_patient": {p: sorted(s) for p, s in sorted(patients.items())},
            })
        others: set[str] = set()
        for identity in set(entry.identities.values()):
            key = (identity.patient_id or "", identity.study_date or "", identity.accession_number or "")
            others |= by_exam.get(key, set()) - {uid}
        if others:
            problems.append({
                "code": "split_study",
                "message": "same PatientID, StudyDate and AccessionNumber as another study: "
                           "one exam split by a wrong StudyInstanceUID?",
                "other_studies": sorted(others),
            })
        identities = [entry.identities[i.id] for i in entry.instances]
        out.append({
            "study_instance_uid": uid,
            "patient_ids": sorted(patients),
            "study_dates": sorted({i.study_date for i in identities if i.study_date}),
            "accession_numbers": sorted({i.accession_number for i in identities if i.accession_number}),
            "modality": entry.study.modality,
            "description": entry.study.description,
            "instances": len(mine),
            "instances_all_batches": len(entry.instances),
            "series": [
                {
                    "series_instance_uid": series_rows[sid].series_instance_uid,
                    "modality": series_rows[sid].modality,
                    "instances": len(items),
                    "moved_in": any(is_moved(entry.study, entry.origins.get(i.id)) for i in items),
                }
                for sid, items in sorted(per_series.items())
            ],
            "deliveries_started": entry.study.id in started,
            "problems": problems,
        })
    return out


def series_instances(session: Session, batch: Batch, series_uid: str) -> list[dict]:
    """The batch's current instances in one series (as filed now, moves included), each with
    the name it was uploaded under: what the board offers for single-instance moves. Only
    this batch's instances (those the moves API accepts); the batch is the caller's, already
    checked against the user's facility."""
    if len(series_uid) > 64 or not UID_PATTERN.fullmatch(series_uid):
        raise NotFound("no instance of this batch is in that series")  # not a UID: none can be
    rows = session.execute(
        select(Instance.sop_instance_uid, Upload.filename)
        .join(Series, Series.id == Instance.series_id)
        .outerjoin(Upload, Upload.id == Instance.upload_id)
        .where(Instance.batch_id == batch.id, Series.series_instance_uid == series_uid,
               Instance.version_state == InstanceVersion.CURRENT)
        .order_by(Upload.filename, Instance.id)
    ).all()
    if not rows:
        raise NotFound("no instance of this batch is in that series")
    return [{"sop_instance_uid": sop, "filename": filename} for sop, filename in rows]


def problems_of(studies: list[dict]) -> list[dict]:
    return [{"study_instance_uid": s["study_instance_uid"], **p} for s in studies for p in s["problems"]]


# -- moves ---------------------------------------------------------------------------------


def _uid_list(values: object, what: str) -> list[str]:
    if values is None:
        return []
    if (not isinstance(values, list) or len(values) > MAX_UIDS_PER_MOVE
            or not all(isinstance(v, str) and len(v) <= 64 and UID_PATTERN.match(v) for v in values)):
        raise MetadataError(f"{what} must be a list of UIDs")
    return list(dict.fromkeys(values))


@dataclass
class MoveResult:
    change_id: int
    target: Study
    moved: int
    # (study, destination) pairs with pending deliveries now filed under the target study.
    pending: list[tuple[int, int]]


def _instances_to_move(session: Session, batch: Batch, series_uids: list[str],
                       sop_uids: list[str]) -> tuple[dict[int, list[Instance]], set[int]]:
    """Instances grouped by their series row, and the series rows moved whole."""
    chosen: dict[int, Instance] = {}
    if sop_uids:
        found = list(session.scalars(select(Instance).where(
            Instance.batch_id == batch.id, Instance.sop_instance_uid.in_(sop_uids),
            Instance.version_state == InstanceVersion.CURRENT)))
        if len(found) != len(sop_uids):
            raise NotFound(f"{len(sop_uids) - len(found)} of the instances are not in this batch")
        chosen.update({i.id: i for i in found})
    whole: set[int] = set()
    if series_uids:
        series = list(session.scalars(
            select(Series).where(
                Series.series_instance_uid.in_(series_uids),
                Series.id.in_(select(Instance.series_id).where(Instance.batch_id == batch.id)),
            )
        ))
        if len({s.series_instance_uid for s in series}) != len(series_uids):
            raise NotFound("some of the series are not in this batch")
        for s in series:
            members = list(session.scalars(select(Instance).where(Instance.series_id == s.id)))
            if any(i.batch_id != batch.id for i in members):
                raise EditConflict("a series holds instances of other batches; "
                                   "move this batch's instances by SOPInstanceUID instead")
            chosen.update({i.id: i for i in members})
            whole.add(s.id)
    by_series: dict[int, list[Instance]] = defaultdict(list)
    for instance in chosen.values():
        by_series[instance.series_id].append(instance)
    for series_id, items in by_series.items():
        total = session.scalar(select(func.count()).select_from(Instance)
                               .where(Instance.series_id == series_id))
        if total == len(items):
            whole.add(series_id)  # every instance of it moves: it keeps its SeriesInstanceUID
    return by_series, whole


def move(session: Session, batch: Batch, user: User, body: dict) -> MoveResult:
    """Move instances (``sop_instance_uids``) and/or whole series (``series_instance_uids``)
    of the batch into ``target_study_instance_uid`` or, with ``new_study: true``, a new study."""
    unknown = set(body) - {"series_instance_uids", "sop_instance_uids",
                           "target_study_instance_uid", "new_study"}
    if unknown:
        raise MetadataError(f"unknown fields: {', '.join(sorted(unknown))}")
    series_uids = _uid_list(body.get("series_instance_uids"), "series_instance_uids")
    sop_uids = _uid_list(body.get("sop_instance_uids"), "sop_instance_uids")
    if not series_uids and not sop_uids:
        raise MetadataError("name series_instance_uids or sop_instance_uids to move")
    target_uid = body.get("target_study_instance_uid")
    new_study = body.get("new_study", False)
    if not isinstance(new_study, bool) or (target_uid is None) == (not new_study):
        raise MetadataError("give either target_study_instance_uid or new_study: true")
    if target_uid is not None and not (isinstance(target_uid, str) and UID_PATTERN.match(target_uid)
                                       and len(target_uid) <= 64):
        raise MetadataError("target_study_instance_uid must be a UID")

    by_series, whole = _instances_to_move(session, batch, series_uids, sop_uids)
    instances = [i for items in by_series.values() for i in items]
    source_ids = {i.study_id for i in instances}
    if target_uid is not None:
        target = session.scalar(select(Study).where(
            Study.facility_id == batch.facility_id, Study.study_instance_uid == target_uid))
        if target is None:
            raise NotFound("no such target study in this facility")
        if source_ids == {target.id}:
            raise MetadataError("these instances are already in that study")
    if started_deliveries(session, instance_ids=[i.id for i in instances]):
        raise EditConflict("some of these instances have started going to the PACS; "
                           "they can no longer be moved")

    sources = {s.id: s for s in session.scalars(select(Study).where(Study.id.in_(source_ids)))}
    if target_uid is None:
        first = min(instances, key=lambda i: i.id)
        template = sources[first.study_id]
        identity = study_contents(session, [first.study_id])[first.study_id].identities[first.id]
        target = Study(facility_id=batch.facility_id, study_instance_uid=generate_uid(),
                       patient_id=identity.patient_id, study_date=identity.study_date,
                       modality=template.modality, description=template.description)
        session.add(target)
        session.flush()

    series_moves = []
    for series_id, items in sorted(by_series.items()):
        source_series = session.get(Series, series_id)
        if items[0].study_id == target.id:
            continue  # already there
        from_study = sources[items[0].study_id].study_instance_uid
        if series_id in whole:
            existing = session.scalar(select(Series).where(
                Series.study_id == target.id,
                Series.series_instance_uid == source_series.series_instance_uid))
            if existing is None:
                source_series.study_id = target.id
                destination_series = source_series
            else:
                destination_series = existing
        else:
            destination_series = Series(study_id=target.id, series_instance_uid=generate_uid(),
                                        modality=source_series.modality)
            session.add(destination_series)
        session.flush()
        for instance in items:
            instance.study_id = target.id
            instance.series_id = destination_series.id
        series_moves.append({
            "from_study": from_study,
            "from_series": source_series.series_instance_uid,
            "to_series": destination_series.series_instance_uid,
            "instances": len(items),
            "whole_series": series_id in whole,
        })
    moved_ids = [i.id for i in instances]
    session.execute(
        update(Delivery)
        .where(Delivery.instance_id.in_(moved_ids))
        .values(study_id=target.id)
        .execution_options(synchronize_session=False)
    )
    change = record(session, batch, user, "move", target.study_instance_uid, {
        "to_study": target.study_instance_uid,
        "new_study": target_uid is None,
        "instances": len(instances),
        "series": series_moves,
    })
    pending = [
        (target.id, destination_id)
        for destination_id in session.scalars(
            select(Delivery.destination_id)
            .where(Delivery.instance_id.in_(moved_ids), Delivery.state == DeliveryState.PENDING)
            .distinct()
        )
    ]
    return MoveResult(change_id=change.id, target=target, moved=len(instances), pending=pending)
