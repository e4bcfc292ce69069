"""Stored studies for storage lifecycle tests: real rows (facility, user, batch, upload,
study, series, instance) and real bytes at the keys intake would have used, dated in the past.

Shared by unit tests (a folder store on SQLite), integration tests and the benchmark (S3 on
moto_server, PostgreSQL). The bytes are random: tiering, bundling and restore never parse them.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from pipeline.accounts.users import get_or_create_facility, hash_token
from pipeline.intake.uploads import original_key
from pipeline.models import (
    Batch,
    BatchState,
    Instance,
    Series,
    Study,
    Upload,
    UploadState,
    User,
)
from pipeline.storage import ObjectStore

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class SeededStudy:
    study_id: int
    instance_ids: list[int]
    keys: list[str]
    data: dict[str, bytes]  # key -> bytes (empty when bytes were not kept)


def facility_user(session: Session, facility: str) -> tuple[int, int]:
    row = get_or_create_facility(session, facility)
    user = User(email=f"seed-{secrets.token_hex(4)}@{row.id}.test", role="uploader", facility_id=row.id,
                token_hash=hash_token(secrets.token_hex(16)))
    session.add(user)
    session.flush()
    return row.id, user.id


def seed_study(session: Session, store: ObjectStore | None, *, facility_id: int, user_id: int,
               created_at: datetime, sizes: Sequence[int], modality: str = "CT",
               keep_bytes: bool = True, writers: int = 8) -> SeededStudy:
    """One study of ``len(sizes)`` instances uploaded at ``created_at``; bytes written to
    ``store`` (unless None: rows only, e.g. for the cost simulation)."""
    batch = Batch(facility_id=facility_id, user_id=user_id, state=BatchState.DONE, created_at=created_at,
                  last_activity_at=created_at)
    session.add(batch)
    session.flush()
    study = Study(facility_id=facility_id, study_instance_uid=f"2.25.{secrets.randbits(96)}",
                  modality=modality, created_at=created_at)
    session.add(study)
    session.flush()
    series = Series(study_id=study.id, series_instance_uid=f"2.25.{secrets.randbits(96)}", modality=modality)
    session.add(series)
    session.flush()
    blobs: list[tuple[str, bytes]] = []
    instances = []
    for size in sizes:
        data = os.urandom(size) if store is not None else b""
        digest = hashlib.sha256(data).hexdigest() if store is not None else secrets.token_hex(32)
        upload = Upload(id=secrets.token_hex(16), batch_id=batch.id, facility_id=facility_id,
                        user_id=user_id, filename="seed.dcm", length=size, offset=size,
                        state=UploadState.PARSED, sha256=digest, created_at=created_at,
                        updated_at=created_at, expires_at=created_at + timedelta(days=1))
        upload.object_key = original_key(upload)
        session.add(upload)
        instance = Instance(facility_id=facility_id, series_id=series.id, study_id=study.id,
                            sop_instance_uid=f"2.25.{secrets.randbits(96)}", sop_class_uid=CT_IMAGE,
                            object_key=upload.object_key, size=size, sha256=digest, batch_id=batch.id,
                            upload_id=upload.id, created_at=created_at)
        instances.append(instance)
        blobs.append((upload.object_key, data))
    session.flush()  # uploads first: instances refer to them without a relationship
    session.add_all(instances)
    session.flush()
    if store is not None:
        with ThreadPoolExecutor(max_workers=writers) as pool:
            list(pool.map(lambda kv: store.put_stream(kv[0], io.BytesIO(kv[1])), blobs))
    return SeededStudy(study.id, [i.id for i in instances], [k for k, _ in blobs],
                       dict(blobs) if keep_bytes and store is not None else {})


@pytest.fixture(scope="module", name="db")
def db_fixture(postgres_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on the integration database, for tests that seed and inspect rows directly."""
    engine = create_engine(postgres_url)
    try:
        yield sessionmaker(engine, expire_on_commit=False)
    finally:
        engine.dispose()


def boto_client(server, pool: int = 32):  # noqa: ANN001, ANN201
    """A boto3 client for a moto_server with room for seeding threads (boto3 keeps 10)."""
    import boto3
    from botocore.config import Config

    env = server.env
    return boto3.client("s3", endpoint_url=server.endpoint_url, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                        region_name=env["AWS_DEFAULT_REGION"], config=Config(max_pool_connections=pool))
