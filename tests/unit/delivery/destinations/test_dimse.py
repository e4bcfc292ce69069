"""The DIMSE sender's hand-encoded C-STORE-RQ and P-DATA-TF against pynetdicom's encodings."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from pipeline.delivery.destinations.dimse_pdu import PRIORITY, c_store_command, p_data_tf, pdvs


def pynetdicom_command(sop_class: str, sop_instance: str, message_id: int) -> bytes:
    request = C_STORE()
    request.MessageID = message_id
    request.Priority = PRIORITY
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_instance
    request._dataset_path = ("unused", 0)  # a data set follows, as in the sender
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return encode(message.command_set, True, True)


@pytest.mark.parametrize("message_id", [1, 2, 0xFFFF])
@pytest.mark.parametrize("sop_instance", [
    "1.2.3",  # odd length: one NUL pad byte
    "1.2.34",  # even length: none
    # One made by pydicom's generate_uid(), written out: a fresh one per collection would give
    # each pytest-xdist worker other test ids, and xdist refuses to run then.
    "1.2.826.0.1.3680043.8.498.96148048970707228318619019582805937417",
    "1." + "2" * 62,  # 64 characters, the longest UID
])
def test_command_set_is_byte_identical_to_pynetdicoms(sop_instance, message_id):
    ours = c_store_command(CTImageStorage, sop_instance, message_id)
    assert ours == pynetdicom_command(CTImageStorage, sop_instance, message_id)


@pytest.mark.parametrize("bad", ["", "1." + "2" * 63, "1.2.\u00e9"])
def test_command_set_refuses_an_unusable_uid(bad):
    with pytest.raises(ValueError):
        c_store_command(CTImageStorage, bad, 1)


def test_pdvs_split_at_the_fragment_size_and_flag_the_last():
    data = bytes(range(250)) * 4  # 1000 bytes
    fragments = list(pdvs(data, 300, b"\x00", b"\x02"))
    assert [len(p) - 1 for p in fragments] == [300, 300, 300, 100]
    assert [p[:1] for p in fragments] == [b"\x00", b"\x00", b"\x00", b"\x02"]
    assert b"".join(p[1:] for p in fragments) == data
    assert list(pdvs(data, 1000, b"\x00", b"\x02")) == [b"\x02" + data]
    assert list(pdvs(data, 0, b"\x01", b"\x03")) == [b"\x03" + data]


@pytest.mark.parametrize("context_id", [1, 3, 255])
@pytest.mark.parametrize("pdv", [b"\x03" + bytes(100), b"\x00" + bytes(range(256)) * 64])
def test_p_data_tf_is_byte_identical_to_pynetdicoms(context_id, pdv):
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((context_id, pdv))
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)
    assert p_data_tf(context_id, pdv) == pdu.encode()
