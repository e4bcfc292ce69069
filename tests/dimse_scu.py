"""A test modality: pynetdicom C-STORE of Part-10 files exactly as they are, over one association.

Shared by the unit and integration tests of the Storage SCP. Two things it takes care of:
- the data set bytes are sent as stored (pynetdicom's chunked send of a file path), never decoded
  and re-encoded by pydicom, so a test can compare bytes end to end;
- pynetdicom's requestor has a race (its reactor thread may take the C-STORE-RSP that
  send_c_store() waits for, log "Received unexpected C-STORE service message" and drop it, so
  the send waits for a timeout): a response taken that way is put back, with the same
  workaround the gateway's own DIMSE sender uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from pipeline.delivery.destinations.dimse import _keep_own_responses as keep_own_responses


def store_files(host: str, port: int, called_aet: str, calling_aet: str,
                paths: Sequence[Path], transfer_syntax: str = ExplicitVRLittleEndian) -> list[int]:
    """C-STORE each file (CT or MR, in ``transfer_syntax``); the status of each."""
    ae = AE(ae_title=calling_aet)
    for sop_class in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(sop_class, transfer_syntax)
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate(host, port, ae_title=called_aet)
    assert assoc.is_established, f"association with {called_aet} refused"
    keep_own_responses(assoc)
    try:
        return [int(assoc.send_c_store(path).Status) for path in paths]
    finally:
        assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = previous
