"""DIMSE messages written straight onto a pynetdicom association, for the hot loops of C-MOVE,
C-GET and C-FIND.

pynetdicom's `send_msg` builds every command set as a pydicom Dataset and encodes it twice
(once for the group length); measured on a C-STORE loop to storescp that was about half of the
sender's CPU per instance, and the same again for every Pending response. A command set is a
handful of fixed group 0000 elements in Implicit VR Little Endian (PS3.7 6.3.1, E.1), so it is
written here by hand; tests compare it byte for byte with pynetdicom's encoding. The data set
goes out as the caller has it (bytes or a file positioned at its start), read one PDU at a time:
never re-encoded, never whole in memory for a file. PDUs still go through the association's
DUL (its state machine, socket, the P-DATA throttle of retrieve.py), and the response still
comes back through pynetdicom's DIMSE layer.
"""

from __future__ import annotations

import select
import ssl
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator

from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_GET_RSP = 0x8010
C_FIND_RSP = 0x8020
C_MOVE_RSP = 0x8021
NO_DATA_SET = 0x0101
DATA_SET = 0x0001
PRIORITY_LOW = 0x0002  # what pynetdicom's send_c_store sends

# (element number in group 0000, VR) of the command fields used here, in tag order.
_FIELDS = {
    "AffectedSOPClassUID": (0x0002, "UI"),
    "CommandField": (0x0100, "US"),
    "MessageID": (0x0110, "US"),
    "MessageIDBeingRespondedTo": (0x0120, "US"),
    "Priority": (0x0700, "US"),
    "CommandDataSetType": (0x0800, "US"),
    "Status": (0x0900, "US"),
    "ErrorComment": (0x0902, "LO"),
    "AffectedSOPInstanceUID": (0x1000, "UI"),
    "NumberOfRemainingSuboperations": (0x1020, "US"),
    "NumberOfCompletedSuboperations": (0x1021, "US"),
    "NumberOfFailedSuboperations": (0x1022, "US"),
    "NumberOfWarningSuboperations": (0x1023, "US"),
    "MoveOriginatorApplicationEntityTitle": (0x1030, "AE"),
    "MoveOriginatorMessageID": (0x1031, "US"),
}


def command_set(**values: Any) -> bytes:
    """A command set (Implicit VR Little Endian, group length first); None values are left out."""
    body = bytearray()
    for keyword, (element, vr) in sorted(_FIELDS.items(), key=lambda item: item[1][0]):
        value = values.pop(keyword, None)
        if value is None:
            continue
        if vr == "US":
            raw = struct.pack("<H", value)
        else:
            raw = str(value).encode("ascii")
            if len(raw) % 2:
                raw += b"\0" if vr == "UI" else b" "
        body += struct.pack("<HHI", 0x0000, element, len(raw)) + raw
    if values:
        raise ValueError(f"no such command field here: {sorted(values)}")
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + bytes(body)


def response_command(
    command_field: int,
    sop_class_uid: str,
    message_id: int,
    status: int,
    error_comment: str | None = None,
    *,
    data_set: bool = False,
    **fields: Any,
) -> bytes:
    """The command set of a response to request `message_id` (C-STORE, C-FIND, C-MOVE, C-GET),
    with any further fields (the sub-operation counts)."""
    return command_set(
        AffectedSOPClassUID=sop_class_uid,
        CommandField=command_field,
        MessageIDBeingRespondedTo=message_id,
        CommandDataSetType=DATA_SET if data_set else NO_DATA_SET,
        Status=status,
        ErrorComment=error_comment or None,
        **fields,
    )


def send(assoc: Any, context_id: int, command: bytes, data_set: bytes | BinaryIO | None = None) -> None:
    """Send one DIMSE message on `assoc`: the command set, then the data set (bytes, or a file
    read from its current position to its end) in P-DATA fragments the peer's PDU size allows."""
    fragment = _fragment_size(assoc)
    pdvs = _pdvs(command, data_set, fragment)
    sock = _plain_socket(assoc)
    if sock is None:
        for header, data in pdvs:
            pdata = P_DATA()
            pdata.presentation_data_value_list.append((context_id, bytes((header,)) + data))
            assoc.dul.send_pdu(pdata)
        return
    _write_pdus(assoc, sock, context_id, pdvs)


def store_response(primitive: C_STORE) -> bytes | None:
    """The command set of a C-STORE response primitive, or None if it has a field written
    only by pynetdicom (OffendingElement) or an Error Comment that is not plain ASCII."""
    if primitive.OffendingElement is not None:
        return None
    try:
        return response_command(
            C_STORE_RSP,
            primitive.AffectedSOPClassUID,
            primitive.MessageIDBeingRespondedTo,
            primitive.Status,
            primitive.ErrorComment,
            AffectedSOPInstanceUID=primitive.AffectedSOPInstanceUID,
        )
    except UnicodeEncodeError:
        return None


_pynetdicom_send_msg = DIMSEServiceProvider.send_msg


def _send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    """pynetdicom's send_msg, but a C-STORE response (the one message the import path sends per
    instance) is encoded by hand and written at once. (Skipped for it: EVT_DIMSE_SENT, which
    only pynetdicom's DEBUG logging listens to here.)"""
    if type(primitive) is C_STORE and primitive.MessageIDBeingRespondedTo is not None:
        command = store_response(primitive)
        if command is not None:
            send(self.assoc, context_id, command)
            return
    _pynetdicom_send_msg(self, primitive, context_id)


def install_fast_store_responses() -> None:
    """Answer C-STOREs through `_send_msg` (idempotent): measured, a tenth of the edge's CPU per
    instance went into pynetdicom encoding each response with pydicom."""
    DIMSEServiceProvider.send_msg = _send_msg  # type: ignore[method-assign]


@contextmanager
def paused(assoc: Any) -> Iterator[None]:
    """Keep the association's reactor paused, so that only we take messages off it, for a whole
    series of requests: pausing it around each one (as pynetdicom's send_c_store does) races
    with the reactor waking from the previous pause, and it then takes a fast response as an
    unexpected message. Inside an SCP handler the reactor is already paused (it runs us).

    On a plain TCP association that we requested, the responses are also read by us rather than
    by the DUL reactor (see _read_response); the DUL gets its socket back on the way out."""
    assoc._reactor_checkpoint.clear()
    reading = assoc.is_requestor and _plain_socket(assoc) is not None
    try:
        for _ in range(2):  # the second look lets a reactor that had just passed the checkpoint come round
            while not assoc._is_paused and assoc.is_established:
                time.sleep(0.0001)
            time.sleep(0.001)
        if reading:
            assoc.dul._is_transport_event = lambda: False  # the DUL reactor leaves the socket to us
            assoc.dul.reading_suspended = True  # (reactor_waits then waits on its wake-up pipe only)
        yield
    finally:
        if reading:
            del assoc.dul._is_transport_event
            assoc.dul.reading_suspended = False
        assoc._reactor_checkpoint.set()


def send_and_wait(
    assoc: Any, context_id: int, command: bytes, data_set: bytes | BinaryIO, meanwhile: Callable[[], None] | None = None
) -> Any:
    """Send a request and wait for its response, the reactor held `paused`; the response (its
    Status and ErrorComment), or None on a DIMSE timeout (the association is then aborted) or
    when the peer answered with something else (an abort, a release: handed to the DUL).
    `meanwhile` runs once the request is written, before the response is read: work that the
    peer's time to answer hides."""
    send(assoc, context_id, command, data_set)
    if meanwhile is not None:
        meanwhile()
    if getattr(assoc.dul, "reading_suspended", False):
        return _read_response(assoc)
    _, response = assoc.dimse.get_msg(block=True)
    if response is None:
        assoc._handle_no_response()
    return response


@dataclass(frozen=True)
class Response:
    Status: int | None
    ErrorComment: str = ""


def _read_response(assoc: Any) -> Response | None:
    """The response to our request, read from the socket by this thread: pynetdicom's way
    (its reactor reading the PDU, the DIMSE layer decoding the command set with pydicom, a
    queue and a thread switch) took a third of a millisecond of each C-STORE's round trip.
    Only the command set is read (a C-STORE response has no data set)."""
    sock = assoc.dul.socket.socket
    timeout = assoc.dimse_timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    command = bytearray()
    while True:
        pdu = _receive_pdu(sock, deadline)
        if pdu is None or pdu[0] != 0x04:
            _give_up(assoc, pdu)
            return None
        assoc.dul._idle_timer.restart()  # as the DUL does for what it reads (network timeout)
        offset = 6
        while offset < len(pdu):
            (length,) = struct.unpack_from(">I", pdu, offset)
            header = pdu[offset + 5]
            if header & 0x01:
                command += pdu[offset + 6 : offset + 4 + length]
                if header & 0x02:
                    return _parse_response(bytes(command))
            offset += 4 + length


def _give_up(assoc: Any, pdu: bytes | None) -> None:
    """No response will come: hand the DUL what came instead (an A-ABORT, an A-RELEASE-RQ) or
    the closed connection (Evt17; also after a DIMSE timeout, where pynetdicom aborts), and
    mark the association as no longer usable, as pynetdicom's DUL does when its socket fails."""
    if pdu is None:
        assoc.dul.event_queue.put("Evt17")
    else:
        decoded, event = assoc.dul._decode_pdu(bytearray(pdu))
        assoc.dul.event_queue.put(event)
        assoc.dul._recv_pdu.put(decoded)
    assoc.is_aborted = pdu is None or pdu[0] == 0x07
    assoc.is_established = False


def _receive_pdu(sock: Any, deadline: float | None) -> bytes | None:
    head = _receive_exactly(sock, 6, deadline)
    if head is None:
        return None
    body = _receive_exactly(sock, struct.unpack_from(">I", head, 2)[0], deadline)
    return None if body is None else head + body


def _receive_exactly(sock: Any, size: int, deadline: float | None) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not select.select([sock], [], [], wait)[0]:
            return None
        try:
            piece = sock.recv(size - len(data))
        except OSError:
            return None
        if not piece:
            return None
        data += piece
    return bytes(data)


def _parse_response(command: bytes) -> Response:
    """Status and Error Comment of a command set (Implicit VR Little Endian)."""
    status, comment, offset = None, "", 0
    while offset + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHI", command, offset)
        value = command[offset + 8 : offset + 8 + length]
        if group == 0x0000 and element == 0x0900 and length == 2:
            (status,) = struct.unpack("<H", value)
        elif group == 0x0000 and element == 0x0902:
            comment = value.decode("ascii", "replace").strip(" \0")
        offset += 8 + length
    return Response(status, comment)


def _fragment_size(assoc: Any) -> int:
    """Bytes of message per PDV: the peer's maximum PDU length less the PDV headers (0: any)."""
    maximum = assoc.dimse.maximum_pdu_size
    return maximum - 6 if maximum else 1 << 20


def _pdvs(command: bytes, data_set: bytes | BinaryIO | None, size: int) -> Iterator[tuple[int, bytes]]:
    """(message control header, fragment) of each PDV of a message (PS3.8 E.2): bit 0 command,
    bit 1 last fragment of the command or of the data set."""
    yield from _flagged(0x01, _pieces(command, size))
    if data_set is not None:
        yield from _flagged(0x00, _pieces(data_set, size))


def _flagged(kind: int, pieces: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
    previous = next(pieces, b"")
    for piece in pieces:
        yield kind, previous
        previous = piece
    yield kind | 0x02, previous


def _pieces(source: bytes | BinaryIO, size: int) -> Iterator[bytes]:
    if isinstance(source, (bytes, bytearray)):
        view = memoryview(source)
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])
        return
    while piece := source.read(size):
        yield piece


def _plain_socket(assoc: Any) -> Any:
    """The association's TCP socket when we may write P-DATA-TF PDUs to it ourselves: not TLS
    (an SSL connection must not be written by one thread while another reads it) and
    established (Sta6, where sending P-DATA changes no state of the DUL's state machine)."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is None or isinstance(sock, ssl.SSLSocket) or assoc.dul.state_machine.current_state != "Sta6":
        return None
    return sock


WRITE_BATCH = 1 << 18  # bytes of PDUs per socket write


def _write_pdus(assoc: Any, sock: Any, context_id: int, pdvs: Iterator[tuple[int, bytes]]) -> None:
    """P-DATA-TF PDUs of one PDV each (PS3.8 9.3.5), written in few system calls instead of
    one DUL reactor round per PDU (a third of a millisecond per C-STORE of 70 KB). The socket
    blocks when the peer is slow: memory stays at one batch. A broken connection is handed to
    the DUL as pynetdicom's own send does (Evt17) and raised."""
    batch: list[bytes] = []
    size = 0
    try:
        for header, data in pdvs:
            batch.append(struct.pack(">BBIIBB", 0x04, 0x00, len(data) + 6, len(data) + 2, context_id, header) + data)
            size += len(batch[-1])
            if size >= WRITE_BATCH:
                sock.sendall(b"".join(batch))
                batch, size = [], 0
        if batch:
            sock.sendall(b"".join(batch))
    except OSError:
        assoc.dul.event_queue.put("Evt17")
        raise
