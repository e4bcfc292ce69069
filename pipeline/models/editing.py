"""What a clinic changes before forwarding: upload templates and the record of every metadata
change (the originals never change; what went out is a rendition)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    ForeignKey,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.models.base import Base, utcnow


class UploadTemplate(Base):
    """A facility's named set of DICOM attribute values for a common kind of exam."""

    __tablename__ = "upload_templates"
    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    # {keyword: value or [values]}, validated against the DICOM dictionary.
    attributes: Mapped[dict] = mapped_column(JSON, default=dict)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    updated_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("facility_id", "name"),)


class MetadataChange(Base):
    """Who changed what in a batch, and when: template applied, patient override, move.

    The template row also keeps the values as they were when applied, so a later edit of
    the template never changes a batch already under way."""

    __tablename__ = "metadata_changes"
    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))  # template | override | move
    subject: Mapped[str | None] = mapped_column(String(200))  # template name, PatientID, study
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
