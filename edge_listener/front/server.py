"""The pynetdicom Application Entity: presentation contexts, handlers, sockets, limits.

One AE serves every DIMSE service the adapter offers; each service is a plain handler function
in its own module (store.py, ...), bound to its pynetdicom event here.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import socketserver
import ssl
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

from dicom_adapter.dimse_tls import TlsFiles
from dicom_adapter.logs import fields
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from . import fastpath
from .admission import (
    SERVICES,
    AdmissionSettings,
    Gatekeeper,
    on_closed,
    on_requested,
    serves_event,
    service_of,
)
from edge_listener.buffer.high_water import HighWaterMark
from edge_listener.buffer.reception import discard_orphans, discard_stale_files, receive_into
from .shared_admission import SharedAssociationCounts
from edge_listener.services.store import StoreService, handle_store

log = logging.getLogger(__name__)

# Receive C-STORE data sets straight into a file instead of memory (DESIGN invariant 4).
_config.STORE_RECV_CHUNKED_DATASET = True
# Accept every storage SOP class, private ones included (modalities send vendor classes such
# as Siemens CSA Non-Image), in the first transfer syntax the sender proposes for it: the
# adapter stores bytes, it never needs to decode them. Known non-storage classes (Verification,
# and later Query/Retrieve) still negotiate against the supported contexts below.
_config.UNRESTRICTED_STORAGE_SERVICE = True
# pynetdicom's "standard" handlers log every PDU and DIMSE message at DEBUG: an event object
# and formatted text for each, on the path of every ack, for loggers the adapter keeps at
# WARNING (they would print data set contents). Not bound at all, they cost nothing.
_config.LOG_HANDLER_LEVEL = "none"
ORPHAN_SWEEP_S = 2.0
# A listener process serving N associations waits N x this (at most the max) before it
# accepts a connection on a shared socket, so that a less busy process takes it.
SHARED_ACCEPT_DEFER_S = 0.005
SHARED_ACCEPT_DEFER_MAX_S = 0.02


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
    # Several listener processes serve one port: the first binds it (and the plain port), the
    # others take connections from the same listening sockets, inherited as descriptors
    # (listen_fds: the port's, then the plain port's); the least busy process accepts first
    # (EdgeAssociationServer). They count their associations together in shared_admission_dir
    # (shared_admission.py).
    shared_accept: bool = False
    listen_fds: tuple[int, ...] = ()
    shared_admission_dir: str | None = None
    # --- who may talk to us, and how many (admission.py) ---
    max_associations_per_aet: int = 0  # 0: only max_associations applies
    calling_hosts: Mapping[str, str] = field(default_factory=dict)  # AE -> its host; empty: no host check
    query_retrieve_aets: frozenset[str] = field(default_factory=frozenset)  # may C-FIND/C-MOVE/C-GET; empty: all
    services: frozenset[str] = frozenset(SERVICES)
    # --- TLS: `port` serves TLS when set; `plain_port` (if any) serves plain DIMSE beside it ---
    tls: TlsFiles | None = None
    plain_port: int | None = None
    # --- refuse C-STOREs while the reception folder's disk is this full (high_water.py) ---
    high_water_mark: HighWaterMark | None = None
    # --- pynetdicom's internals replaced for speed where the guard allows (fastpath/) ---
    fast_path: bool = True

    def admission(self) -> AdmissionSettings:
        return AdmissionSettings(
            allowed_calling_aets=self.allowed_calling_aets,
            calling_hosts=self.calling_hosts,
            query_retrieve_aets=self.query_retrieve_aets,
            max_associations=self.max_associations,
            max_associations_per_aet=self.max_associations_per_aet,
        )

    @property
    def max_connections(self) -> int:
        """Open connections at most (negotiating, rejected or serving); more are closed at
        once. Room above max_associations so the excess still hears A-ASSOCIATE-RJ."""
        return 2 * self.max_associations + 8


class EdgeAssociationServer(ThreadedAssociationServer):
    """Turns Nagle off on accepted sockets (DIMSE is request/response: delays cost throughput)
    and can share its listening socket with other listener processes (`shared_accept`).

    Sharing one socket rather than binding one each with SO_REUSEPORT: the kernel spreads
    SO_REUSEPORT connections by a hash of their addresses, so 4 associations often landed 3:1
    or 4:0 on 2 processes, one interpreter lock serving them all (measured: acks ~330/s
    instead of ~500/s). With one shared socket every process is woken by a new connection,
    and one that already serves associations waits a moment before it accepts, so an idle
    process takes it; the loser's accept finds nothing and it goes back to waiting.

    The accept loop only accepts: the TLS handshake runs in the connection's own thread, with
    the ACSE timeout, so a slow or hostile client cannot hold up the next one. Connections
    beyond `max_connections` are closed at once; with the fast path, each reads through
    fastpath/bounds.py's guard."""

    # The kernel's queue of connections not yet accepted (socketserver's default is 5): a burst
    # of modalities connecting at once waits there, not in SYN retries, while a busy process
    # defers its accept.
    request_queue_size = 128

    def __init__(
        self,
        *args: Any,
        shared_accept: bool = False,
        listen_fd: int | None = None,
        max_connections: int = 1000,
        handshake_timeout_s: float = 30.0,
        **kwargs: Any,
    ) -> None:
        self.shared_accept = shared_accept  # before the base class binds the socket
        self.listen_fd = listen_fd
        # Accepted connections, counted from the accept on (an association thread appears
        # only later, so a burst of connections would all look like room otherwise).
        self._clients: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self.max_connections = max_connections
        self.handshake_timeout_s = handshake_timeout_s
        self._handshaking = 0
        self._count_lock = threading.Lock()
        super().__init__(*args, request_handler=fastpath.request_handler(), **kwargs)

    def server_bind(self) -> None:
        if self.listen_fd is None:
            super().server_bind()
        else:  # another listener process of this runtime bound it: serve its socket
            self.socket.close()  # type: ignore[union-attr]
            self.socket = socket.socket(fileno=os.dup(self.listen_fd))
            self.server_address = self.socket.getsockname()
        if self.shared_accept:
            # Another process may take a connection first; accept() must then not wait.
            self.socket.setblocking(False)  # type: ignore[union-attr]

    def service_actions(self) -> None:
        """pynetdicom's accept loop runs a full gc.collect() every 60th pass (every 6 s here),
        with the interpreter lock held for ~13 ms: a stall of every association this process
        serves. Only while none is open; Python's own collections run as always."""
        if not self.active_associations:
            super().service_actions()

    def server_close(self) -> None:
        """Stop listening. pynetdicom's server_close shuts the socket down, which ends it for
        every process holding it: right for the process that bound it (it stops last, after
        telling the others to stop, and new connections are then refused at once), but a
        listener serving another's socket (`listen_fd`) that stops alone, on its own SIGTERM,
        must leave the port to the others and only close its descriptor."""
        if self.listen_fd is None:
            super().server_close()
        else:
            self.socket.close()  # type: ignore[union-attr]

    def get_request(self):  # type: ignore[override]
        if self.shared_accept:
            busy = self.open_connections()
            if busy:  # let a process with fewer connections take it first
                time.sleep(min(SHARED_ACCEPT_DEFER_S * busy, SHARED_ACCEPT_DEFER_MAX_S))
        # With shared_accept this raises BlockingIOError when another process took the
        # connection; socketserver ignores an OSError from get_request and waits again.
        client, address = self.socket.accept()  # type: ignore[union-attr]
        self._clients.add(client)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def open_connections(self) -> int:
        return sum(1 for client in list(self._clients) if client.fileno() != -1)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        discard_orphans()  # each new connection also clears what dead ones left behind
        with self._count_lock:
            open_now = len(self.active_associations) + self._handshaking
            if open_now < self.max_connections and self.ssl_context:
                self._handshaking += 1  # counted from now: a burst cannot all slip past the ceiling
        if open_now >= self.max_connections:
            log.warning("too many open connections: closing a new one unanswered", extra=fields(peer=_peer(client_address), open=open_now))
            return False  # socketserver closes it
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:  # type: ignore[override]
        if self.ssl_context:
            request = self._handshake(request, client_address)
            if request is None:
                return
            self._clients.add(request)  # wrapping took the descriptor from the plain socket
        super().process_request_thread(request, client_address)

    def _handshake(self, client: socket.socket, client_address: Any) -> ssl.SSLSocket | None:
        """The TLS handshake, bounded in time as a whole (a client trickling its handshake is
        cut off too); None (connection closed, logged) if it fails."""
        deadline = threading.Timer(self.handshake_timeout_s, _cut, [client])
        deadline.start()
        try:
            client.settimeout(self.handshake_timeout_s)
            secure = self.ssl_context.wrap_socket(client, server_side=True)  # type: ignore[union-attr]
            secure.settimeout(None)
            return secure
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning("TLS handshake failed: connection closed", extra=fields(peer=_peer(client_address), reason=_tls_reason(exc)))
            self.shutdown_request(client)
            return None
        finally:
            deadline.cancel()
            with self._count_lock:
                self._handshaking -= 1


def _cut(client: socket.socket) -> None:
    """Unblock a handshake that ran out of time (shutdown wakes a blocked read)."""
    try:
        client.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _peer(client_address: Any) -> str:
    return f"{client_address[0]}:{client_address[1]}" if isinstance(client_address, tuple) else str(client_address)


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "handshake timed out"
    return type(exc).__name__


def build_ae(settings: ListenerSettings) -> AE:
    """The AE; calling-AE allow-list and association limits are admission.py's (EVT_REQUESTED)."""
    ae = AE(ae_title=settings.aet)
    ae.require_called_aet = True
    # pynetdicom counts every connection here, even one still negotiating; the Gatekeeper
    # counts admitted associations, so this is only the connection ceiling.
    ae.maximum_associations = settings.max_connections
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.maximum_pdu_size = settings.max_pdu_length
    if "c-echo" in settings.services:
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


class Listener:
    """The running DIMSE listener; `drain` stops it gracefully."""

    def __init__(self, settings: ListenerSettings, store: StoreService, services: Sequence[DimseService] = ()) -> None:
        self.settings = settings
        receive_into(store.buffer.incoming, settings.high_water_mark)
        self.fast_path = fastpath.install(settings.fast_path)
        self.incoming = store.buffer.incoming
        # Storage SOP classes are accepted without a list (module docstring) only while C-STORE is on.
        _config.UNRESTRICTED_STORAGE_SERVICE = "c-store" in settings.services
        self.ae = build_ae(settings)
        shared = SharedAssociationCounts(settings.shared_admission_dir) if settings.shared_admission_dir else None
        self.gatekeeper = Gatekeeper(settings.admission(), shared)
        for service in services:
            for sop_class, transfer_syntaxes in service.contexts:
                if service_of(sop_class) in settings.services:
                    self.ae.add_supported_context(sop_class, transfer_syntaxes)
        handlers = [
            (evt.EVT_REQUESTED, on_requested, [self.gatekeeper]),
            (evt.EVT_CONN_CLOSE, on_closed, [self.gatekeeper]),
            (evt.EVT_C_STORE, handle_store, [store]),
            *([(evt.EVT_REQUESTED, answer_as_called_aet, [settings.also_called_aets])] if settings.also_called_aets else []),
            (evt.EVT_ACCEPTED, _log_association, ["association accepted"]),
            (evt.EVT_RELEASED, _log_association, ["association released"]),
            (evt.EVT_ABORTED, _log_association, ["association aborted"]),
            (evt.EVT_REJECTED, _log_rejection),
            (evt.EVT_CONN_CLOSE, self._discard_partial_reception),
        ]
        for service in services:
            handlers += service.handlers()
        handlers = [handler for handler in handlers if serves_event(handler[0], settings.services)]
        self.server = self._make_server(0, settings.port, handlers, settings.tls.server_context() if settings.tls else None)
        # The plain port beside a TLS one (same AE, same handlers, same limits).
        self.plain_server = (
            self._make_server(1, settings.plain_port, handlers, None) if settings.tls and settings.plain_port is not None else None
        )
        self.servers = [self.server, *([self.plain_server] if self.plain_server else [])]
        self._threads = [
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"dimse-listener-{index}", daemon=True)
            for index, server in enumerate(self.servers)
        ]
        self._janitor_stop = threading.Event()
        self._janitor = threading.Thread(target=self._sweep_orphans, name="dimse-reception-janitor", daemon=True)

    def _sweep_orphans(self) -> None:
        """Remove, every few seconds, reception files whose association died uncleanly."""
        while not self._janitor_stop.wait(ORPHAN_SWEEP_S):
            removed = self._discard_orphans()
            if removed:
                log.warning("removed data sets of associations that ended mid-transfer", extra=fields(count=removed))

    def _discard_orphans(self, closing: Any = None) -> int:
        """Remove the reception files no live association will finish (`closing`: one ending now)."""
        serving = any(assoc is not closing and assoc.is_alive() for assoc in self._associations())
        return discard_orphans() + discard_stale_files(self.incoming, 2 * self.settings.network_timeout_s, process_idle=not serving)

    def _discard_partial_reception(self, event: evt.Event) -> None:
        """EVT_CONN_CLOSE: delete the file of a C-STORE whose data set never fully arrived:
        nobody was acknowledged for it. (What slips past this is removed by the janitor, or by
        Spool.clear_incoming at the next start.)"""
        if fastpath.discard_partial(event.assoc) or self._discard_orphans(closing=event.assoc):
            log.warning("discarded a data set cut off mid-transfer", extra=fields(calling_aet=event.assoc.requestor.ae_title))

    def _make_server(self, index: int, port: int, handlers: list[Any], ssl_context: ssl.SSLContext | None) -> EdgeAssociationServer:
        listen_fds = self.settings.listen_fds
        return self.ae.make_server(
            (self.settings.host, port),
            evt_handlers=handlers,
            ssl_context=ssl_context,
            server_class=EdgeAssociationServer,
            shared_accept=self.settings.shared_accept,
            listen_fd=listen_fds[index] if index < len(listen_fds) else None,
            max_connections=self.settings.max_connections,
            handshake_timeout_s=self.settings.acse_timeout_s,
        )

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def listen_fds(self) -> tuple[int, ...]:
        """The listening sockets' descriptors (the port's, then the plain port's), for the
        listener processes that share them."""
        return tuple(server.socket.fileno() for server in self.servers)

    @property
    def plain_port(self) -> int | None:
        """The plain DIMSE port beside the TLS one, if there is one."""
        return self.plain_server.server_address[1] if self.plain_server else None

    def start(self) -> None:
        # What exists now (modules, the data dictionaries, the AE and its contexts) lives as
        # long as the process: out of the collector's way, each full collection skips ~60,000
        # objects (~13 ms of held interpreter lock; about one per 1000 instances received).
        gc.freeze()
        for thread in self._threads:
            thread.start()
        self._janitor.start()

    def is_serving(self) -> bool:
        return all(thread.is_alive() for thread in self._threads)

    def stop_accepting(self) -> None:
        """Close the listening sockets; associations in progress carry on."""
        # pynetdicom's own shutdown() also forgets the server in the AE; stop the socketserver
        # loop (if it runs: shutdown() would wait for ever otherwise) and close the socket only.
        for server, thread in zip(self.servers, self._threads):
            if thread.is_alive():
                socketserver.BaseServer.shutdown(server)
                thread.join(timeout=5)
            server.server_close()

    def _associations(self) -> list[Any]:
        return [assoc for server in self.servers for assoc in server.active_associations]

    def active_associations(self) -> int:
        """Associations that are established (a connection that never negotiated does not count)."""
        return sum(1 for assoc in self._associations() if assoc.is_established)

    def abort_all(self) -> None:
        for assoc in self._associations():
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
        self._janitor_stop.set()
