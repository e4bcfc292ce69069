"""Sparse writes: whole zero blocks skipped with a seek and left as holes in the file.

Used wherever the gateway writes a local file from a stream of object bytes (the folder
store, the bundle spool): blank pixel regions and tar padding read back as zeros without
taking disk, and a folder of a test's sparse images does not turn into real disk.
"""

from __future__ import annotations

import io
from typing import BinaryIO

HOLE_BLOCK = 4096  # a filesystem block
_ZEROS = bytes(HOLE_BLOCK)


def write_with_holes(out: BinaryIO, data: bytes) -> None:
    """Write ``data`` at the file's position, seeking over zero blocks instead of writing
    them: they read back as zeros, and a file of blank images (or a test's sparse ones) takes
    no disk for them. The caller truncates the file to its length at the end."""
    view = memoryview(data)
    if not len(view):
        return
    if not view[0] and not view[-1] and data == bytes(len(view)):
        out.seek(len(view), io.SEEK_CUR)
        return
    pending = 0  # start of the run of data blocks not written yet
    for start in range(0, len(view) - HOLE_BLOCK + 1, HOLE_BLOCK):
        block = view[start:start + HOLE_BLOCK]
        if not block[0] and not block[-1] and block.tobytes() == _ZEROS:
            out.write(view[pending:start])
            out.seek(HOLE_BLOCK, io.SEEK_CUR)
            pending = start + HOLE_BLOCK
    out.write(view[pending:])
