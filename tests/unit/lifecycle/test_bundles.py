"""Bundles: the tar layout, members and the index read back by range, and the spool's holes
(pipeline/lifecycle/bundles.py)."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from pipeline.lifecycle import bundles
from pipeline.storage.sparse import HOLE_BLOCK


def test_bundle_layout_is_the_tar_and_members_read_back(tmp_path, store):
    members = []
    for i, size in enumerate([0, 1, 511, 512, 513, 70_000]):
        data = os.urandom(size)
        store.put_stream(f"m/{i}", io.BytesIO(data))
        digest = hashlib.sha256(data).hexdigest()
        members.append(bundles.Member(100 + i, i, f"1.2.{i}", f"m/{i}", size, digest))
    shape = bundles.layout(7, 8, members)
    path, _ = bundles.write(store, shape, tmp_path / "spool")
    assert path.stat().st_size == shape.size
    store.put_file("b.tar", path)
    for placed in shape.placed:
        got = bundles.read_member(store, "b.tar", placed.offset, placed.member.size, placed.member.sha256)
        assert got == (store.root / placed.member.object_key).read_bytes()
    index = bundles.read_index(store, "b.tar", shape.size)
    assert index["format"] == bundles.FORMAT and len(index["members"]) == 6
    with pytest.raises(bundles.BundleError):
        bundles.read_member(store, "b.tar", shape.placed[1].offset, 1, "0" * 64)
    store.put_stream("m/3", io.BytesIO(b"x" * 512))  # changed in storage since recorded
    with pytest.raises(bundles.BundleError, match="sha256 differs"):
        bundles.write(store, shape, tmp_path / "spool")


def test_bundle_spool_keeps_zero_blocks_as_holes(tmp_path, store):
    """The bundle spool skips whole zero blocks too: same bytes and sha256, less disk."""
    block = HOLE_BLOCK
    data = os.urandom(100) + bytes(8 * block) + os.urandom(block) + bytes(3 * block + 7)
    store.put_stream("sparse", io.BytesIO(data))

    member = bundles.Member(1, 1, "1.2.3", "sparse", len(data), hashlib.sha256(data).hexdigest())
    shape = bundles.layout(7, 8, [member])
    spooled, digest = bundles.write(store, shape, tmp_path / "spool")
    assert spooled.stat().st_size == shape.size
    assert digest == hashlib.sha256(spooled.read_bytes()).hexdigest()
    assert spooled.stat().st_blocks * 512 < shape.size // 2
    store.put_file("b.tar", spooled)
    assert bundles.read_member(store, "b.tar", shape.placed[0].offset, len(data), member.sha256) == data
