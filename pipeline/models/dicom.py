"""What the files are: studies, series and instances, recorded by their DICOM UIDs, and each
instance's identity as its stored original says (what moves and overrides compare against).

An ``Instance`` row is one version of a SOPInstanceUID: the bytes of one upload, filed under
the UIDs those bytes carry. When different bytes arrive for a SOPInstanceUID already known,
they get their own row, and ``SopInstance`` says which version goes out and whether a person
has to decide (see ``pipeline.dicom.versions``).
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from pipeline.models.base import Base, utcnow


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    # Patient identifiers are PHI: kept for the PACS and the owning facility, never logged.
    patient_id: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))
    modality: Mapped[str | None] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.id")
    __table_args__ = (UniqueConstraint("facility_id", "study_instance_uid"),)


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")
    __table_args__ = (UniqueConstraint("study_id", "series_instance_uid"),)


class InstanceVersion(enum.StrEnum):
    CURRENT = "current"  # the version that goes out (at most one per SOPInstanceUID)
    HELD = "held"  # kept, sent nowhere, until a person chooses among the versions
    SUPERSEDED = "superseded"  # another version was chosen; the row is kept as the record


class ConflictKind(enum.StrEnum):
    IN_BATCH = "versions_in_batch"  # two files of one batch carry one SOPInstanceUID
    RESEND = "resend"  # a later batch brought new bytes: a corrected re-send


class ConflictState(enum.StrEnum):
    CHOSEN = "chosen"  # the rule chose; a person may still choose otherwise
    OPEN = "open"  # no version goes out until a person chooses
    RESOLVED = "resolved"  # a person chose


_CURRENT = text("version_state = 'current'")


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # The batch and upload that brought this version in.
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id"))
    version_state: Mapped[str] = mapped_column(String(16), default=InstanceVersion.CURRENT,
                                               server_default=InstanceVersion.CURRENT.value)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    series: Mapped[Series] = relationship(back_populates="instances")
    __table_args__ = (
        Index("ix_instances_facility_sop", "facility_id", "sop_instance_uid"),
        # Never two versions going out under one SOPInstanceUID, whatever a bug elsewhere does.
        Index("uq_instances_current_version", "facility_id", "sop_instance_uid", unique=True,
              postgresql_where=_CURRENT, sqlite_where=_CURRENT),
    )


class SopInstance(Base):
    """One SOPInstanceUID of a facility: which of its versions goes out, and the conflict
    when there are several. Every parse of the SOPInstanceUID locks this row first, so two
    files of one instance parsed at once are decided one after the other."""

    __tablename__ = "sop_instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    chosen_instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id", ondelete="SET NULL"))
    conflict: Mapped[str | None] = mapped_column(String(24))  # ConflictKind; None: one version
    conflict_state: Mapped[str | None] = mapped_column(String(16))  # ConflictState
    # Why the versions stand as they do, in words for the batch report.
    rule: Mapped[str | None] = mapped_column(Text)
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("facility_id", "sop_instance_uid"),)


class InstanceOrigin(Base):
    """Identity of an instance as its stored original says: what moves, overrides and
    problem detection compare against, without reading the object again."""

    __tablename__ = "instance_origins"
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))
    accession_number: Mapped[str | None] = mapped_column(String(16))
