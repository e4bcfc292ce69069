"""Zero blocks written as holes, by the folder store and by ``write_with_holes`` itself
(pipeline/storage/sparse.py, pipeline/storage/folder.py)."""

from __future__ import annotations

import io
import os
import random

from pipeline.storage.folder import FolderStore
from pipeline.storage.sparse import HOLE_BLOCK, write_with_holes


def test_zero_blocks_are_written_as_holes_and_read_back_the_same(tmp_path):
    """The folder store skips whole zero blocks (blank image regions, a test's sparse files)
    with a seek: same bytes, less disk."""
    store = FolderStore(tmp_path / "objects")
    block = HOLE_BLOCK
    data = os.urandom(100) + bytes(8 * block) + os.urandom(block) + bytes(3 * block + 7)
    store.put_stream("sparse", io.BytesIO(data))
    path = store.root / "sparse"
    assert path.read_bytes() == data
    assert path.stat().st_blocks * 512 < len(data) // 2  # the zero runs take no disk
    trailing = bytes(4 * block)  # a file that ends in a hole still has its length
    store.put_stream("zeros", io.BytesIO(trailing))
    assert (store.root / "zeros").read_bytes() == trailing

    # Any mix of zero and data blocks, written in chunks of any size, reads back the same.
    rng = random.Random(5)
    for _ in range(20):
        parts = [bytes(rng.choice([1, 7, block, 3 * block])) if rng.random() < 0.5
                 else os.urandom(rng.choice([1, 100, block, block + 1])) for _ in range(8)]
        mixed = b"".join(parts)
        with open(tmp_path / "mixed", "wb") as out:
            at = 0
            while at < len(mixed):
                step = rng.choice([1, 511, block, 5 * block + 3])
                write_with_holes(out, mixed[at:at + step])
                at += step
            out.truncate(len(mixed))
        assert (tmp_path / "mixed").read_bytes() == mixed
