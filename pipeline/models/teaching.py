"""The teaching file: cases, their de-identified instances, and the governance mapping.

A case holds only de-identified material and says nothing of where it came from: the link to
the original study and the original identifiers live in ``teaching_case_sources`` and
``teaching_identity_map``, read by admins only (every read audited), never by the teaching
pages. On PostgreSQL, ``teaching_cases.search_vector`` is a generated tsvector over the case's
words with a GIN index (made by the migration, not mapped here: only search reads it).
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.models.base import Base, utcnow


class CaseState(enum.StrEnum):
    DRAFT = "draft"  # the author, publishers and admins see it
    PUBLISHED = "published"  # every teaching user sees it
    WITHDRAWN = "withdrawn"  # a publisher took it back; as a draft for who may see drafts


class Difficulty(enum.StrEnum):
    PRIMARY = "primary"
    INTERMEDIATE = "intermediate"
    ADVANCED = "advanced"


class Preparation(enum.StrEnum):
    """Where the copy of the instances through de-identification stands."""

    QUEUED = "queued"
    WAITING_RESTORE = "waiting_restore"  # bytes in a cold tier: restore requested, job waits
    READY = "ready"  # every instance copied (some may be held for a pixel check)
    FAILED = "failed"


class TeachingInstanceState(enum.StrEnum):
    READY = "ready"
    # Burned-in text is likely: kept out of the case (zip, key image, viewers) until a person
    # confirms the pixels are clean or masks regions.
    HELD = "held"


class TeachingCase(Base):
    __tablename__ = "teaching_cases"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    history: Mapped[str] = mapped_column(Text, default="")
    findings: Mapped[str] = mapped_column(Text, default="")
    diagnosis: Mapped[str] = mapped_column(String(300), default="")
    differential: Mapped[str] = mapped_column(Text, default="")
    discussion: Mapped[str] = mapped_column(Text, default="")
    difficulty: Mapped[str] = mapped_column(String(16), default=Difficulty.INTERMEDIATE)
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    keywords: Mapped[list] = mapped_column(JSON, default=list)
    # The keywords as one text, for the generated search vector (JSON is not searchable).
    keywords_text: Mapped[str] = mapped_column(Text, default="", server_default="")
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    author_facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"))
    # The author's facility is shown on a published case only when they choose.
    show_author_facility: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), default=CaseState.DRAFT, index=True)
    # The Annex E options chosen for this case (pipeline.teaching.profile.DeidOptions).
    options: Mapped[dict] = mapped_column(JSON, default=dict)
    preparation: Mapped[str] = mapped_column(String(24), default=Preparation.QUEUED)
    preparation_note: Mapped[str | None] = mapped_column(Text)
    key_image_key: Mapped[str | None] = mapped_column(String(512))
    key_instance_id: Mapped[int | None] = mapped_column(BigInteger)
    # The case's zip (DICOM + rebuilt DICOMDIR), rebuilt by the worker whenever its ready
    # instances change; None while it is being made.
    package_key: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None]
    published_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class TeachingInstance(Base):
    """One de-identified instance of a case, in the teaching prefix of the byte store."""

    __tablename__ = "teaching_instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("teaching_cases.id", ondelete="CASCADE"))
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16), default="")
    object_key: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=TeachingInstanceState.READY)
    hold_reason: Mapped[str | None] = mapped_column(String(200))
    rows: Mapped[int | None]
    columns: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (
        UniqueConstraint("case_id", "sop_instance_uid"),
        Index("ix_teaching_instances_case", "case_id", "state"),
    )


class TeachingCaseSource(Base):
    """Governance: the study a case was made from (admins only, every read audited)."""

    __tablename__ = "teaching_case_sources"
    case_id: Mapped[int] = mapped_column(
        ForeignKey("teaching_cases.id", ondelete="CASCADE"), primary_key=True
    )
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    report_id: Mapped[int | None] = mapped_column(BigInteger)
    shift_days: Mapped[int | None]


class TeachingIdentityMap(Base):
    """Governance: original -> de-identified identifiers of each copied instance (admins
    only, every read audited). Also how the job knows what it already copied (resumable)."""

    __tablename__ = "teaching_identity_map"
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("teaching_cases.id", ondelete="CASCADE"))
    source_instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"))
    teaching_instance_id: Mapped[int] = mapped_column(
        ForeignKey("teaching_instances.id", ondelete="CASCADE")
    )
    original_patient_id: Mapped[str] = mapped_column(String(64), default="")
    original_accession: Mapped[str] = mapped_column(String(64), default="")
    original_study_uid: Mapped[str] = mapped_column(String(64))
    original_series_uid: Mapped[str] = mapped_column(String(64))
    original_sop_uid: Mapped[str] = mapped_column(String(64))
    new_sop_uid: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("case_id", "source_instance_id"),)
