"""What bytes go out for an instance: the stored original, unless a metadata change
(template, per-patient override, study move) requires a rewritten rendition.

The stored original is never changed; a rendition is a new object, and the delivery
records which one was sent (``sent_object_key``, ``sent_sha256``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from pipeline.destinations import OutgoingInstance
from pipeline.models import Instance
from pipeline.storage import ObjectStore


@dataclass(frozen=True)
class Rendition:
    outgoing: OutgoingInstance
    object_key: str
    sha256: str


def original(store: ObjectStore, instance: Instance) -> Rendition:
    key = instance.object_key
    return Rendition(
        outgoing=OutgoingInstance(
            sop_instance_uid=instance.sop_instance_uid,
            sop_class_uid=instance.sop_class_uid,
            transfer_syntax_uid=instance.transfer_syntax_uid,
            size=instance.size,
            open=lambda: store.open(key),
        ),
        object_key=key,
        sha256=instance.sha256,
    )


def prepare(session: Session, store: ObjectStore, instance: Instance) -> Rendition:
    """The rendition to send for ``instance`` (no metadata changes yet: the original)."""
    return original(store, instance)
