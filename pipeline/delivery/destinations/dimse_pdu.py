"""The bytes of a C-STORE on the wire: its command set, its PDVs and the P-DATA-TF PDUs.

This module owns the encoding the DIMSE sender writes itself instead of going through
pynetdicom: the C-STORE-RQ command set (PS3.7 9.3.1.1, implicit VR little endian), the split
of a message into PDV fragments (PS3.8 E.2) and the P-DATA-TF PDUs that carry them (PS3.8
9.3.5), written to the association socket from the sending thread. pynetdicom builds the
command set as a pydicom Dataset and encodes it twice (once for its group length), which was
two thirds of the sender's CPU per instance (py-spy), and queues every PDU for its DUL thread.
The unit tests compare these bytes with pynetdicom's own encodings.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from pynetdicom.association import Association

# P-DATA-TF PDUs are written to the socket in batches of about this many bytes.
SEND_BYTES = 256 * 1024
# C-STORE priority LOW, pynetdicom's default (PS3.7 9.1.1.1.7).
PRIORITY = 2

# Message control header of a PDV (PS3.8 E.2): bit 0 command/data, bit 1 last fragment.
DATA_PDV, COMMAND_PDV, LAST_DATA_PDV, LAST_COMMAND_PDV = b"\x00", b"\x01", b"\x02", b"\x03"
_LONGEST_UID = 64


def _uid_value(uid: str) -> bytes:
    value = uid.rstrip("\x00 ").encode("ascii", "strict")
    if not value or len(value) > _LONGEST_UID:
        raise ValueError(f"UID of {len(value)} characters")
    return value + b"\x00" * (len(value) % 2)  # UI values are padded with NUL to even length


def _element(element: int, value: bytes) -> bytes:
    """A command element, implicit VR little endian, group 0000 (PS3.7 6.3.1)."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def c_store_command(sop_class: str, sop_instance: str, message_id: int) -> bytes:
    """The encoded command set of a C-STORE-RQ with a data set (PS3.7 9.3.1.1)."""
    try:
        body = b"".join((
            _element(0x0002, _uid_value(sop_class)),  # Affected SOP Class UID
            _element(0x0100, struct.pack("<H", 0x0001)),  # Command Field: C-STORE-RQ
            _element(0x0110, struct.pack("<H", message_id)),  # Message ID
            _element(0x0700, struct.pack("<H", PRIORITY)),  # Priority
            _element(0x0800, struct.pack("<H", 0x0001)),  # Command Data Set Type: present
            _element(0x1000, _uid_value(sop_instance)),  # Affected SOP Instance UID
        ))
    except UnicodeEncodeError as exc:
        raise ValueError("UID is not ASCII") from exc
    return _element(0x0000, struct.pack("<I", len(body))) + body  # Command Group Length


def fragment_size(maximum_pdu_length: int) -> int:
    """The most data bytes one PDV may carry: the peer's maximum PDU length less the PDV's
    own 6 header bytes (PS3.8 9.3.5); 0 means the peer set no limit."""
    return maximum_pdu_length - 6 if maximum_pdu_length else 0


def pdvs(data: bytes, size: int, flag: bytes, last_flag: bytes) -> Iterator[bytes]:
    """`data` as PDVs of at most `size` bytes (0: one PDV), the last one flagged `last_flag`."""
    if not size or len(data) <= size:
        yield last_flag + data
        return
    view = memoryview(data)
    ends = range(size, len(data), size)
    start = 0
    for end in ends:
        yield flag + view[start:end]
        start = end
    yield last_flag + view[start:]


def file_pdvs(fh: BinaryIO, length: int, size: int) -> Iterator[bytes]:
    """The data set PDVs of `length` bytes read from `fh`, one fragment in memory at a time."""
    size = size or length
    left = length
    while left > size:
        chunk = fh.read(size)
        if len(chunk) != size:
            raise OSError("the file shrank while it was being sent")
        left -= size
        yield DATA_PDV + chunk
    chunk = fh.read(left)
    if len(chunk) != left:
        raise OSError("the file shrank while it was being sent")
    yield LAST_DATA_PDV + chunk


def p_data_tf(context_id: int, pdv: bytes) -> bytes:
    """A P-DATA-TF PDU carrying one PDV (PS3.8 9.3.5): type 04, the PDU length, then the item:
    its length, the presentation context id and the PDV (control header byte and fragment)."""
    return struct.pack(">BBIIB", 0x04, 0x00, len(pdv) + 5, len(pdv) + 1, context_id) + pdv


def send_pdvs(assoc: Association, context_id: int, pdvs: Iterable[bytes]) -> None:
    """Write a message's P-DATA-TF PDUs to the association socket from this thread, in
    writes of about SEND_BYTES. pynetdicom would queue each PDU for its DUL thread, which
    takes it from the queue, runs it through the state machine and encodes it (a thread hop
    and its work per PDU); in the data transfer state that is only this write (action DT-1).
    A failed write closes the connection through the DUL as usual (event 17), and the wait
    for the response then ends in an abort."""
    pending: list[bytes] = []
    size = 0
    for pdv in pdvs:
        pending.append(p_data_tf(context_id, pdv))
        size += len(pending[-1])
        if size >= SEND_BYTES:
            assoc.dul.socket.send(b"".join(pending))
            pending, size = [], 0
    if pending:
        assoc.dul.socket.send(b"".join(pending))
