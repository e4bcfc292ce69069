"""Rows for analytics tests: facilities, users, batches, uploads with their instances,
studies and deliveries, written straight through the ORM (no pipeline run needed)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.accounts.users import create_user
from pipeline.models import (
    Batch,
    Delivery,
    Destination,
    Instance,
    Series,
    Study,
    Upload,
    UploadState,
)


@dataclass
class Seeder:
    session: Session
    destination_id: int | None = None
    studies: dict[tuple[int, str], Study] = field(default_factory=dict)

    def destination(self) -> int:
        if self.destination_id is None:
            dest = Destination(name=f"seed-{secrets.token_hex(3)}", kind="folder", options={"path": "/tmp"})
            self.session.add(dest)
            self.session.flush()
            self.destination_id = dest.id
        return self.destination_id

    def user(self, facility: str, role: str = "uploader") -> tuple[int, int, str]:
        """(facility_id, user_id, token)"""
        user, token = create_user(self.session, f"{secrets.token_hex(4)}@{facility}.test", facility, role)
        return user.facility_id, user.id, token

    def batch(self, facility_id: int, user_id: int, at: datetime) -> Batch:
        batch = Batch(facility_id=facility_id, user_id=user_id, created_at=at, last_activity_at=at)
        self.session.add(batch)
        self.session.flush()
        return batch

    def upload(self, batch: Batch, at: datetime, *, state: str = UploadState.PARSED, length: int = 1000,
               modality: str | None = "CT", study_uid: str = "1.2.3", latencies_ms: tuple[int, ...] = (),
               delivery_state: str = "delivered", updated_at: datetime | None = None) -> Upload:
        upload = Upload(
            id=secrets.token_hex(16), batch_id=batch.id, facility_id=batch.facility_id,
            user_id=batch.user_id, filename="f.dcm", length=length, offset=length, state=state,
            created_at=at, updated_at=updated_at or at, expires_at=at + timedelta(days=1),
        )
        self.session.add(upload)
        self.session.flush()
        if state == UploadState.PARSED:
            sop = f"2.25.{secrets.randbits(64)}"
            key = (batch.facility_id, study_uid)
            study = self.studies.get(key) or self.session.scalar(select(Study).where(
                Study.facility_id == batch.facility_id, Study.study_instance_uid == study_uid))
            if study is None:
                study = Study(facility_id=batch.facility_id, study_instance_uid=study_uid,
                              modality=modality, created_at=at)
                self.session.add(study)
                self.session.flush()
                self.studies[key] = study
            series = Series(study_id=study.id, series_instance_uid=f"{sop}.1", modality=modality)
            self.session.add(series)
            self.session.flush()
            instance = Instance(
                facility_id=batch.facility_id, series_id=series.id, study_id=study.id,
                sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                object_key=f"k/{sop}", size=length, sha256="0" * 64, batch_id=batch.id,
                upload_id=upload.id, created_at=at,
            )
            self.session.add(instance)
            self.session.flush()
            upload.sop_instance_uid = sop
            for latency in latencies_ms:
                dest = Destination(name=f"seed-{secrets.token_hex(4)}", kind="folder", options={})
                self.session.add(dest)
                self.session.flush()
                delivered = delivery_state == "delivered"
                self.session.add(Delivery(
                    instance_id=instance.id, destination_id=dest.id, study_id=study.id,
                    batch_id=batch.id, state=delivery_state, attempts=1,
                    latency_ms=latency if delivered else None,
                    delivered_at=at + timedelta(milliseconds=latency) if delivered else None,
                    created_at=at, updated_at=updated_at or at,
                ))
            self.session.flush()
        return upload
