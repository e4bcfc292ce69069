"""Versions of one SOPInstanceUID: which one goes out, and when a person has to decide.

New bytes for a SOPInstanceUID already known are a new version: an instance row of its own,
filed under the UIDs its bytes carry (never under the old version's study, which would send
it out with the old patient's identity). The old version's row, study and deliveries stay as
the record. The rule, applied each time a version arrives and again whenever one arrives later:

1. A version from a later batch replaces the versions of earlier batches (a corrected
   re-send). Within one batch (two files of one instance, e.g. the same image in two
   transfer syntaxes) the version in the best transfer syntax wins: uncompressed explicit VR
   little endian, then implicit VR little endian, then the other lossless encodings (deflate,
   RLE, JPEG lossless, JPEG-LS lossless, JPEG 2000 lossless, big endian), then unknown
   ones, lossy ones last; among equals, the upload created first. A PACS administrator wants
   the full-fidelity copy that every PACS accepts, never a lossy copy instead of a lossless one.
2. The rule does not choose, and nothing of that SOPInstanceUID goes out until a person
   chooses (the conflict is ``open``), when the versions of that batch name different
   patients, studies or series (no rule can tell which patient is right), or when another
   version already reached a PACS or is on its way there (sending a second, different object
   under one SOPInstanceUID would leave the PACS with both, or with whichever it kept).

Identical bytes are one version: a duplicate is recorded once and sent once.

Every parse of a SOPInstanceUID first locks its ``SopInstance`` row, so two files of one
instance parsed at the same moment are decided one after the other; the outcome depends on
which versions exist, never on which parse finished last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.accounts import audit
from pipeline.models import (
    Batch,
    ConflictKind,
    ConflictState,
    Delivery,
    DeliveryState,
    Destination,
    Instance,
    InstanceOrigin,
    InstanceVersion,
    SopInstance,
    Upload,
    User,
    utcnow,
)

# Best first. Anything not listed ranks between the lossless and the lossy ones.
_LOSSLESS_ORDER = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, first-order prediction
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired: some PACS refuse it)
)
_LOSSY = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",  # JPEG baseline, extended
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.102",
    "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105",
    "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108",  # video
})
RULE = ("a later batch's version replaces an earlier one; within a batch, the best transfer "
        "syntax (uncompressed explicit VR, implicit VR, other lossless, lossy last), then the "
        "upload created first")


def transfer_syntax_rank(uid: str | None) -> int:
    """Lower is preferred."""
    if uid in _LOSSLESS_ORDER:
        return _LOSSLESS_ORDER.index(uid)
    if uid in _LOSSY:
        return len(_LOSSLESS_ORDER) + 1
    return len(_LOSSLESS_ORDER)


@dataclass(frozen=True)
class Candidate:
    """What the rule looks at in one version."""

    instance_id: int
    batch_id: int
    upload_created_at: datetime
    upload_id: str
    transfer_syntax_uid: str | None
    identity: tuple[str | None, str, str]  # PatientID, StudyInstanceUID, SeriesInstanceUID
    reached: bool  # delivered somewhere, in flight, or tried (a PACS may hold it)


@dataclass(frozen=True)
class Decision:
    chosen: int | None
    kind: ConflictKind | None
    state: ConflictState | None
    rule: str | None


def decide(candidates: Sequence[Candidate]) -> Decision:
    """The rule of this module's docstring over every version of one SOPInstanceUID."""
    if len(candidates) == 1:
        return Decision(candidates[0].instance_id, None, None, None)
    newest = max(c.batch_id for c in candidates)
    contenders = sorted((c for c in candidates if c.batch_id == newest),
                        key=lambda c: (transfer_syntax_rank(c.transfer_syntax_uid),
                                       c.upload_created_at, c.upload_id))
    kind = ConflictKind.IN_BATCH if len(contenders) > 1 else ConflictKind.RESEND
    if len({c.identity for c in contenders}) > 1:
        return Decision(None, kind, ConflictState.OPEN,
                        f"the files of batch {newest} carry different patient, study or series "
                        "UIDs for one SOPInstanceUID: a person chooses which one goes out")
    preferred = contenders[0]
    if any(c.reached and c.instance_id != preferred.instance_id for c in candidates):
        return Decision(None, kind, ConflictState.OPEN,
                        "another version already reached a PACS (or is on its way): sending a "
                        "different one under the same SOPInstanceUID would leave both there; a "
                        "person chooses, and sends again once the PACS is put right")
    return Decision(preferred.instance_id, kind, ConflictState.CHOSEN, RULE)


def _lock(session: Session, facility_id: int, sop_instance_uid: str) -> SopInstance:
    """The SopInstance row, created if needed, locked until the transaction ends."""
    where = {"facility_id": facility_id, "sop_instance_uid": sop_instance_uid}
    if session.scalar(select(SopInstance.id).filter_by(**where)) is None:
        try:
            with session.begin_nested():
                session.add(SopInstance(**where))
        except IntegrityError:
            pass  # another parse made it: wait for its lock below
    return session.scalars(select(SopInstance).filter_by(**where).with_for_update()
                           .execution_options(populate_existing=True)).one()


def versions_of(session: Session, facility_id: int, sop_instance_uid: str) -> list[Instance]:
    return list(session.scalars(
        select(Instance).where(Instance.facility_id == facility_id,
                               Instance.sop_instance_uid == sop_instance_uid)
        .order_by(Instance.id).execution_options(populate_existing=True)))


def _reached(session: Session, instance_ids: list[int]) -> set[int]:
    query = select(Delivery).where(Delivery.instance_id.in_(instance_ids))
    if session.get_bind().dialect.name == "postgresql":
        # A forwarding run claiming these rows now waits for this decision (or skips them).
        query = query.with_for_update()
    return {d.instance_id for d in session.scalars(query)
            if d.state in (DeliveryState.DELIVERED, DeliveryState.SENDING) or d.attempts > 0}


def _candidates(session: Session, versions: list[Instance]) -> list[Candidate]:
    ids = [v.id for v in versions]
    uploads = {u.id: u for u in session.scalars(
        select(Upload).where(Upload.id.in_([v.upload_id for v in versions])))}
    origins = {o.instance_id: o for o in session.scalars(
        select(InstanceOrigin).where(InstanceOrigin.instance_id.in_(ids)))}
    reached = _reached(session, ids)
    out = []
    for v in versions:
        origin = origins.get(v.id)
        identity = ((origin.patient_id, origin.study_instance_uid, origin.series_instance_uid)
                    if origin is not None else (None, str(v.study_id), str(v.series_id)))
        upload = uploads.get(v.upload_id)
        out.append(Candidate(v.id, v.batch_id, upload.created_at if upload else v.created_at,
                             v.upload_id, v.transfer_syntax_uid, identity, v.id in reached))
    return out


WITHHELD = "withheld: another version of this SOPInstanceUID was chosen or awaits a person"


def withhold(session: Session, instance_ids: list[int], why: str) -> None:
    """Versions that must not go out lose their unsent deliveries: rows never tried are
    only a plan and go; rows already tried stay as the record, as dead letters that a replay
    leaves alone while their version is not the current one."""
    if not instance_ids:
        return
    session.execute(delete(Delivery).where(
        Delivery.instance_id.in_(instance_ids), Delivery.state == DeliveryState.PENDING,
        Delivery.attempts == 0).execution_options(synchronize_session=False))
    session.execute(update(Delivery).where(
        Delivery.instance_id.in_(instance_ids), Delivery.state == DeliveryState.PENDING)
        .values(state=DeliveryState.FAILED, reason=why[:1000], claim=None, updated_at=utcnow())
        .execution_options(synchronize_session=False))


def apply(session: Session, key: SopInstance, versions: list[Instance], decision: Decision,
          user: User | None = None) -> None:
    """Set each version's state as decided; the versions not chosen stop going out."""
    others = [v for v in versions if v.id != decision.chosen]
    for v in others:
        v.version_state = (InstanceVersion.HELD if decision.state == ConflictState.OPEN
                           else InstanceVersion.SUPERSEDED)
    session.flush()  # the current version changes only after the old one stepped down
    for v in versions:
        if v.id == decision.chosen:
            v.version_state = InstanceVersion.CURRENT
    key.chosen_instance_id = decision.chosen
    key.conflict = decision.kind
    key.conflict_state = decision.state
    key.rule = decision.rule
    key.decided_by = user.id if user is not None else None
    key.decided_at = utcnow()
    withhold(session, [v.id for v in others], WITHHELD)
    session.flush()


def record_version(session: Session, upload: Upload, make_instance) -> Instance:  # noqa: ANN001
    """Record the upload's bytes as a version of its SOPInstanceUID and decide which version
    goes out. ``make_instance()`` adds the new row (with its origin) when the bytes are new."""
    assert upload.sop_instance_uid and upload.sha256
    key = _lock(session, upload.facility_id, upload.sop_instance_uid)
    versions = versions_of(session, upload.facility_id, upload.sop_instance_uid)
    for v in versions:
        if v.sha256 == upload.sha256:
            return v  # the same bytes again: one version, sent once
    instance: Instance = make_instance(
        InstanceVersion.CURRENT if not versions else InstanceVersion.HELD)
    if not versions:
        key.chosen_instance_id = instance.id
        session.flush()
        return instance
    versions.append(instance)
    decision = decide(_candidates(session, versions))
    apply(session, key, versions, decision)
    chosen = next((v for v in versions if v.id == decision.chosen), None)
    audit.record(session, audit.Actor(None, upload.facility_id), "instance.versions_decided",
                 f"sop_instance:{key.id}", {
                     "kind": decision.kind, "state": decision.state, "versions": len(versions),
                     "batch_id": upload.batch_id, "upload_id": upload.id,
                     "chosen_upload_id": chosen.upload_id if chosen else None})
    return instance


# -- what the batch report shows -----------------------------------------------------------


def conflicts_of_batch(session: Session, batch: Batch) -> list[dict]:
    """Every SOPInstanceUID with several versions one of which came in this batch."""
    keys = list(session.scalars(
        select(SopInstance).where(
            SopInstance.facility_id == batch.facility_id, SopInstance.conflict.is_not(None),
            SopInstance.sop_instance_uid.in_(
                select(Instance.sop_instance_uid).where(Instance.batch_id == batch.id)),
        ).order_by(SopInstance.id)))
    return describe_many(session, keys)


def describe(session: Session, key: SopInstance) -> dict:
    return describe_many(session, [key])[0]


def describe_many(session: Session, keys: list[SopInstance]) -> list[dict]:
    """Each conflict with its versions, their uploads, origins and deliveries: the same six
    statements for one conflict or a re-sent study's hundreds (every poll of a parsed batch
    lists them)."""
    if not keys:
        return []
    by_key: dict[tuple[int, str], list[Instance]] = {(k.facility_id, k.sop_instance_uid): [] for k in keys}
    for instance in session.scalars(
            select(Instance).where(tuple_(Instance.facility_id, Instance.sop_instance_uid).in_(list(by_key)))
            .order_by(Instance.id).execution_options(populate_existing=True)):
        by_key[(instance.facility_id, instance.sop_instance_uid)].append(instance)
    every = [v for versions in by_key.values() for v in versions]
    ids = [v.id for v in every]
    uploads = {u.id: u for u in session.scalars(
        select(Upload).where(Upload.id.in_({v.upload_id for v in every})))}
    origins = {o.instance_id: o for o in session.scalars(
        select(InstanceOrigin).where(InstanceOrigin.instance_id.in_(ids)))}
    names = dict(session.execute(select(Destination.id, Destination.name)).all())
    deliveries: dict[int, dict[str, list[str]]] = {i: {} for i in ids}
    for d in session.scalars(select(Delivery).where(Delivery.instance_id.in_(ids))):
        deliveries[d.instance_id].setdefault(d.state, []).append(names.get(d.destination_id, "?"))
    return [_described(key, by_key[(key.facility_id, key.sop_instance_uid)], uploads, origins, deliveries)
            for key in keys]


def _described(key: SopInstance, versions: list[Instance], uploads: dict[str, Upload],
               origins: dict[int, InstanceOrigin], deliveries: dict[int, dict[str, list[str]]]) -> dict:
    chosen = next((v for v in versions if v.id == key.chosen_instance_id), None)
    return {
        "id": key.id,
        "sop_instance_uid": key.sop_instance_uid,
        "kind": key.conflict,
        "state": key.conflict_state,
        "rule": key.rule,
        "chosen_upload_id": chosen.upload_id if chosen else None,
        "decided_by": key.decided_by,
        "decided_at": key.decided_at.isoformat() if key.decided_at else None,
        "versions": [
            {
                "upload_id": v.upload_id,
                "filename": uploads[v.upload_id].filename if v.upload_id in uploads else None,
                "batch_id": v.batch_id,
                "state": v.version_state,
                "transfer_syntax_uid": v.transfer_syntax_uid,
                "size": v.size,
                "sha256": v.sha256,
                "patient_id": origins[v.id].patient_id if v.id in origins else None,
                "study_instance_uid": origins[v.id].study_instance_uid if v.id in origins else None,
                "series_instance_uid": origins[v.id].series_instance_uid if v.id in origins else None,
                "deliveries": {state: sorted(dests) for state, dests in deliveries[v.id].items()},
            }
            for v in versions
        ],
    }


def open_conflicts(session: Session, batch: Batch) -> int:
    """Conflicts of the batch that wait for a person."""
    return session.scalar(select(func.count()).select_from(SopInstance).where(
        SopInstance.facility_id == batch.facility_id,
        SopInstance.conflict_state == ConflictState.OPEN,
        SopInstance.sop_instance_uid.in_(
            select(Instance.sop_instance_uid).where(Instance.batch_id == batch.id)))) or 0


def key_of_batch(session: Session, batch: Batch, key_id: int) -> SopInstance | None:
    """A conflict the batch may act on (one of its versions came in this batch), locked."""
    key = session.scalar(select(SopInstance).where(
        SopInstance.id == key_id, SopInstance.facility_id == batch.facility_id,
        SopInstance.conflict.is_not(None)).with_for_update()
        .execution_options(populate_existing=True))
    if key is None:
        return None
    mine = session.scalar(select(Instance.id).where(
        Instance.batch_id == batch.id, Instance.facility_id == key.facility_id,
        Instance.sop_instance_uid == key.sop_instance_uid).limit(1))
    return key if mine is not None else None


# -- a person resolves ---------------------------------------------------------------------


class ResolutionConflict(Exception):
    """The conflict's state does not allow this now (HTTP 409)."""


def choose(session: Session, key: SopInstance, upload_id: str, user: User) -> list[tuple[int, int]]:
    """The version brought by ``upload_id`` is the one that goes out; the others are
    superseded (what they delivered stays as the record). Returns the (study, destination)
    pairs of its deliveries put back to pending; destinations it was never planned for are
    planned by its batch's dispatch."""
    versions = versions_of(session, key.facility_id, key.sop_instance_uid)
    chosen = next((v for v in versions if v.upload_id == upload_id), None)
    if chosen is None:
        raise LookupError(f"upload {upload_id} is not a version of this SOPInstanceUID")
    if key.conflict_state == ConflictState.RESOLVED and key.chosen_instance_id == chosen.id:
        raise ResolutionConflict("that version is already the chosen one")
    sending = session.scalar(select(func.count()).select_from(Delivery).where(
        Delivery.instance_id.in_([v.id for v in versions if v.id != chosen.id]),
        Delivery.state == DeliveryState.SENDING))
    if sending:
        raise ResolutionConflict("another version is being sent right now; try again when its "
                                 "deliveries have settled")
    apply(session, key, versions,
          Decision(chosen.id, ConflictKind(key.conflict), ConflictState.RESOLVED,
                   "chosen by a person"), user)
    # Its deliveries that were tried and then withheld while it waited go out again.
    withheld = list(session.scalars(select(Delivery).where(
        Delivery.instance_id == chosen.id, Delivery.state == DeliveryState.FAILED,
        Delivery.reason == WITHHELD)))
    for d in withheld:
        d.state = DeliveryState.PENDING
        d.attempts = 0
        d.next_attempt_at = None
        d.claim = None
        d.reason = "chosen by a person"
        d.updated_at = utcnow()
    session.flush()
    return sorted({(d.study_id, d.destination_id) for d in withheld})


def send_again(session: Session, key: SopInstance, user: User) -> list[tuple[int, int]]:
    """The chosen version goes again to every destination it went to (after the PACS was put
    right); returns the (study, destination) pairs to forward. Destinations it has not been
    planned for yet are planned by its batch's dispatch."""
    chosen = session.get(Instance, key.chosen_instance_id) if key.chosen_instance_id else None
    if chosen is None:
        raise ResolutionConflict("no version is chosen yet: choose one first")
    rows = list(session.scalars(select(Delivery).where(Delivery.instance_id == chosen.id)))
    if any(d.state in (DeliveryState.PENDING, DeliveryState.SENDING) for d in rows):
        raise ResolutionConflict("the chosen version is already on its way")
    now = utcnow()
    for d in rows:
        d.reason = f"sent again by a person (was: {d.reason or d.state})"[:1000]
        d.state = DeliveryState.PENDING
        d.attempts = 0
        d.claim = None
        d.next_attempt_at = None
        d.delivered_at = None
        d.updated_at = now
    key.decided_by = user.id
    key.decided_at = now
    session.flush()
    return sorted({(d.study_id, d.destination_id) for d in rows})
