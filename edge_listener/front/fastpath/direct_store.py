"""C-STORE requests received and answered in the association's network thread.

pynetdicom hands each P-DATA PDU to its DIMSE layer in the network (DUL) thread, which gathers
the message, decodes its command set with pydicom and builds a primitive; the association
thread, polling a queue, then takes it through its service class and event machinery to the
EVT_C_STORE handler, and queues the response back to the network thread. For the one message
the import path receives per instance, a C-STORE request on an accepted context, this module
does the same work where the bytes arrive: it reads the command set (a few group 0000
elements in Implicit VR Little Endian, PS3.7 E.1), streams the data set's fragments into the
reception file behind the adapter's file meta, runs the same store function as the
EVT_C_STORE handler (store.store_received: checks, buffer, log) and writes the response
(wire). Measured on one association of 70 KB instances (bench/import_bench.py, see
docs/benchmarks.md): the relay was about a third of the listener's CPU per instance.

Every other message (C-ECHO, C-FIND, C-MOVE, C-GET, N-ACTION, C-CANCEL, responses), and any
C-STORE request this module is not sure of (an unknown context, a command set it cannot
read, a SOP class other than its context's, no data set), goes to pynetdicom in its original
PDUs, so that pynetdicom's behaviour there is unchanged.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import Any

from dicom_adapter.logs import fields
from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.pdu_primitives import P_DATA

from . import wire
from edge_listener.services.statuses import SUCCESS, error_comment
from edge_listener.buffer.reception import ReceptionFile, new_reception
from edge_listener.services.store import StoreService, handle_store, store_received

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 1 << 16  # a command set is ~200 bytes; beyond this pynetdicom decides
_COMMAND_FIELD, _MESSAGE_ID, _DATA_SET_TYPE = 0x0100, 0x0110, 0x0800
_SOP_CLASS, _SOP_INSTANCE = 0x0002, 0x1000

_pynetdicom_receive_primitive = DIMSEServiceProvider.receive_primitive


@dataclass
class _Request:
    """A C-STORE request whose data set is arriving."""

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    reception: ReceptionFile


@dataclass
class _DirectStore:
    """One association's receiving state: the PDUs of a command set not yet complete, or the
    request whose data set is arriving."""

    service: StoreService
    command_pdus: list[P_DATA] = field(default_factory=list)
    command: bytearray = field(default_factory=bytearray)
    command_context: int | None = None
    request: _Request | None = None
    broken: bool = False  # after a protocol error: everything is pynetdicom's

    def take(self, provider: DIMSEServiceProvider, primitive: P_DATA) -> None:
        items = primitive.presentation_data_value_list
        start = 0
        if self.request is None:
            self.command_pdus.append(primitive)
            for index, (context_id, data) in enumerate(items):
                if not data or not data[0] & 0x01 or self.command_context not in (None, context_id):
                    return self._hand_over(provider)
                self.command_context = context_id
                self.command += data[1:]
                if len(self.command) > MAX_COMMAND_BYTES:
                    return self._hand_over(provider)
                if data[0] & 0x02:
                    break
            else:
                return  # the command set goes on in the next PDU
            self.request = _start(provider.assoc, self.command_context, bytes(self.command))
            if self.request is None:
                return self._hand_over(provider)
            self._forget_command()
            start = index + 1
        request = self.request
        for index in range(start, len(items)):
            context_id, data = items[index]
            if not data or data[0] & 0x01 or context_id != request.context_id:
                return self._protocol_error(provider, "a C-STORE data set was interrupted by another message")
            request.reception.write(memoryview(data)[1:])
            if data[0] & 0x02:
                self.request = None
                _answer(provider.assoc, request, self.service)
                if index + 1 < len(items):  # (another message in the same PDU)
                    rest = P_DATA()
                    rest.presentation_data_value_list = items[index + 1 :]
                    _receive_primitive(provider, rest)
                return

    def _hand_over(self, provider: DIMSEServiceProvider) -> None:
        """Give pynetdicom the message's PDUs as they came."""
        pdus = self.command_pdus
        self._forget_command()
        for pdu in pdus:
            _pynetdicom_receive_primitive(provider, pdu)

    def _forget_command(self) -> None:
        self.command_pdus = []
        self.command = bytearray()
        self.command_context = None

    def _protocol_error(self, provider: DIMSEServiceProvider, reason: str) -> None:
        """Abort the association (A-ABORT, as pynetdicom does for an invalid PDU) and drop the
        partial data set: nobody was acknowledged for it."""
        assoc = provider.assoc
        log.warning("aborting association: protocol error", extra=fields(calling_aet=assoc.requestor.ae_title, reason=reason))
        self.discard_partial()
        self.broken = True
        provider.dul.event_queue.put("Evt19")

    def discard_partial(self) -> bool:
        """Remove the file of a data set that will not be completed; True if there was one."""
        request, self.request = self.request, None
        if request is None:
            return False
        request.reception.remove()
        return True


def _receive_primitive(provider: DIMSEServiceProvider, primitive: P_DATA) -> None:
    """DIMSEServiceProvider.receive_primitive: C-STORE requests here, the rest to pynetdicom."""
    direct = _direct_store_of(provider)
    if direct is None or direct.broken or (provider.message is not None and direct.request is None and not direct.command_pdus):
        _pynetdicom_receive_primitive(provider, primitive)  # (pynetdicom is in the middle of a message)
        return
    direct.take(provider, primitive)


def _direct_store_of(provider: DIMSEServiceProvider) -> _DirectStore | None:
    """The association's state, if its C-STOREs are the adapter's: an association a peer
    requested from our listener, whose EVT_C_STORE handler is store.handle_store."""
    direct = getattr(provider, "_direct_store", None)
    if direct is None:
        direct = False
        assoc = provider.assoc
        if assoc.is_acceptor:
            handler, args = assoc.get_handlers(evt.EVT_C_STORE) or (None, None)
            if handler is handle_store and args and isinstance(args[0], StoreService):
                direct = _DirectStore(args[0])
        provider._direct_store = direct  # type: ignore[attr-defined]
    return direct or None


def _start(assoc: Any, context_id: int | None, command: bytes) -> _Request | None:
    """The C-STORE request of this command set with its reception file begun, or None if the
    message is not one this module takes."""
    elements = _command_elements(command)
    if elements is None or _us(elements.get(_COMMAND_FIELD)) != wire.C_STORE_RQ:
        return None
    message_id = _us(elements.get(_MESSAGE_ID))
    data_set_type = _us(elements.get(_DATA_SET_TYPE))
    sop_class_uid = _ui(elements.get(_SOP_CLASS))
    sop_instance_uid = _ui(elements.get(_SOP_INSTANCE))
    context = assoc._accepted_cx.get(context_id)
    if (
        message_id is None
        or data_set_type in (None, wire.NO_DATA_SET)
        or not sop_class_uid
        or not sop_instance_uid
        or context is None
        or context.abstract_syntax != sop_class_uid
        or not _open_for_data(assoc)
    ):
        return None
    transfer_syntax_uid = str(context.transfer_syntax[0])
    reception = new_reception(assoc)
    reception.write_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax_uid)
    return _Request(context_id, message_id, sop_class_uid, sop_instance_uid, transfer_syntax_uid, reception)  # type: ignore[arg-type]


def _answer(assoc: Any, request: _Request, service: StoreService) -> None:
    """Store the complete data set and send the C-STORE response."""
    idle_timer = assoc.dul._idle_timer
    idle_timer.restart()
    idle_timer.stop()  # the association thread must not time the peer out while we store (a GCS upload)
    try:
        code, comment = store_received(
            request.reception,
            service,
            sop_class_uid=request.sop_class_uid,
            sop_instance_uid=request.sop_instance_uid,
            transfer_syntax_uid=request.transfer_syntax_uid,
            calling_aet=assoc.requestor.ae_title,
            called_aet=assoc.acceptor.ae_title,
        )
    finally:
        request.reception.remove()  # gone into the buffer, or refused: either way not ours any more
        idle_timer.restart()
    if not _open_for_data(assoc):  # aborted meanwhile: nobody to answer (as pynetdicom does)
        return
    comment = error_comment(comment).encode("ascii", "replace").decode("ascii") if code != SUCCESS else None
    response = wire.response_command(
        wire.C_STORE_RSP,
        request.sop_class_uid,
        request.message_id,
        code,
        comment,
        AffectedSOPInstanceUID=request.sop_instance_uid,
    )
    try:
        wire.send(assoc, request.context_id, response)
    except OSError:  # the connection broke (handed to the DUL); the sender will send it again
        log.warning("C-STORE response not delivered: connection lost", extra=fields(sop_instance_uid=request.sop_instance_uid, calling_aet=assoc.requestor.ae_title))


def _open_for_data(assoc: Any) -> bool:
    """Whether the association carries DIMSE messages: its DUL is in Sta6 and nobody has
    aborted or begun releasing it. (Not `is_established`: pynetdicom sets that only after its
    EVT_ACCEPTED handlers have run, and a fast peer's first C-STORE can arrive before.)"""
    return assoc.dul.state_machine.current_state == "Sta6" and not assoc.is_aborted and not assoc._sent_release


def _command_elements(command: bytes) -> dict[int, bytes] | None:
    """Group 0000 elements of a command set (Implicit VR Little Endian) by element number, or
    None if it is not a well-formed one."""
    elements: dict[int, bytes] = {}
    offset = 0
    while offset < len(command):
        if offset + 8 > len(command):
            return None
        group, element, length = struct.unpack_from("<HHI", command, offset)
        end = offset + 8 + length
        if group != 0x0000 or end > len(command):
            return None
        elements[element] = command[offset + 8 : end]
        offset = end
    return elements


def _us(raw: bytes | None) -> int | None:
    return struct.unpack("<H", raw)[0] if raw is not None and len(raw) == 2 else None


def _ui(raw: bytes | None) -> str:
    if not raw:
        return ""
    try:
        return raw.decode("ascii").rstrip("\0 ")
    except UnicodeDecodeError:
        return ""


def discard_partial(assoc: Any) -> bool:
    """On connection close: remove the file of a C-STORE data set this module was receiving."""
    direct = getattr(getattr(assoc, "dimse", None), "_direct_store", None)
    return bool(direct) and direct.discard_partial()


def install() -> None:
    """Receive C-STOREs here (idempotent)."""
    DIMSEServiceProvider.receive_primitive = _receive_primitive  # type: ignore[method-assign]
