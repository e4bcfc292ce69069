"""What bytes go out for an instance: the stored original, unless a metadata change
(template, per-patient override, study move) requires a rewritten rendition.

The stored original is never changed; a rendition is a new object next to it,
``<original prefix>/renditions/<digest>.dcm``, named by a digest of the original and the
edits, so it is written once and reused by retries and by every destination. The delivery
records which one was sent (``sent_object_key``, ``sent_sha256``).

Edits for one instance, later ones winning:
1. the batch's template values;
2. the override of the instance's patient (by PatientID as the original says);
3. after a move: the target study's UID and the patient- and study-level attributes of the
   target study's first instance, as that instance itself goes out; a new SeriesInstanceUID
   when only part of a series moved.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataelem import DataElement
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.delivery.destinations import OutgoingInstance
from pipeline.dicom.attributes import INHERITED_ON_MOVE, element_for
from pipeline.dicom.rewrite import RewriteError, edits_digest, elements_of, read_header, rewrite_part10
from pipeline.editing.batch_edits import BatchEdits, batch_edits
from pipeline.editing.study_organisation import first_instance_id, move
from pipeline.lifecycle.restore import preload_catalogue, require_readable
from pipeline.models import Batch, Instance, InstanceOrigin, InstanceRendition, Series, Study, User, utcnow
from pipeline.storage import ObjectStore, iter_object

Edits = dict[str, DataElement | None]
_CACHE_KEY = "relaypacs.renditions"


class RenditionError(RewriteError):
    """The instance needs a rewrite that cannot be made; it must not go out unedited."""


@dataclass(frozen=True)
class Rendition:
    outgoing: OutgoingInstance
    object_key: str
    sha256: str


def _rendition(store: ObjectStore, instance: Instance, key: str, size: int, sha256: str) -> Rendition:
    return Rendition(
        outgoing=OutgoingInstance(
            sop_instance_uid=instance.sop_instance_uid,
            sop_class_uid=instance.sop_class_uid,
            transfer_syntax_uid=instance.transfer_syntax_uid,
            size=size,
            open=lambda: store.open(key),
        ),
        object_key=key,
        sha256=sha256,
    )


def original(store: ObjectStore, instance: Instance) -> Rendition:
    return _rendition(store, instance, instance.object_key, instance.size, instance.sha256)


def rendition_key(original_key: str, digest: str) -> str:
    prefix = original_key.rsplit("/", 1)[0] if "/" in original_key else original_key
    return f"{prefix}/renditions/{digest}.dcm"


class _Cache:
    """Per session (one forwarding run): batch edits and what each target study's first
    instance looks like, so a study of hundreds of instances reads them once."""

    def __init__(self) -> None:
        self.batches: dict[int, BatchEdits] = {}
        self.inherited: dict[int, Edits] = {}
        self.first: dict[int, int | None] = {}


def _cache(session: Session) -> _Cache:
    cache = session.info.get(_CACHE_KEY)
    if cache is None:
        cache = session.info[_CACHE_KEY] = _Cache()
    return cache


def _edits_of(session: Session, batch_id: int) -> BatchEdits:
    cache = _cache(session)
    if batch_id not in cache.batches:
        cache.batches[batch_id] = batch_edits(session, batch_id)
    return cache.batches[batch_id]


def _own_edits(session: Session, instance: Instance, origin: InstanceOrigin | None) -> Edits:
    edits = _edits_of(session, instance.batch_id)
    # Without an origin (recorded before origins were kept) the patient is unknown: only the
    # template applies.
    values = edits.values_for(origin.patient_id) if origin is not None else edits.template
    return {keyword: element_for(keyword, value) for keyword, value in values.items()}


def _first(session: Session, study: Study) -> int | None:
    cache = _cache(session)
    if study.id not in cache.first:
        cache.first[study.id] = first_instance_id(session, study)
    return cache.first[study.id]


def _spool(store: ObjectStore, key: str, folder: Path) -> Path:
    path = folder / "source.dcm"
    with open(path, "wb") as out:
        for block in iter_object(store, key):
            out.write(block)
    return path


def _inherited(session: Session, store: ObjectStore, study: Study) -> Edits:
    """Patient- and study-level attributes of the study's first instance as it goes out."""
    cache = _cache(session)
    if study.id in cache.inherited:
        return cache.inherited[study.id]
    first_id = _first(session, study)
    first = session.get(Instance, first_id) if first_id is not None else None
    inherited: Edits = {}
    if first is not None:
        # Its bytes are read too, and may be cold by now: through the restore gate as well.
        require_readable(session, first)
        with tempfile.TemporaryDirectory(prefix="relaypacs-rendition-") as tmp:
            path = _spool(store, first.object_key, Path(tmp))
            with open(path, "rb") as fh:
                try:
                    ds, _ = read_header(fh)
                except Exception as exc:  # noqa: BLE001 - any parse failure: cannot inherit
                    raise RenditionError(
                        f"first instance of the target study unreadable ({type(exc).__name__})"
                    ) from exc
        inherited = elements_of(ds, INHERITED_ON_MOVE)
        own = _own_edits(session, first, session.get(InstanceOrigin, first.id))
        inherited.update({k: v for k, v in own.items() if k in INHERITED_ON_MOVE})
    cache.inherited[study.id] = inherited
    return inherited


# session.info keys: {instance id: its InstanceOrigin or None} and the Series rows of a batch.
_ORIGINS = "renditions.origins"
_SERIES = "renditions.series"


def preload(session: Session, instances: list[Instance]) -> None:
    """Load a batch's origin rows, series and catalogue rows in one query each, so
    ``prepare`` finds them in memory instead of asking the database once per instance."""
    if not instances:
        return
    ids = [i.id for i in instances]
    found = {o.instance_id: o for o in session.scalars(
        select(InstanceOrigin).where(InstanceOrigin.instance_id.in_(ids)))}
    # Most instances have no origin row, and session.get() asks the database again for a row
    # that does not exist; the identity map also holds rows weakly, so unreferenced ones are
    # dropped at once. Both made a query per instance (py-spy of the pacs workers: 20 % of
    # their CPU), hence these references for the session's life.
    session.info.setdefault(_ORIGINS, {}).update({i: found.get(i) for i in ids})
    session.info.setdefault(_SERIES, []).extend(session.scalars(
        select(Series).where(Series.id.in_({i.series_id for i in instances}))).all())
    preload_catalogue(session, [i.object_key for i in instances])


def _origin(session: Session, instance: Instance) -> InstanceOrigin | None:
    preloaded = session.info.get(_ORIGINS) or {}
    if instance.id in preloaded:
        return preloaded[instance.id]
    return session.get(InstanceOrigin, instance.id)


def planned_edits(session: Session, store: ObjectStore, instance: Instance) -> Edits:
    """Every change the instance needs on its way out (empty: send the original)."""
    origin = _origin(session, instance)
    edits = _own_edits(session, instance, origin)
    if origin is None:
        return edits
    study = session.get(Study, instance.study_id)
    series = session.get(Series, instance.series_id)
    assert study is not None and series is not None
    if study.study_instance_uid != origin.study_instance_uid:
        if _first(session, study) != instance.id:
            edits.update(_inherited(session, store, study))
        edits["StudyInstanceUID"] = element_for("StudyInstanceUID", study.study_instance_uid)
    if series.series_instance_uid != origin.series_instance_uid:
        edits["SeriesInstanceUID"] = element_for("SeriesInstanceUID", series.series_instance_uid)
    return edits


def _write(store: ObjectStore, instance: Instance, edits: Edits, key: str) -> tuple[str, int]:
    with tempfile.TemporaryDirectory(prefix="relaypacs-rendition-") as tmp:
        source = _spool(store, instance.object_key, Path(tmp))
        target = Path(tmp) / "rendition.dcm"
        with open(source, "rb") as src, open(target, "wb") as dst:
            try:
                rewrite_part10(src, dst, edits)
            except RewriteError as exc:
                raise RenditionError(str(exc)) from exc
        digest = hashlib.sha256()
        with open(target, "rb") as fh:
            while block := fh.read(1024 * 1024):
                digest.update(block)
        store.put_file(key, target)
        return digest.hexdigest(), target.stat().st_size


def prepare(session: Session, store: ObjectStore, instance: Instance) -> Rendition:
    """The rendition to send for ``instance``: the original, or a rewritten copy made once.

    Raises ``RenditionError`` when edits apply but the file cannot be rewritten: sending the
    unedited original instead could file images under the wrong patient.
    """
    # Cold bytes (archive class, or inside a bundle) cannot be read until restored: this
    # records a restore request and raises ObjectArchived (an ObjectMissing) that says when.
    require_readable(session, instance)
    edits = planned_edits(session, store, instance)
    if not edits:
        return original(store, instance)
    digest = edits_digest(instance.sha256, edits)
    row = session.scalar(select(InstanceRendition).where(
        InstanceRendition.instance_id == instance.id, InstanceRendition.digest == digest))
    if row is not None and store.exists(row.object_key):
        return _rendition(store, instance, row.object_key, row.size, row.sha256)
    key = rendition_key(instance.object_key, digest)
    sha256, size = _write(store, instance, edits, key)
    if row is not None:
        # Rebuilt after the lifecycle run deleted it (older than storage_rendition_days, counted
        # from created_at): its days start again.
        row.created_at = utcnow()
    if row is None:
        row = InstanceRendition(instance_id=instance.id, digest=digest, object_key=key,
                                sha256=sha256, size=size, changed=sorted(edits))
        try:
            # Two destinations may rewrite the same instance at once: same digest, same
            # bytes (the rewrite is deterministic), so the loser just reads the winner's row.
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            row = session.scalar(select(InstanceRendition).where(
                InstanceRendition.instance_id == instance.id, InstanceRendition.digest == digest))
            assert row is not None
    return _rendition(store, instance, row.object_key, row.size, row.sha256)


def _shown(element: DataElement | None) -> object:
    """An edit as the page shows it: text, a list of texts, or None (the element removed)."""
    if element is None or element.value is None:
        return None
    value = element.value
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return str(value)


def move_preview(session: Session, store: ObjectStore, batch: Batch, user: User, body: dict) -> dict:
    """A dry run of a study move: the move is made inside a savepoint, the attributes one moved
    instance would go out with are computed by the same rules as forwarding (its own edits,
    then what it inherits from the target's first instance), and the savepoint is rolled back,
    so nothing changes and the page never copies the rules."""
    nested = session.begin_nested()
    try:
        chosen = _moved_ids(session, batch, body)
        result = move(session, batch, user, body)
        target_uid = result.target.study_instance_uid
        moved = sorted(session.scalars(select(Instance.id).where(
            Instance.study_id == result.target.id, Instance.id.in_(chosen))))
        # The last moved instance: the first one is the new study's own when there is no target.
        instance = session.get(Instance, moved[-1])
        edits = planned_edits(session, store, instance)
        if _first(session, result.target) == instance.id:
            # The target's first instance (a new study of one instance): what it keeps is what
            # later instances would copy from it.
            edits = {**_inherited(session, store, result.target), **edits}
        inherited = {k: _shown(v) for k, v in sorted(edits.items())
                     if k in INHERITED_ON_MOVE or k in ("StudyInstanceUID", "SeriesInstanceUID")}
    finally:
        nested.rollback()
        for key in (_CACHE_KEY, _ORIGINS, _SERIES):
            session.info.pop(key, None)
    return {"dry_run": True, "new_study": body.get("new_study", False) is True,
            "target_study_instance_uid": None if body.get("new_study") else target_uid,
            "moved_instances": result.moved, "attributes": inherited}


def _moved_ids(session: Session, batch: Batch, body: dict) -> list[int]:
    sops = body.get("sop_instance_uids") or []
    series = body.get("series_instance_uids") or []
    if not isinstance(sops, list) or not isinstance(series, list):
        return []  # the move itself refuses the body with the API's message
    query = select(Instance.id).where(Instance.batch_id == batch.id)
    chosen = set()
    if sops:
        chosen |= set(session.scalars(query.where(Instance.sop_instance_uid.in_(sops))))
    if series:
        chosen |= set(session.scalars(query.join(Series, Series.id == Instance.series_id)
                                      .where(Series.series_instance_uid.in_(series))))
    return list(chosen)
