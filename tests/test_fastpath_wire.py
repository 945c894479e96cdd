"""The hand-written DIMSE command sets (edge_listener/front/fastpath/wire.py) equal pynetdicom's own
encoding of the same message, byte for byte."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_FIND_RSP, C_GET_RSP, C_MOVE_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode

from edge_listener.front.fastpath import wire

CT = "1.2.840.10008.5.1.4.1.1.2"
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


def pynetdicom_bytes(message_class, primitive) -> bytes:
    message = message_class()
    message.primitive_to_message(primitive)
    return encode(message.command_set, True, True)


@pytest.mark.parametrize("originator", [None, "MOVESCU"])
@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.3.45"])  # odd and even lengths
def test_store_request(originator, instance):
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = instance
    primitive.Priority = 2
    primitive.DataSet = BytesIO(b"\x08\x00")
    if originator:
        primitive.MoveOriginatorApplicationEntityTitle = originator
        primitive.MoveOriginatorMessageID = 3
    ours = wire.command_set(
        AffectedSOPClassUID=CT, CommandField=wire.C_STORE_RQ, MessageID=7, Priority=2,
        CommandDataSetType=wire.DATA_SET, AffectedSOPInstanceUID=instance,
        MoveOriginatorApplicationEntityTitle=originator, MoveOriginatorMessageID=3 if originator else None,
    )
    assert ours == pynetdicom_bytes(C_STORE_RQ, primitive)


@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.3.45"])
@pytest.mark.parametrize(("status", "comment"), [(0x0000, None), (0xA700, "spool disk full"), (0xC000, "malformed data set: odd")])
def test_store_response(instance, status, comment):
    """What the edge answers each C-STORE with (install_fast_store_responses)."""
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 9
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = instance
    primitive.Status = status
    if comment:
        primitive.ErrorComment = comment
    assert wire.store_response(primitive) == pynetdicom_bytes(C_STORE_RSP, primitive)


def test_store_response_with_fields_only_pynetdicom_writes_is_left_to_it():
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 9
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = "1.2.3"
    primitive.Status = 0xC000
    primitive.OffendingElement = [0x00100010]
    assert wire.store_response(primitive) is None
    primitive.OffendingElement = None
    primitive.ErrorComment = "Jürgen"  # not ASCII: pynetdicom's encoder decides
    assert wire.store_response(primitive) is None


@pytest.mark.parametrize(("primitive_class", "message_class", "field"), [
    (C_MOVE, C_MOVE_RSP, wire.C_MOVE_RSP), (C_GET, C_GET_RSP, wire.C_GET_RSP),
])
@pytest.mark.parametrize("comment", [None, "odd comment", "even comment"])
def test_retrieve_responses(primitive_class, message_class, field, comment):
    primitive = primitive_class()
    primitive.MessageIDBeingRespondedTo = 5
    primitive.AffectedSOPClassUID = MOVE
    primitive.Status = 0xFF00
    if comment:
        primitive.ErrorComment = comment
    primitive.NumberOfRemainingSuboperations = 499
    primitive.NumberOfCompletedSuboperations = 1
    primitive.NumberOfFailedSuboperations = 0
    primitive.NumberOfWarningSuboperations = 0
    ours = wire.command_set(
        AffectedSOPClassUID=MOVE, CommandField=field, MessageIDBeingRespondedTo=5,
        CommandDataSetType=wire.NO_DATA_SET, Status=0xFF00, ErrorComment=comment,
        NumberOfRemainingSuboperations=499, NumberOfCompletedSuboperations=1,
        NumberOfFailedSuboperations=0, NumberOfWarningSuboperations=0,
    )
    assert ours == pynetdicom_bytes(message_class, primitive)


def test_find_pending_response_with_identifier():
    primitive = C_FIND()
    primitive.MessageIDBeingRespondedTo = 9
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    primitive.Status = 0xFF00
    primitive.Identifier = BytesIO(b"\x08\x00\x52\x00")
    ours = wire.command_set(
        AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.1", CommandField=wire.C_FIND_RSP,
        MessageIDBeingRespondedTo=9, CommandDataSetType=wire.DATA_SET, Status=0xFF00,
    )
    assert ours == pynetdicom_bytes(C_FIND_RSP, primitive)


def test_unknown_field_is_refused():
    with pytest.raises(ValueError):
        wire.command_set(Nonsense=1)


# -- responses read by the sending thread ------------------------------------------------------

import queue  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from types import SimpleNamespace  # noqa: E402



def _fake_assoc(sock: socket.socket, dimse_timeout: float = 2.0) -> SimpleNamespace:
    dul = SimpleNamespace(
        socket=SimpleNamespace(socket=sock), event_queue=queue.Queue(), _recv_pdu=queue.Queue(),
        _idle_timer=SimpleNamespace(restart=lambda: None),
        _decode_pdu=lambda data: ("decoded", {0x05: "Evt12", 0x07: "Evt16"}[data[0]]),  # as the DUL's, for these
    )
    return SimpleNamespace(dul=dul, dimse_timeout=dimse_timeout, is_established=True, is_aborted=False)


def _pdata(command: bytes, fragment: int) -> bytes:
    """P-DATA-TF PDUs of one PDV each carrying `command` in fragments of `fragment` bytes."""
    pieces = [command[i : i + fragment] for i in range(0, len(command), fragment)]
    return b"".join(
        struct.pack(">BBIIBB", 4, 0, len(p) + 6, len(p) + 2, 1, 0x01 | (0x02 if i == len(pieces) - 1 else 0)) + p
        for i, p in enumerate(pieces)
    )


def test_a_response_is_read_from_the_socket_in_pieces():
    ours, peer = socket.socketpair()
    command = wire.command_set(
        AffectedSOPClassUID=CT, CommandField=0x8001, MessageIDBeingRespondedTo=3,
        CommandDataSetType=wire.NO_DATA_SET, Status=0xB007, ErrorComment="coerced", AffectedSOPInstanceUID="1.2.3",
    )
    data = _pdata(command, 20)

    def trickle() -> None:
        for i in range(0, len(data), 7):
            peer.sendall(data[i : i + 7])
            time.sleep(0.001)

    threading.Thread(target=trickle).start()
    response = wire._read_response(_fake_assoc(ours))
    assert response == wire.Response(0xB007, "coerced")


def test_an_abort_instead_of_a_response_goes_to_the_dul():
    ours, peer = socket.socketpair()
    peer.sendall(bytes.fromhex("07000000000400000200"))  # A-ABORT-RQ, source: service provider
    assoc = _fake_assoc(ours)
    assert wire._read_response(assoc) is None
    assert assoc.dul.event_queue.get_nowait() == "Evt16"
    assert not assoc.is_established and assoc.is_aborted


def test_no_response_in_time_is_a_closed_connection():
    ours, _peer = socket.socketpair()
    assoc = _fake_assoc(ours, dimse_timeout=0.1)
    assert wire._read_response(assoc) is None
    assert assoc.dul.event_queue.get_nowait() == "Evt17"
    assert not assoc.is_established
