"""The STOW-RS and C-STORE senders against a real Orthanc (1.10 + DICOMweb plugin 1.7).

Each test builds its own study (fresh UIDs) from pydicom's shipped sample files, so the
session-wide Orthanc never needs clearing and other tests' instances never interfere.
"""

from __future__ import annotations

import socket
import struct
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from pipeline.delivery.destinations import (
    InstanceOutcome,
    OutgoingInstance,
    TransientDestinationError,
    make_sender,
)

pytestmark = pytest.mark.integration

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

# Three transfer syntaxes Orthanc accepts both ways: explicit VR LE, implicit VR LE, RLE.
GOOD = ("CT_small.dcm", "MR_small_implicit.dcm", "SC_rgb_rle.dcm")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def file_instance(path: Path) -> OutgoingInstance:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return OutgoingInstance(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        size=path.stat().st_size,
        open=lambda: open(path, "rb"),
    )


def restudied(name: str, study_uid: str, folder: Path, new_series: bool = True) -> Path:
    """A copy of a sample file moved into `study_uid` with a new SOPInstanceUID (and by default
    a new SeriesInstanceUID), in the sample's own transfer syntax."""
    ds = pydicom.dcmread(TEST_FILES / name)
    ds.StudyInstanceUID = study_uid
    if new_series:
        ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    target = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(target, enforce_file_format=True)
    return target


def make_study(folder: Path, names: tuple[str, ...] = GOOD) -> tuple[str, list[Path]]:
    study_uid = generate_uid()
    return study_uid, [restudied(name, study_uid, folder) for name in names]


def split_part10(data: bytes) -> tuple[str, bytes]:
    """(TransferSyntaxUID, data set bytes) of a Part-10 file; the meta group is always
    explicit VR little endian, and every meta element this walks has a 2- or 4-byte length."""
    assert data[128:132] == b"DICM"
    offset, syntax = 132, ""
    while offset < len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = struct.unpack_from("<I", data, offset + 8)[0]
            start = offset + 12
        else:
            length = struct.unpack_from("<H", data, offset + 6)[0]
            start = offset + 8
        if element == 0x0010:
            syntax = data[start : start + length].rstrip(b"\x00 ").decode("ascii")
        offset = start + length
    return syntax, data[offset:]


def inflate(data: bytes) -> bytes:
    stream = zlib.decompressobj(-zlib.MAX_WBITS)
    return stream.decompress(data) + stream.flush()


def outcomes_by_uid(outcomes: list[InstanceOutcome]) -> dict[str, InstanceOutcome]:
    return {o.sop_instance_uid: o for o in outcomes}


@pytest.fixture
def stow(orthanc):
    sender = make_sender("stowrs", {"url": orthanc.dicomweb_url}, timeout=60, batch_size=40)
    yield sender
    sender.close()


@pytest.fixture
def dimse(orthanc):
    sender = make_sender(
        "dimse", {"aet": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}, timeout=30
    )
    yield sender
    sender.close()


# -- STOW-RS ------------------------------------------------------------------------------------


def test_stow_three_files_arrive_byte_identical(orthanc, stow, tmp_path):
    stow.check()
    study_uid, paths = make_study(tmp_path)
    outcomes = stow.send(study_uid, [file_instance(p) for p in paths])
    assert [o.stored for o in outcomes] == [True, True, True], outcomes
    assert {o.status_code for o in outcomes} == {"200"}
    for path, outcome in zip(paths, outcomes, strict=True):
        assert orthanc.instance_bytes(outcome.sop_instance_uid) == path.read_bytes()


def test_stow_batch_with_refused_parts_reports_each_instance(orthanc, stow, tmp_path):
    study_uid, good = make_study(tmp_path)
    # Unparseable (truncated) samples, sent exactly as shipped: Orthanc lists them nowhere.
    truncated = [TEST_FILES / "rtplan_truncated.dcm", TEST_FILES / "MR_truncated.dcm"]
    # Valid, but from another study than the URL names: Orthanc fails it with 0110.
    _, [stranger] = make_study(tmp_path, ("MR_small.dcm",))
    batch = [file_instance(p) for p in [good[0], truncated[0], good[1], stranger, truncated[1], good[2]]]

    got = outcomes_by_uid(stow.send(study_uid, batch))

    assert len(got) == len(batch)
    for path in good:
        outcome = got[file_instance(path).sop_instance_uid]
        # Orthanc answers 400 for the whole batch, yet it stored these.
        assert (outcome.stored, outcome.status_code) == (True, "400"), outcome
        assert orthanc.instance_bytes(outcome.sop_instance_uid) == path.read_bytes()
    for path in truncated:
        outcome = got[file_instance(path).sop_instance_uid]
        assert (outcome.stored, outcome.retryable, outcome.status_code) == (False, False, "400")
        assert "not found by QIDO-RS" in outcome.reason
    stranger_outcome = got[file_instance(stranger).sop_instance_uid]
    assert (stranger_outcome.stored, stranger_outcome.retryable) == (False, False)
    assert stranger_outcome.status_code == "0110"


def test_stow_duplicates_count_as_stored(orthanc, stow, tmp_path):
    study_uid, paths = make_study(tmp_path)
    instances = [file_instance(p) for p in paths]
    first = stow.send(study_uid, instances)
    again = stow.send(study_uid, [*instances, instances[0]])
    assert all(o.stored for o in first)
    assert [o.sop_instance_uid for o in again] == [i.sop_instance_uid for i in [*instances, instances[0]]]
    assert all(o.stored for o in again), again


def test_stow_small_batches(orthanc, tmp_path):
    study_uid, paths = make_study(tmp_path)
    with make_sender("stowrs", {"url": orthanc.dicomweb_url}, batch_size=2) as sender:
        outcomes = sender.send(study_uid, [file_instance(p) for p in paths])
    assert all(o.stored for o in outcomes)
    assert {file_instance(p).sop_instance_uid for p in paths} <= orthanc.instance_uids()


def test_stow_connection_refused_is_transient(tmp_path):
    study_uid, paths = make_study(tmp_path, ("CT_small.dcm",))
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with make_sender("stowrs", {"url": url}) as sender:
        with pytest.raises(TransientDestinationError):
            sender.check()
        with pytest.raises(TransientDestinationError):
            sender.send(study_uid, [file_instance(paths[0])])


# -- DIMSE C-STORE ------------------------------------------------------------------------------


def test_cstore_arrives_byte_identical_in_its_own_transfer_syntax(orthanc, dimse, tmp_path):
    dimse.check()  # C-ECHO
    study_uid, paths = make_study(tmp_path)
    outcomes = dimse.send(study_uid, [file_instance(p) for p in paths])
    assert [(o.stored, o.status_code) for o in outcomes] == [(True, "0000")] * 3, outcomes
    for path, outcome in zip(paths, outcomes, strict=True):
        # Orthanc writes its own file meta (its implementation UID, our calling AET), so the
        # comparison is of the transfer syntax and the data set bytes.
        sent_syntax, sent = split_part10(path.read_bytes())
        stored_syntax, stored = split_part10(orthanc.instance_bytes(outcome.sop_instance_uid))
        assert stored_syntax == sent_syntax
        assert stored == sent


def test_cstore_from_a_stream_without_a_path(orthanc, dimse, tmp_path):
    # S3 bodies are not files: the sender spools them and still sends them unchanged.
    study_uid, [path] = make_study(tmp_path, ("SC_rgb_rle.dcm",))
    data = path.read_bytes()
    from_file = file_instance(path)
    streamed = OutgoingInstance(
        from_file.sop_instance_uid, from_file.sop_class_uid, None, len(data), lambda: _Body(data)
    )
    [outcome] = dimse.send(study_uid, [streamed])
    assert outcome.stored
    assert split_part10(orthanc.instance_bytes(outcome.sop_instance_uid))[1] == split_part10(data)[1]


def test_cstore_refusals_and_duplicates(orthanc, dimse, tmp_path):
    study_uid, [good] = make_study(tmp_path, ("CT_small.dcm",))
    # A SOP class Orthanc does not know: its presentation context is rejected.
    ds = pydicom.dcmread(good)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.8.498.4242"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    unknown_class = tmp_path / "unknown-class.dcm"
    ds.save_as(unknown_class, enforce_file_format=True)
    # Odd length: refused locally instead of stalling the SCP until its timeout.
    truncated = TEST_FILES / "rtplan_truncated.dcm"
    instances = [file_instance(p) for p in (good, unknown_class, truncated)]

    outcomes = dimse.send(study_uid, instances)

    assert [(o.stored, o.status_code, o.retryable) for o in outcomes] == [
        (True, "0000", False),
        (False, "0122", False),
        (False, None, False),
    ]
    assert "odd-length" in outcomes[2].reason
    [again] = dimse.send(study_uid, instances[:1])
    assert again.stored


def test_cstore_pads_an_odd_deflated_data_set(orthanc, dimse, tmp_path):
    # image_dfl.dcm's deflated stream lacks the pad byte PS3.5 A.5 requires; Orthanc stores the
    # deflated data set re-encoded, so the comparison is of the inflated content.
    study_uid, [path] = make_study(tmp_path, ("CT_small.dcm",))
    sample = TEST_FILES / "image_dfl.dcm"
    orthanc_had_it = file_instance(sample).sop_instance_uid in orthanc.instance_uids()
    [outcome] = dimse.send(study_uid, [file_instance(sample)])
    assert outcome.stored, outcome
    if not orthanc_had_it:
        sent_syntax, sent = split_part10(sample.read_bytes())
        stored_syntax, stored = split_part10(orthanc.instance_bytes(outcome.sop_instance_uid))
        assert stored_syntax == sent_syntax == "1.2.840.10008.1.2.1.99"
        assert inflate(stored) == inflate(sent)


def test_cstore_socket_has_nagle_off(orthanc):
    from pynetdicom import build_context
    from pynetdicom.sop_class import Verification

    from pipeline.delivery.destinations.dimse import _NoDelayAE

    assoc = _NoDelayAE(ae_title="RELAYPACS").associate(
        "127.0.0.1", orthanc.dicom_port, [build_context(Verification)], ae_title=orthanc.aet
    )
    try:
        assert assoc.is_established
        sock = assoc.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        assoc.release()


def test_cstore_connection_refused_is_transient(tmp_path):
    study_uid, [path] = make_study(tmp_path, ("CT_small.dcm",))
    sender = make_sender("dimse", {"aet": "NOBODY", "host": "127.0.0.1", "port": free_port()}, timeout=5)
    with pytest.raises(TransientDestinationError):
        sender.check()
    with pytest.raises(TransientDestinationError):
        sender.send(study_uid, [file_instance(path)])


class _Body:
    """A non-file readable, like a botocore StreamingBody."""

    def __init__(self, data: bytes) -> None:
        self._data, self._offset = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size is None or size < 0 else self._offset + size
        chunk, self._offset = self._data[self._offset : end], min(end, len(self._data))
        return chunk

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


def test_cstore_splits_more_than_128_contexts_over_associations(orthanc, dimse, tmp_path):
    study_uid, [good] = make_study(tmp_path, ("CT_small.dcm",))
    real = file_instance(good)
    # 129 distinct SOP classes Orthanc does not know, plus one it does: 130 contexts.
    unknown = [
        OutgoingInstance(
            generate_uid(), f"1.2.826.0.1.3680043.8.498.4242.{n}", real.transfer_syntax_uid, 0, real.open
        )
        for n in range(129)
    ]
    outcomes = outcomes_by_uid(dimse.send(study_uid, [*unknown, real]))
    assert outcomes[real.sop_instance_uid].stored
    assert {outcomes[i.sop_instance_uid].status_code for i in unknown} == {"0122"}


def test_cstore_keeps_one_association_across_sends(orthanc, dimse, tmp_path):
    study_uid, paths = make_study(tmp_path, ("CT_small.dcm",) * 3)
    instances = [file_instance(p) for p in paths]
    [first] = dimse.send(study_uid, instances[:1])
    association = dimse._open.assoc
    rest = dimse.send(study_uid, instances[1:])
    assert first.stored and all(o.stored for o in rest), rest
    assert dimse._open.assoc is association and association.is_established
    # A pair (SOP class, transfer syntax) the open association did not negotiate: a new one.
    _, [mr] = make_study(tmp_path, ("MR_small_implicit.dcm",))
    [other] = dimse.send(study_uid, [file_instance(mr)])
    assert other.stored
    assert dimse._open.assoc is not association and not association.is_established
    kept = dimse._open.assoc
    dimse.close()
    assert dimse._open is None and not kept.is_established
    assert {i.sop_instance_uid for i in instances} <= orthanc.instance_uids()


def test_cstore_kept_association_outlived_by_an_scp_restart(tmp_path):
    # A private Orthanc, since this one is stopped with the sender's association still open.
    from tests.integration.services import Orthanc

    pacs = Orthanc(tmp_path / "pacs").start()
    try:
        study_uid, paths = make_study(tmp_path)
        instances = [file_instance(p) for p in paths]
        sender = make_sender("dimse", {"aet": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port},
                             timeout=10)
        assert sender.send(study_uid, instances[:1])[0].stored
        pacs.stop()
        with pytest.raises(TransientDestinationError):
            sender.send(study_uid, instances[1:2])
        pacs.start()
        outcomes = sender.send(study_uid, instances[1:])
        sender.close()
        assert all(o.stored for o in outcomes), outcomes
        assert pacs.instance_uids() == {i.sop_instance_uid for i in instances}
    finally:
        pacs.stop()
