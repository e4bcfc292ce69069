"""Local folder destination, for the embedded demo and for hand-offs to a watched folder.

Writes `{path}/{study_uid}/{sop_uid}.dcm`. UIDs are checked before any path is built, so a UID
can never name a file outside the folder. Each file is written to a hidden temporary name in the
same directory and renamed into place, so a reader watching the folder never sees half a file
and a crash leaves at most a stray temporary file, never a truncated `.dcm`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.delivery.destinations.base import (
    InstanceOutcome,
    OutgoingInstance,
    TransientDestinationError,
    is_valid_uid,
)

BLOCK_SIZE = 1 << 20


class FolderSender:
    """Copies the original bytes of each instance into a study folder under `path`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path)

    def __enter__(self) -> FolderSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def check(self) -> None:
        if not self.root.is_dir():
            raise TransientDestinationError("destination folder does not exist")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise TransientDestinationError("destination folder is not writable")

    def send(self, study_instance_uid: str, instances: Sequence[OutgoingInstance]) -> list[InstanceOutcome]:
        if not instances:
            return []
        if not is_valid_uid(study_instance_uid):
            return [
                InstanceOutcome(
                    i.sop_instance_uid, False, None, "invalid StudyInstanceUID; not written", False
                )
                for i in instances
            ]
        self.check()
        study_dir = self.root / study_instance_uid
        try:
            study_dir.mkdir(exist_ok=True)
        except OSError as exc:
            return [_write_failed(i.sop_instance_uid, exc) for i in instances]
        done: dict[str, InstanceOutcome] = {}
        outcomes = []
        for instance in instances:
            uid = instance.sop_instance_uid
            if uid not in done:
                done[uid] = self._write(study_dir, instance)
            outcomes.append(done[uid])
        return outcomes

    def _write(self, study_dir: Path, instance: OutgoingInstance) -> InstanceOutcome:
        uid = instance.sop_instance_uid
        if not is_valid_uid(uid):
            return InstanceOutcome(uid, False, None, "invalid SOPInstanceUID; not written", False)
        target = study_dir / f"{uid}.dcm"
        with instance.open() as source:
            try:
                handle, tmp_name = tempfile.mkstemp(dir=study_dir, prefix=".", suffix=".tmp")
            except OSError as exc:
                return _write_failed(uid, exc)
            try:
                with os.fdopen(handle, "wb") as out:
                    # Errors reading our own storage propagate unchanged (the destination is
                    # not at fault); only errors on the destination side become outcomes.
                    while block := source.read(BLOCK_SIZE):
                        _on_destination(out.write, block)
                    _on_destination(out.flush)
                    _on_destination(os.fsync, out.fileno())
                # Atomic on POSIX within one filesystem; a second delivery simply replaces the
                # first, which is what "duplicates count as stored" means for a folder.
                _on_destination(os.replace, tmp_name, target)
            except _DestinationWriteError as exc:
                _remove_quietly(tmp_name)
                return _write_failed(uid, exc.cause)
            except BaseException:
                _remove_quietly(tmp_name)
                raise
        return InstanceOutcome(uid, True, None, None, False)


class _DestinationWriteError(Exception):
    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _on_destination(operation: Callable[..., object], *args: object) -> None:
    try:
        operation(*args)
    except OSError as exc:
        raise _DestinationWriteError(exc) from exc


def _write_failed(uid: str, exc: OSError) -> InstanceOutcome:
    # A full or failing disk may recover; the instance itself is not at fault.
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return InstanceOutcome(uid, False, None, f"write failed: {name}", True)


def _remove_quietly(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)
