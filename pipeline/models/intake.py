"""What arrives: a batch (one clinic session), its uploads (one file each, tus) and their staged
chunks; the callers the DICOM listener accepts.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from pipeline.models.accounts import Facility
from pipeline.models.base import Base, utcnow


class BatchState(enum.StrEnum):
    OPEN = "open"
    COMPLETED = "completed"  # the client said it sent everything
    FORWARDING = "forwarding"  # studies handed to the pacs queue
    DONE = "done"


class UploadState(enum.StrEnum):
    RECEIVING = "receiving"
    RECEIVED = "received"  # last byte in, assembly queued
    ASSEMBLED = "assembled"
    PARSED = "parsed"
    QUARANTINED = "quarantined"
    TERMINATED = "terminated"
    EXPIRED = "expired"


# The data of an upload's events (upload.initiated, chunk_received, completed): each field
# and the Upload attribute (= column) it is read from. pipeline.ops.events.upload_event
# reads it from a row; the one-statement PATCH builds the same data in SQL
# (pipeline.intake.uploads.record_small_chunk).
UPLOAD_EVENT_FIELDS = {
    "upload_id": "id",
    "batch_id": "batch_id",
    "user_id": "user_id",
    "offset": "offset",
    "length": "length",
}

TERMINAL_UPLOAD_STATES = frozenset(
    {UploadState.PARSED, UploadState.QUARANTINED, UploadState.TERMINATED, UploadState.EXPIRED}
)


class Batch(Base):
    __tablename__ = "batches"
    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    label: Mapped[str | None] = mapped_column(String(200))
    template: Mapped[str | None] = mapped_column(String(200))
    overrides: Mapped[dict | None] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=BatchState.OPEN)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_activity_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]
    forwarding_started_at: Mapped[datetime | None]
    # Opened from the upload screen: nothing goes out (no quiet period, no completion) until a
    # person confirms it on the study board, so overrides and moves never race the timer.
    held: Mapped[bool] = mapped_column(default=False, server_default=false())
    confirmed_at: Mapped[datetime | None]
    uploads: Mapped[list[Upload]] = relationship(back_populates="batch", order_by="Upload.id")


class Upload(Base):
    """One file sent over tus; its bytes live in staging chunks until assembled."""

    __tablename__ = "uploads"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    filename: Mapped[str] = mapped_column(String(255))
    length: Mapped[int] = mapped_column(BigInteger)
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[str] = mapped_column(String(16), default=UploadState.RECEIVING)
    # Optional whole-file digest the client declared in Upload-Metadata ("sha256 <b64>").
    declared_checksum: Mapped[str | None] = mapped_column(String(200))
    sha256: Mapped[str | None] = mapped_column(String(64))
    object_key: Mapped[str | None] = mapped_column(String(512))
    quarantine_reason: Mapped[str | None] = mapped_column(String(64))
    quarantine_detail: Mapped[str | None] = mapped_column(Text)
    # Lease held while one request appends a chunk; any API process may take it.
    lock_token: Mapped[str | None] = mapped_column(String(32))
    lock_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    # Attempts at assembly or parse that started and never ended (their worker died): a
    # file that kills workers is quarantined after a few, never redelivered for ever.
    unfinished_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A phone photo (Upload-Metadata kind=photo): the checked request (file type, target
    # study or typed patient fields), turned into a DICOM instance before the parse.
    photo: Mapped[dict | None] = mapped_column(JSON)
    batch: Mapped[Batch] = relationship(back_populates="uploads")
    chunks: Mapped[list[UploadChunk]] = relationship(
        order_by="UploadChunk.offset", cascade="all, delete-orphan"
    )


class UploadChunk(Base):
    """A staged PATCH body: stored as its own object so any process can serve the next."""

    __tablename__ = "upload_chunks"
    id: Mapped[int] = mapped_column(primary_key=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"))
    offset: Mapped[int] = mapped_column(BigInteger)
    length: Mapped[int] = mapped_column(BigInteger)
    object_key: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    __table_args__ = (UniqueConstraint("upload_id", "offset"),)


class ScpCaller(Base):
    """A modality allowed to send to the DICOM listener, and the facility it sends for.

    An entry is a calling AE title, optionally from one source network (CIDR): the same AE
    title (modalities often keep their factory default) can belong to two facilities told
    apart by their networks. An association whose caller matches no entry is rejected."""

    __tablename__ = "scp_callers"
    id: Mapped[int] = mapped_column(primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), index=True)
    # NULL: from any address.
    network: Mapped[str | None] = mapped_column(String(64))
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    facility: Mapped[Facility] = relationship()
