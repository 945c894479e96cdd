"""DIMSE on a raw socket, for tests that must send what no well-behaved SCU would: trickled,
truncated, oversized or mangled PDUs.

Builders for the PDUs (PS3.8 9.3) so tests start from well-formed bytes and change only what
they mean to change.
"""

from __future__ import annotations

import io
import socket
import struct
import time
from typing import Sequence

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = range(1, 8)


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def item(item_type: int, body: bytes) -> bytes:
    """A variable item of an association PDU (16-bit length)."""
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def association_request_bytes(
    calling_aet: str,
    called_aet: str,
    abstract_syntaxes: Sequence[str],
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    *,
    contexts: Sequence[tuple[int, str, Sequence[str]]] | None = None,
    max_pdu: int = 16384,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2): one context per abstract syntax (IDs 1, 3, ...),
    or exactly the `contexts` given as (id, abstract syntax, transfer syntaxes)."""
    if contexts is None:
        contexts = [(2 * index + 1, syntax, [transfer_syntax]) for index, syntax in enumerate(abstract_syntaxes)]
    presentation = b"".join(
        item(0x20, bytes([context_id & 0xFF, 0, 0, 0]) + item(0x30, abstract.encode()) + b"".join(item(0x40, ts.encode()) for ts in syntaxes))
        for context_id, abstract, syntaxes in contexts
    )
    user = item(0x50, item(0x51, struct.pack(">L", max_pdu)) + item(0x52, b"1.2.826.0.1.3680043.9.3811.0"))
    body = (
        struct.pack(">HH", 1, 0) + called_aet.encode().ljust(16)[:16] + calling_aet.encode().ljust(16)[:16] + b"\0" * 32
        + item(0x10, b"1.2.840.10008.3.1.1.1") + presentation + user
    )
    return pdu(A_ASSOCIATE_RQ, body)


def p_data(context_id: int, control: int, data: bytes) -> bytes:
    """A P-DATA-TF PDU with one PDV (control: bit 0 command, bit 1 last fragment)."""
    return pdu(P_DATA_TF, struct.pack(">LBB", len(data) + 2, context_id, control) + data)


def c_store_pdus(sop_class_uid: str, sop_instance_uid: str, dataset: bytes, context_id: int, max_pdu: int = 16384) -> list[bytes]:
    """The P-DATA-TF PDUs of a C-STORE-RQ carrying `dataset` (encoded as the context's transfer
    syntax), as pynetdicom would put them on the wire."""
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu import P_DATA_TF as PDataPdu

    primitive = C_STORE()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = sop_class_uid
    primitive.AffectedSOPInstanceUID = sop_instance_uid
    primitive.Priority = 2
    primitive.DataSet = io.BytesIO(dataset)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    pdus = []
    for primitive_pdata in message.encode_msg(context_id, max_pdu):
        encoded = PDataPdu()
        encoded.from_primitive(primitive_pdata)
        pdus.append(encoded.encode())
    return pdus


def read_pdu(sock: socket.socket, timeout: float = 10.0) -> tuple[int, bytes] | None:
    """The next PDU (type, body), or None if the peer closed the connection first."""
    sock.settimeout(timeout)
    header = _read_exactly(sock, 6)
    if header is None:
        return None
    pdu_type, _, length = struct.unpack(">BBL", header)
    body = _read_exactly(sock, length)
    return None if body is None else (pdu_type, body)


def _read_exactly(sock: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        try:
            chunk = sock.recv(count - len(data))
        except (ConnectionResetError, BrokenPipeError):
            return None
        if not chunk:
            return None
        data += chunk
    return data


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Read (and drop) whatever comes until the peer closes; the time that took, or None if
    it was still open after `seconds`."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < seconds:
        try:
            if not sock.recv(65536):
                return time.monotonic() - started
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
    return None


def trickle(sock: socket.socket, data: bytes, interval_s: float, until_s: float) -> bool:
    """Send `data` one byte every `interval_s` for at most `until_s`; False once the peer
    has closed the connection (a send fails)."""
    started = time.monotonic()
    for byte in data:
        if time.monotonic() - started > until_s:
            return True
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return False
        time.sleep(interval_s)
    return True
