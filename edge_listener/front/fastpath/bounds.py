"""What one peer can make the listener hold: PDU sizes and how long a PDU may take to arrive.

pynetdicom reads each PDU whole into memory, as long as its header claims, and blocks its
association's network thread until the last byte arrives. Unchecked, one connection that
announces a 4 GB PDU, or sends a PDU one byte a minute, takes memory or an association slot
for as long as it likes (pynetdicom's idle timer only runs between PDUs). So every accepted
connection reads through `GuardedAssociationSocket`:
  * a P-DATA-TF longer than the maximum PDU length we announced (plus a little slack for
    peers that count the header), or any other PDU longer than 1 MiB, is answered with an
    A-ABORT (invalid PDU parameter) and the connection is closed;
  * a PDU must arrive whole within the ACSE timeout before the association is established,
    and within the network timeout after; a peer that trickles is cut off when it runs out.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import ssl
import struct
import time
from typing import Any, NoReturn

from dicom_adapter.logs import fields
from pynetdicom.transport import AssociationSocket, RequestHandler

log = logging.getLogger(__name__)

P_DATA_TF = 0x04
_KNOWN_PDU_TYPES = range(0x01, 0x08)
MAX_CONTROL_PDU = 1 << 20  # A-ASSOCIATE-RQ with 128 contexts and user identity fits easily
P_DATA_SLACK = 1024
_TLS_READ = 1 << 16  # SSLSocket.recv(n) allocates n bytes per call, for one TLS record (16 KiB)
# A-ABORT, source: service provider (2), reason: invalid PDU parameter value (6)
_ABORT_INVALID_PDU = b"\x07\x00" + struct.pack(">L", 4) + b"\x00\x00\x02\x06"


class PduRejected(OSError):
    """The PDU was cut off: too long, or not received in time. pynetdicom treats an OSError
    while reading as the transport closing (Evt17): the association ends without a response."""


class GuardedAssociationSocket(AssociationSocket):
    """pynetdicom's socket, reading each PDU against a size limit and a deadline.

    pynetdicom's DUL reads a PDU in two calls, `recv(6)` for the header and `recv(length)` for
    the rest; this class checks the length between them and times both."""

    _pdu: tuple[int, int, float] | None = None  # (type, length, deadline) after a header read

    def recv(self, nr_bytes: int) -> bytearray:
        assoc = self.assoc
        if self._pdu is None:
            limit_s = (assoc.network_timeout if assoc.is_established else assoc.acse_timeout) or 60.0
            deadline = time.monotonic() + limit_s
            data = self._read(nr_bytes, deadline)
            if nr_bytes == 6 and len(data) == 6:
                pdu_type, _, length = struct.unpack(">BBL", data)
                if pdu_type in _KNOWN_PDU_TYPES:  # pynetdicom drops the connection on any other
                    self._pdu = (pdu_type, length, deadline)
            return data
        pdu_type, length, deadline = self._pdu
        self._pdu = None
        allowed = self._max_length(pdu_type)
        if length > allowed:
            log.warning(
                "PDU longer than allowed: aborting the association",
                extra=fields(peer=self._peer(), pdu_type=pdu_type, length=length, limit=allowed),
            )
            self._send_abort()
            raise PduRejected(f"PDU type 0x{pdu_type:02X} of {length} bytes exceeds the limit of {allowed}")
        return self._read(nr_bytes, deadline)

    def close(self) -> None:
        super().close()
        self._wake_acceptor()

    def _wake_acceptor(self) -> None:
        """The connection ended before any A-ASSOCIATE-RQ: wake the association thread, which
        would otherwise wait out the whole ACSE timeout for it, holding its connection slot
        (a port scan or a load balancer's TCP probe would each take one for that long)."""
        assoc = self.assoc
        if assoc.is_acceptor and assoc.requestor.primitive is None and not assoc.is_established:
            assoc.dul.to_user_queue.put(None)  # read as "no request came": the thread ends

    def _max_length(self, pdu_type: int) -> int:
        if pdu_type == P_DATA_TF and self.assoc.acceptor.maximum_length:
            return int(self.assoc.acceptor.maximum_length) + P_DATA_SLACK
        return MAX_CONTROL_PDU

    def _read(self, nr_bytes: int, deadline: float) -> bytearray:
        sock: Any = self.socket
        tls = isinstance(sock, ssl.SSLSocket)
        if not tls and sock.gettimeout() is not None:  # (a timeout would make every read poll first)
            sock.settimeout(None)
        receive = self._receive_timed if tls else self._receive_available
        data = bytearray()  # grows with what arrives, never with what a header announces
        try:
            while len(data) < nr_bytes:
                chunk = receive(sock, deadline, len(data), nr_bytes)
                if not chunk:
                    self._wake_acceptor()
                    break
                data += chunk
        except OSError:
            self._wake_acceptor()
            raise
        finally:
            if tls and self.socket is not None:
                sock.settimeout(None)
        return data

    def _receive_available(self, sock: Any, deadline: float, received: int, expected: int) -> bytes:
        """What is there (MSG_DONTWAIT), waiting in poll() only when nothing is. The socket stays
        blocking for pynetdicom's sends, and a PDU usually arrives whole: one recv per PDU part,
        where a settimeout() before and after each read cost two ioctl() calls and a poll()."""
        while True:
            try:
                return sock.recv(expected - received, socket.MSG_DONTWAIT)
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                poller = select.poll()
                try:
                    poller.register(sock, select.POLLIN)
                except ValueError:  # closed by another thread meanwhile
                    raise OSError(errno.EBADF, "connection closed") from None
                if remaining <= 0 or not poller.poll(remaining * 1000):
                    self._time_out(received, expected)

    def _receive_timed(self, sock: Any, deadline: float, received: int, expected: int) -> bytes:
        """TLS takes no recv flags: each read waits at most until the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self._time_out(received, expected)
        sock.settimeout(remaining)
        try:
            return sock.recv(min(_TLS_READ, expected - received))
        except TimeoutError:
            self._time_out(received, expected)

    def _time_out(self, received: int, expected: int) -> NoReturn:
        """Give up on the PDU (the reader's `except OSError` wakes the acceptor)."""
        log.warning("PDU not received in time: closing the connection", extra=fields(peer=self._peer(), received=received, expected=expected))
        raise PduRejected("PDU not received within the timeout") from None

    def _send_abort(self) -> None:
        try:
            self.socket.sendall(_ABORT_INVALID_PDU)  # type: ignore[union-attr]
        except OSError:
            pass

    def _peer(self) -> str:
        requestor = self.assoc.requestor
        return f"{requestor.address}:{requestor.port}"


class GuardedRequestHandler(RequestHandler):
    """pynetdicom's handler of an accepted connection, with the guarded socket."""

    def _create_association(self):  # type: ignore[no-untyped-def]
        assoc = super()._create_association()
        # The socket is built (and has queued its "connection open" event) inside the base
        # method; giving it the subclass keeps that state and changes only how it reads.
        assoc.dul.socket.__class__ = GuardedAssociationSocket
        return assoc
