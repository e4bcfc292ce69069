"""The job that fills a case: the delivered version of each instance of the source study
(after template values, per-patient overrides and moves: ``pipeline.delivery.renditions``)
copied through de-identification into the case's own prefix of the byte store.

- The originals are never changed; a case's objects live under ``teaching/<case id>/``.
- Idempotent and resumable: each copied instance is committed with its row in the identity
  map (unique per case and source instance) before the next one; a rerun skips what is done
  and writes the same bytes again for the rest (UIDs and date shifts are HMACs).
- Cold bytes (archive class or inside a bundle) are asked back first: the case waits, saying
  which and until when, and the periodic resume picks it up when they are readable.
- Instances where burned-in text is likely are copied but held out of the case until a
  person confirms or masks them (``release``/``mask``).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.delivery import renditions
from pipeline.lifecycle import restore
from pipeline.models import (
    Delivery,
    DeliveryState,
    Instance,
    InstanceVersion,
    Preparation,
    TeachingCase,
    TeachingCaseSource,
    TeachingIdentityMap,
    TeachingInstance,
    TeachingInstanceState,
    utcnow,
)
from pipeline.storage import ObjectStore
from pipeline.teaching import pixels
from pipeline.teaching.deidentify import DeidContext, deidentify
from pipeline.teaching.packaging import write_case_zip
from pipeline.teaching.profile import CODE_CLEAN_PIXEL_DATA, DeidOptions

PREFIX = "teaching"


class NotDelivered(ValueError):
    """A case is made from what went out: a study with nothing delivered has no such version."""


def case_prefix(case_id: int) -> str:
    return f"{PREFIX}/{case_id}"


def teaching_secret(configured: str | None, var_dir: Path) -> bytes:
    """The HMAC key for UIDs, pseudonyms and date shifts: RELAYPACS_TEACHING_SECRET, or one
    generated once in the var folder (teaching.key, mode 0600). Changing it changes every
    new UID and shift, so a patient's later cases no longer line up with earlier ones."""
    if configured:
        return configured.encode()
    path = var_dir / "teaching.key"
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w") as handle:
            handle.write(os.urandom(32).hex())
    return path.read_text().strip().encode()


def source_instances(session: Session, study_id: int) -> list[Instance]:
    """The study's instances as they stand now (moves included), the version that goes out."""
    return list(session.scalars(
        select(Instance)
        .where(Instance.study_id == study_id, Instance.version_state == InstanceVersion.CURRENT)
        .order_by(Instance.series_id, Instance.id)
    ))


def require_delivered(session: Session, study_id: int) -> None:
    delivered = session.scalar(
        select(Delivery.id).where(
            Delivery.study_id == study_id, Delivery.state == DeliveryState.DELIVERED
        ).limit(1)
    )
    if delivered is None:
        raise NotDelivered(f"study {study_id} has not been delivered")


@dataclass
class Outcome:
    case_id: int
    state: str
    copied: int = 0
    held: int = 0
    waiting: int = 0


def prepare_case(
    session: Session,
    store: ObjectStore,
    case_id: int,
    *,
    secret: bytes,
    uid_root: str,
    restore_tier: str = "Standard",
    safe_private: frozenset[tuple[str, int]] = frozenset(),
    checkpoint: Callable[[], None] | None = None,
    now: datetime | None = None,
) -> Outcome:
    """Copy what is left of the case's source study through de-identification."""
    checkpoint = checkpoint or session.flush
    case = session.get_one(TeachingCase, case_id)
    source = session.get_one(TeachingCaseSource, case_id)
    if case.preparation == Preparation.READY:
        return Outcome(case_id, case.preparation)
    done = set(session.scalars(
        select(TeachingIdentityMap.source_instance_id).where(TeachingIdentityMap.case_id == case_id)
    ))
    todo = [i for i in source_instances(session, source.study_id) if i.id not in done]
    cold = []
    for instance in todo:
        request = restore.read_or_request(session, instance, tier=restore_tier, now=now)
        if request is not None:
            cold.append(request)
    if cold:
        expected = max((r.expected_ready_at for r in cold if r.expected_ready_at), default=None)
        case.preparation = Preparation.WAITING_RESTORE
        case.preparation_note = (
            f"{len(cold)} of {len(todo)} instances are in a cold storage tier: restore requested"
            + (f", expected by {expected:%Y-%m-%d %H:%M} UTC" if expected else "")
            + "; the case is filled when they are back"
        )
        case.updated_at = utcnow()
        checkpoint()
        return Outcome(case_id, case.preparation, waiting=len(cold))

    ctx = DeidContext(
        secret=secret,
        facility_id=source.facility_id,
        options=DeidOptions(**(case.options or {})),
        uid_root=uid_root,
        safe_private=safe_private,
    )
    outcome = Outcome(case_id, Preparation.READY)
    for instance in todo:
        rendition = renditions.prepare(session, store, instance)
        with rendition.outgoing.open() as handle:
            ds = pydicom.dcmread(io.BytesIO(handle.read()), force=True)
        reason = pixels.burned_in_reason(ds)
        result = deidentify(ds, ctx)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=False)
        data = buffer.getvalue()
        key = f"{case_prefix(case_id)}/{result.sop_uid}.dcm"
        store.put_stream(key, io.BytesIO(data))
        row = TeachingInstance(
            case_id=case_id,
            study_instance_uid=result.study_uid,
            series_instance_uid=result.series_uid,
            sop_instance_uid=result.sop_uid,
            sop_class_uid=str(ds.get("SOPClassUID", "")),
            modality=str(ds.get("Modality", ""))[:16],
            object_key=key,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            state=TeachingInstanceState.HELD if reason else TeachingInstanceState.READY,
            hold_reason=reason,
            rows=int(ds.Rows) if "Rows" in ds else None,
            columns=int(ds.Columns) if "Columns" in ds else None,
        )
        session.add(row)
        session.flush()
        session.add(TeachingIdentityMap(
            case_id=case_id,
            source_instance_id=instance.id,
            teaching_instance_id=row.id,
            original_patient_id=result.original_patient_id[:64],
            original_accession=result.original_accession[:64],
            original_study_uid=result.original_study_uid,
            original_series_uid=result.original_series_uid,
            original_sop_uid=result.original_sop_uid,
            new_sop_uid=result.sop_uid,
        ))
        source.shift_days = result.shift_days
        outcome.copied += 1
        # Progress is visible: the periodic resume leaves a case alone while it moves.
        case.updated_at = utcnow()
        checkpoint()
    refresh_package(session, store, case)
    held = session.scalar(
        select(TeachingInstance.id).where(
            TeachingInstance.case_id == case_id, TeachingInstance.state == TeachingInstanceState.HELD
        ).limit(1)
    )
    case.preparation = Preparation.READY
    case.preparation_note = (
        "some instances are held until a person confirms their pixels are clean or masks them"
        if held else None
    )
    case.updated_at = utcnow()
    checkpoint()
    return outcome


def refresh_key_image(session: Session, store: ObjectStore, case: TeachingCase) -> None:
    """Render the key image from the case's chosen instance, or the middle of its first
    series with pixels; only from instances that are not held."""
    ready = list(session.scalars(
        select(TeachingInstance).where(
            TeachingInstance.case_id == case.id,
            TeachingInstance.state == TeachingInstanceState.READY,
            TeachingInstance.rows.is_not(None),
        ).order_by(TeachingInstance.series_instance_uid, TeachingInstance.id)
    ))
    if not ready:
        return
    chosen = next((r for r in ready if r.id == case.key_instance_id), None)
    if chosen is None:
        first_series = [r for r in ready if r.series_instance_uid == ready[0].series_instance_uid]
        chosen = first_series[len(first_series) // 2]
    with store.open(chosen.object_key) as handle:
        ds = pydicom.dcmread(io.BytesIO(handle.read()), force=True)
    try:
        png = pixels.render_png(ds)
    except Exception:  # noqa: BLE001 - a pixel format the decoders here cannot read: no key image
        return
    key = f"{case_prefix(case.id)}/key-{chosen.id}.png"
    store.put_stream(key, io.BytesIO(png))
    case.key_image_key = key
    case.key_instance_id = chosen.id


def refresh_package(session: Session, store: ObjectStore, case: TeachingCase) -> None:
    """The key image and the case zip, from the instances that are ready now."""
    refresh_key_image(session, store, case)
    keys = list(session.scalars(
        select(TeachingInstance.object_key).where(
            TeachingInstance.case_id == case.id,
            TeachingInstance.state == TeachingInstanceState.READY,
        ).order_by(TeachingInstance.id)
    ))
    if not keys:
        case.package_key = None
        return
    buffer = io.BytesIO()
    write_case_zip(store, keys, buffer)
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()[:16]
    key = f"{case_prefix(case.id)}/case-{digest}.zip"
    store.put_stream(key, io.BytesIO(buffer.getvalue()))
    old, case.package_key = case.package_key, key
    if old and old != key:
        store.delete(old)


def release(session: Session, store: ObjectStore, row: TeachingInstance) -> None:
    """A person looked: the pixels are clean. The instance joins the case (its zip and key
    image are rebuilt by the worker: ``refresh_package``)."""
    row.state = TeachingInstanceState.READY
    row.hold_reason = None


def mask(session: Session, store: ObjectStore, row: TeachingInstance,
         regions: list[pixels.Rect]) -> None:
    """Black out ``regions`` (Clean Pixel Data option), record it, and release the instance."""
    with store.open(row.object_key) as handle:
        ds = pydicom.dcmread(io.BytesIO(handle.read()), force=True)
    pixels.mask_regions(ds, regions)
    codes = ds.get("DeidentificationMethodCodeSequence") or []
    if CODE_CLEAN_PIXEL_DATA[0] not in [item.CodeValue for item in codes]:
        item = pydicom.Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = (
            CODE_CLEAN_PIXEL_DATA[0], "DCM", CODE_CLEAN_PIXEL_DATA[1])
        codes.append(item)
        ds.DeidentificationMethodCodeSequence = codes
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    data = buffer.getvalue()
    key = row.object_key.removesuffix(".dcm") + ".masked.dcm"
    store.put_stream(key, io.BytesIO(data))
    old = row.object_key
    row.object_key, row.size, row.sha256 = key, len(data), hashlib.sha256(data).hexdigest()
    release(session, store, row)
    refresh_package(session, store, session.get_one(TeachingCase, row.case_id))
    if old != key:
        store.delete(old)


# A queued case that has not moved for this long lost its task (a worker gone with it).
STALLED_AFTER = timedelta(minutes=30)


def cases_to_resume(session: Session, now: datetime | None = None) -> list[int]:
    """Cases waiting for a restore (it may be done), and queued cases whose task was lost;
    never one whose copy is moving (two runs of one case would race on its rows)."""
    now = now or utcnow()
    return list(session.scalars(select(TeachingCase.id).where(
        (TeachingCase.preparation == Preparation.WAITING_RESTORE)
        | ((TeachingCase.preparation == Preparation.QUEUED) & (TeachingCase.updated_at < now - STALLED_AFTER))
    ).order_by(TeachingCase.id)))
