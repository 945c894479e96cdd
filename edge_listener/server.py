"""The pynetdicom Application Entity: presentation contexts, handlers, sockets, limits.

One AE serves every DIMSE service the adapter offers; each service is a plain handler function
in its own module (store.py, ...), bound to its pynetdicom event here.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from dicom_adapter.logs import fields
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from . import reactor_tuning
from .reception import receive_into
from .store import StoreService, handle_store

log = logging.getLogger(__name__)

# Receive C-STORE data sets straight into a file instead of memory (DESIGN invariant 4).
_config.STORE_RECV_CHUNKED_DATASET = True
# Accept every storage SOP class, private ones included (modalities send vendor classes such
# as Siemens CSA Non-Image), in the first transfer syntax the sender proposes for it: the
# adapter stores bytes, it never needs to decode them. Known non-storage classes (Verification,
# and later Query/Retrieve) still negotiate against the supported contexts below.
_config.UNRESTRICTED_STORAGE_SERVICE = True


class DimseService(Protocol):
    """A DIMSE service beside C-STORE (query.py, retrieve.py, commitment.py): the presentation
    contexts it supports and the handlers it binds."""

    contexts: list[tuple[str, list[str]]]

    def handlers(self) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True)
class ListenerSettings:
    aet: str
    port: int
    host: str = "0.0.0.0"
    allowed_calling_aets: frozenset[str] = field(default_factory=frozenset)
    # Virtual AEs: further called AE titles this listener answers to (routing rules name them).
    also_called_aets: frozenset[str] = field(default_factory=frozenset)
    max_associations: int = 32
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 120.0
    # The largest PDU we let peers send. pynetdicom reads a whole PDU into memory before it
    # writes the data to disk, so "no limit" (0) would let a sender put a 1 GB instance in one
    # PDU and in our RSS; 256 KiB keeps per-PDU overhead low and memory small.
    max_pdu_length: int = 262144
    # Several listener processes share the port (the kernel spreads connections over them).
    reuse_port: bool = False


class EdgeAssociationServer(ThreadedAssociationServer):
    """Turns Nagle off on accepted sockets (DIMSE is request/response: delays cost throughput)
    and can share its port with other listener processes (SO_REUSEPORT)."""

    def __init__(self, *args: Any, reuse_port: bool = False, **kwargs: Any) -> None:
        self.reuse_port = reuse_port  # before the base class binds the socket
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # type: ignore[union-attr]
        super().server_bind()

    def get_request(self):  # type: ignore[override]
        client, address = self.socket.accept()  # type: ignore[union-attr]
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True)
        return client, address


def build_ae(settings: ListenerSettings) -> AE:
    ae = AE(ae_title=settings.aet)
    ae.require_called_aet = True
    if settings.allowed_calling_aets:
        ae.require_calling_aet = sorted(settings.allowed_calling_aets)
    ae.maximum_associations = settings.max_associations
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.maximum_pdu_size = settings.max_pdu_length
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    return ae


def answer_as_called_aet(event: evt.Event, also_called: frozenset[str]) -> None:
    """EVT_REQUESTED: act as the virtual AE the peer called, if it is one of ours.

    pynetdicom rejects a called AE title other than the acceptor's ("called AE title not
    recognised") right after this event, so taking the called title here is all it takes."""
    called = event.assoc.requestor.primitive.called_ae_title.strip()
    if called in also_called:
        event.assoc.acceptor.ae_title = called


def _log_association(event: evt.Event, what: str) -> None:
    assoc = event.assoc
    log.info(
        what,
        extra=fields(
            calling_aet=assoc.requestor.ae_title,
            called_aet=assoc.acceptor.ae_title,
            peer=f"{assoc.requestor.address}:{assoc.requestor.port}",
        ),
    )


def _log_rejection(event: evt.Event) -> None:
    assoc = event.assoc
    log.warning(
        "association rejected",
        extra=fields(
            calling_aet=assoc.requestor.ae_title,
            peer=f"{assoc.requestor.address}:{assoc.requestor.port}",
        ),
    )


def _discard_partial_reception(event: evt.Event) -> None:
    """On connection close, delete the file of a C-STORE whose data set never fully arrived.

    pynetdicom forgets (but keeps on disk) the file of a message cut off by an abort or a
    dropped connection; nobody was acknowledged for it, so it goes now. (Anything that slips
    past this is removed by Spool.clear_incoming at the next start.)
    """
    message = getattr(getattr(event.assoc, "dimse", None), "message", None)
    partial_file = getattr(message, "_data_set_file", None)
    if partial_file is None or not partial_file.name:
        return
    try:
        partial_file.close()
        Path(partial_file.name).unlink(missing_ok=True)
    except OSError:
        log.warning("could not remove a partial reception", extra=fields(path=str(partial_file.name)))
    else:
        log.warning("discarded a data set cut off mid-transfer", extra=fields(calling_aet=event.assoc.requestor.ae_title))


class Listener:
    """The running DIMSE listener; `drain` stops it gracefully."""

    def __init__(self, settings: ListenerSettings, store: StoreService, services: Sequence[DimseService] = ()) -> None:
        self.settings = settings
        receive_into(store.buffer.incoming)
        reactor_tuning.install()
        self.ae = build_ae(settings)
        for service in services:
            for sop_class, transfer_syntaxes in service.contexts:
                self.ae.add_supported_context(sop_class, transfer_syntaxes)
        handlers = [
            (evt.EVT_C_STORE, handle_store, [store]),
            *([(evt.EVT_REQUESTED, answer_as_called_aet, [settings.also_called_aets])] if settings.also_called_aets else []),
            (evt.EVT_DIMSE_RECV, reactor_tuning.mark_busy),
            (evt.EVT_ACCEPTED, _log_association, ["association accepted"]),
            (evt.EVT_RELEASED, _log_association, ["association released"]),
            (evt.EVT_ABORTED, _log_association, ["association aborted"]),
            (evt.EVT_REJECTED, _log_rejection),
            (evt.EVT_CONN_CLOSE, _discard_partial_reception),
            (evt.EVT_CONN_CLOSE, reactor_tuning.forget),
        ]
        for service in services:
            handlers += service.handlers()
        self.server = self.ae.make_server(
            (settings.host, settings.port),
            evt_handlers=handlers,
            server_class=EdgeAssociationServer,
            reuse_port=settings.reuse_port,
        )
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, name="dimse-listener", daemon=True
        )

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def is_serving(self) -> bool:
        return self._thread.is_alive()

    def stop_accepting(self) -> None:
        """Close the listening socket; associations in progress carry on."""
        # pynetdicom's own shutdown() also forgets the server in the AE; stop the socketserver
        # loop (if it runs: shutdown() would wait for ever otherwise) and close the socket only.
        if self._thread.is_alive():
            socketserver.BaseServer.shutdown(self.server)
            self._thread.join(timeout=5)
        self.server.server_close()

    def active_associations(self) -> int:
        """Associations that are established (a connection that never negotiated does not count)."""
        return sum(1 for assoc in self.server.active_associations if assoc.is_established)

    def abort_all(self) -> None:
        for assoc in self.server.active_associations:
            assoc.abort()

    def drain(self, timeout_s: float) -> None:
        """Stop accepting; give established associations `timeout_s` to finish, then abort them."""
        self.stop_accepting()
        if self.active_associations():
            log.info("waiting for open associations to finish", extra=fields(count=self.active_associations()))
        deadline = time.monotonic() + timeout_s
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.active_associations():
            log.warning("aborting associations still open after the drain timeout", extra=fields(count=self.active_associations()))
            self.abort_all()
