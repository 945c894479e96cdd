"""The hand-written DIMSE command sets (edge_listener/dimse_wire.py) equal pynetdicom's own
encoding of the same message, byte for byte."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_FIND_RSP, C_GET_RSP, C_MOVE_RSP, C_STORE_RQ
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode

from edge_listener import dimse_wire

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
    ours = dimse_wire.command_set(
        AffectedSOPClassUID=CT, CommandField=dimse_wire.C_STORE_RQ, MessageID=7, Priority=2,
        CommandDataSetType=dimse_wire.DATA_SET, AffectedSOPInstanceUID=instance,
        MoveOriginatorApplicationEntityTitle=originator, MoveOriginatorMessageID=3 if originator else None,
    )
    assert ours == pynetdicom_bytes(C_STORE_RQ, primitive)


@pytest.mark.parametrize(("primitive_class", "message_class", "field"), [
    (C_MOVE, C_MOVE_RSP, dimse_wire.C_MOVE_RSP), (C_GET, C_GET_RSP, dimse_wire.C_GET_RSP),
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
    ours = dimse_wire.command_set(
        AffectedSOPClassUID=MOVE, CommandField=field, MessageIDBeingRespondedTo=5,
        CommandDataSetType=dimse_wire.NO_DATA_SET, Status=0xFF00, ErrorComment=comment,
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
    ours = dimse_wire.command_set(
        AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.1", CommandField=dimse_wire.C_FIND_RSP,
        MessageIDBeingRespondedTo=9, CommandDataSetType=dimse_wire.DATA_SET, Status=0xFF00,
    )
    assert ours == pynetdicom_bytes(C_FIND_RSP, primitive)


def test_unknown_field_is_refused():
    with pytest.raises(ValueError):
        dimse_wire.command_set(Nonsense=1)
