"""The folder destination: byte-identical, atomic writes under validated UIDs."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from pipeline.delivery.destinations import OutgoingInstance, TransientDestinationError, make_sender
from pipeline.delivery.destinations.folder import BLOCK_SIZE, FolderSender

STUDY = "1.2.826.0.1.3680043.8.498.1"


def instance(uid: str, data: bytes) -> OutgoingInstance:
    return OutgoingInstance(
        uid, "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", len(data), lambda: io.BytesIO(data)
    )


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_writes_original_bytes_per_study(tmp_path):
    big = os.urandom(BLOCK_SIZE * 2 + 3)
    sender = make_sender("folder", {"path": str(tmp_path)})
    outcomes = sender.send(STUDY, [instance("1.2.3.1", big), instance("1.2.3.2", b"DICM")])
    assert [(o.sop_instance_uid, o.stored) for o in outcomes] == [("1.2.3.1", True), ("1.2.3.2", True)]
    assert (tmp_path / STUDY / "1.2.3.1.dcm").read_bytes() == big
    assert (tmp_path / STUDY / "1.2.3.2.dcm").read_bytes() == b"DICM"
    assert tree(tmp_path) == [STUDY, f"{STUDY}/1.2.3.1.dcm", f"{STUDY}/1.2.3.2.dcm"]


def test_duplicate_delivery_replaces_and_counts_as_stored(tmp_path):
    sender = FolderSender(tmp_path)
    sender.send(STUDY, [instance("1.2.3.1", b"old")])
    outcomes = sender.send(STUDY, [instance("1.2.3.1", b"new"), instance("1.2.3.1", b"new")])
    assert [o.stored for o in outcomes] == [True, True]
    assert (tmp_path / STUDY / "1.2.3.1.dcm").read_bytes() == b"new"


@pytest.mark.parametrize("bad", ["..", ".", "../1.2", "1.2/3", "1..2", "abc", "1" * 65, ""])
def test_invalid_sop_uid_writes_nothing(tmp_path, bad):
    root = tmp_path / "dest"
    root.mkdir()
    outcomes = FolderSender(root).send(STUDY, [instance(bad, b"x"), instance("1.2.3", b"y")])
    assert (outcomes[0].stored, outcomes[0].retryable) == (False, False)
    assert "invalid SOPInstanceUID" in outcomes[0].reason
    assert outcomes[1].stored
    assert tree(tmp_path) == ["dest", f"dest/{STUDY}", f"dest/{STUDY}/1.2.3.dcm"]


@pytest.mark.parametrize("bad", ["..", "../..", "/etc", "1.2/..", "x"])
def test_invalid_study_uid_writes_nothing(tmp_path, bad):
    root = tmp_path / "dest"
    root.mkdir()
    [outcome] = FolderSender(root).send(bad, [instance("1.2.3", b"x")])
    assert (outcome.stored, outcome.retryable) == (False, False)
    assert tree(tmp_path) == ["dest"]


def test_storage_read_error_propagates_and_leaves_no_temporary_file(tmp_path):
    class Failing(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise OSError("storage went away")

    broken = OutgoingInstance("1.2.3", "1.2", None, 1, lambda: Failing(b"x"))
    with pytest.raises(OSError, match="storage went away"):
        FolderSender(tmp_path).send(STUDY, [broken])
    assert tree(tmp_path) == [STUDY]


def test_destination_write_error_is_a_retryable_outcome(tmp_path):
    # The study "folder" is a file: the destination, not the instance, is at fault.
    (tmp_path / STUDY).write_bytes(b"")
    [outcome] = FolderSender(tmp_path).send(STUDY, [instance("1.2.3", b"x")])
    assert (outcome.stored, outcome.retryable) == (False, True)
    assert outcome.reason.startswith("write failed: ")


def test_write_is_atomic_rename(tmp_path, monkeypatch):
    # Interrupt at the rename: the final name must not exist and the temp file must be gone.
    def no_space(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pipeline.delivery.destinations.folder.os.replace", no_space)
    [outcome] = FolderSender(tmp_path).send(STUDY, [instance("1.2.3", b"x")])
    assert outcome == outcome.__class__("1.2.3", False, None, "write failed: ENOSPC", True)
    assert tree(tmp_path) == [STUDY]


def test_check(tmp_path):
    FolderSender(tmp_path).check()
    with pytest.raises(TransientDestinationError):
        FolderSender(tmp_path / "missing").check()
    with pytest.raises(TransientDestinationError):
        FolderSender(tmp_path / "missing").send(STUDY, [instance("1.2.3", b"x")])


def test_empty_send(tmp_path):
    assert FolderSender(tmp_path).send(STUDY, []) == []
    assert tree(tmp_path) == []
