"""DIMSE on a raw socket, for tests that must send what no well-behaved SCU would: trickled,
truncated, oversized or mangled PDUs.

The A-ASSOCIATE-RQ is the one pynetdicom itself sends (captured on a throwaway listener), so
tests start from real bytes and change only what they mean to change.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Sequence

from pynetdicom import AE

from .processes import LOOPBACK

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = range(1, 8)


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def association_request_bytes(calling_aet: str, called_aet: str, abstract_syntaxes: Sequence[str], transfer_syntax: str = "1.2.840.10008.1.2.1") -> bytes:
    """The A-ASSOCIATE-RQ PDU pynetdicom sends for these contexts."""
    captured: list[bytes] = []
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen(1)
        port = server.getsockname()[1]

        def capture() -> None:
            connection, _ = server.accept()
            with connection:
                connection.settimeout(10)
                data = b""
                while len(data) < 6 or len(data) < 6 + struct.unpack(">L", data[2:6])[0]:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                captured.append(data)

        thread = threading.Thread(target=capture, daemon=True)
        thread.start()
        ae = AE(ae_title=calling_aet)
        ae.acse_timeout = ae.network_timeout = 2
        for syntax in abstract_syntaxes:
            ae.add_requested_context(syntax, [transfer_syntax])
        assoc = ae.associate(LOOPBACK, port, ae_title=called_aet)
        assoc.abort()
        thread.join(10)
    return captured[0]


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
