"""Assembly: the staged chunks of a finished upload become one stored object.

Each chunk is re-hashed while it is copied and compared with the digest recorded when it
arrived, the total length must equal Upload-Length, and a whole-file checksum the client
declared in Upload-Metadata (``checksum: "sha256 <base64>"``) must match.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from pipeline.intake.tus import CHECKSUM_ALGORITHMS
from pipeline.intake.uploads import original_key
from pipeline.models import Upload, UploadChunk, UploadState, utcnow
from pipeline.storage import ObjectMissing, ObjectStore, iter_object


class AssemblyError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Assembled:
    upload_id: str
    staged_keys: list[str]  # for the caller to delete once the new state is committed
    # The upload was terminated or expired meanwhile: nothing was assembled, and
    # ``staged_keys`` holds the object written for it, to delete.
    ended: bool = False


def _declared_digest(declared: str | None) -> tuple[str, bytes] | None:
    if not declared:
        return None
    algorithm, _, value = declared.partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise AssemblyError("bad_checksum", f"unsupported whole-file checksum {algorithm!r}")
    try:
        return algorithm, base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise AssemblyError("bad_checksum", "whole-file checksum is not base64") from exc


def assemble(session: Session, store: ObjectStore, upload: Upload, spool_dir: Path) -> Assembled:
    """Join and verify the chunks; idempotent (an assembled upload is left as it is)."""
    if upload.state != UploadState.RECEIVED:
        return Assembled(upload.id, [])
    declared = _declared_digest(upload.declared_checksum)
    whole = hashlib.sha256()
    other = CHECKSUM_ALGORITHMS[declared[0]]() if declared else None
    expected_offset = 0
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=spool_dir, prefix="assemble-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in upload.chunks:
                if chunk.offset != expected_offset:
                    raise AssemblyError("gap", f"chunk at {chunk.offset}, expected {expected_offset}")
                chunk_hash = hashlib.sha256()
                try:
                    for block in iter_object(store, chunk.object_key):
                        chunk_hash.update(block)
                        whole.update(block)
                        if other is not None:
                            other.update(block)
                        out.write(block)
                except ObjectMissing as exc:
                    # Gone for good (deleted by a clean-up): trying again cannot bring it back.
                    raise AssemblyError("missing_chunk", f"chunk at {chunk.offset} is no longer in "
                                                         "staging storage") from exc
                if chunk_hash.hexdigest() != chunk.sha256:
                    raise AssemblyError("corrupt_chunk", f"chunk at {chunk.offset} changed in storage")
                expected_offset += chunk.length
        if expected_offset != upload.length:
            raise AssemblyError("length", f"{expected_offset} bytes assembled, {upload.length} declared")
        if declared is not None and other is not None and other.digest() != declared[1]:
            raise AssemblyError("checksum_mismatch", f"whole-file {declared[0]} does not match")
        key = original_key(upload)
        store.put_file(key, tmp)
    finally:
        tmp.unlink(missing_ok=True)
    staged = [c.object_key for c in upload.chunks]
    # Conditional: a DELETE (or expiry) that ended the upload while its chunks were joined
    # wins, and the object just written goes with it, instead of the upload coming back.
    claimed = session.execute(
        update(Upload)
        .where(Upload.id == upload.id, Upload.state == UploadState.RECEIVED)
        .values(state=UploadState.ASSEMBLED.value, object_key=key, sha256=whole.hexdigest(),
                updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        session.refresh(upload)
        # Another assembly of the same upload (a re-driven duplicate) may have won with
        # this very key: then the object is that upload's, not ours to delete.
        return Assembled(upload.id, [] if upload.object_key == key else [key], ended=True)
    session.execute(delete(UploadChunk).where(UploadChunk.upload_id == upload.id))
    session.flush()
    session.expire(upload)
    return Assembled(upload.id, staged)
