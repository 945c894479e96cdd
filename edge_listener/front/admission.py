"""Who may talk to the listener, to which services, and how many at once.

Decided when the A-ASSOCIATE-RQ arrives (EVT_REQUESTED), before any presentation context is
negotiated, and answered with the A-ASSOCIATE-RJ reason PS3.8 9.3.4 gives for it:
  * calling AE not on the allow-list, or calling from a host other than the AET dictionary's
    entry for it: rejected-permanent, service-user, calling-AE-title-not-recognized;
  * too many associations in total or from this calling AE: rejected-transient,
    service-provider (presentation), local-limit-exceeded (the peer should try again later).
An admitted association is offered only the services switched on (`--dimse_services`), and
the query/retrieve ones (C-FIND, C-MOVE, C-GET) only if the calling AE may use them
(`--query_retrieve_aets`): their presentation contexts are rejected otherwise, so such a peer
cannot even send the request.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

from dicom_adapter.logs import fields
from pynetdicom import evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

from edge_listener.services.query import FIND_MODELS
from edge_listener.services.retrieve import GET_MODELS, MOVE_MODELS
from .shared_admission import SharedAssociationCounts

log = logging.getLogger(__name__)

SERVICES = ("c-echo", "c-store", "c-find", "c-move", "c-get", "commitment")
QUERY_RETRIEVE = frozenset({"c-find", "c-move", "c-get"})

# (result, source, reason) of A-ASSOCIATE-RJ, PS3.8 Table 9-21
CALLING_AET_NOT_RECOGNIZED = (0x01, 0x01, 0x03)
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)


def parse_services(text: str | None) -> frozenset[str]:
    """'c-store,c-echo' -> those services; empty/None/'all' -> every service."""
    if not text or text.strip().lower() == "all":
        return frozenset(SERVICES)
    names = {part.strip().lower() for part in text.replace(";", ",").split(",") if part.strip()}
    unknown = names - set(SERVICES)
    if unknown:
        raise ValueError(f"unknown DIMSE service(s) {', '.join(sorted(unknown))}; choose from {', '.join(SERVICES)}")
    return frozenset(names)


def parse_aet_list(text: str | None) -> frozenset[str]:
    return frozenset(part.strip() for part in (text or "").split(",") if part.strip())


_SERVICE_OF_CLASS = {
    str(Verification): "c-echo",
    str(StorageCommitmentPushModel): "commitment",
    **{str(uid): "c-find" for uid in FIND_MODELS},
    **{str(uid): "c-move" for uid in MOVE_MODELS},
    **{str(uid): "c-get" for uid in GET_MODELS},
}


def service_of(sop_class_uid: str) -> str:
    """The service a presentation context's abstract syntax belongs to (storage otherwise)."""
    return _SERVICE_OF_CLASS.get(str(sop_class_uid), "c-store")


_SERVICE_OF_EVENT = {
    evt.EVT_C_ECHO: "c-echo",
    evt.EVT_C_STORE: "c-store",
    evt.EVT_C_FIND: "c-find",
    evt.EVT_C_MOVE: "c-move",
    evt.EVT_C_GET: "c-get",
    evt.EVT_N_ACTION: "commitment",
}


def serves_event(event_type: evt.EventType, services: frozenset[str]) -> bool:
    """Whether a handler for this event belongs to a service that is switched on."""
    name = _SERVICE_OF_EVENT.get(event_type)
    return name is None or name in services


@dataclass(frozen=True)
class AdmissionSettings:
    allowed_calling_aets: frozenset[str] = field(default_factory=frozenset)  # empty: anyone
    calling_hosts: Mapping[str, str] = field(default_factory=dict)  # AE -> host it must call from; empty: no check
    query_retrieve_aets: frozenset[str] = field(default_factory=frozenset)  # empty: every admitted AE
    max_associations: int = 32
    max_associations_per_aet: int = 0  # 0: only the total applies


class Gatekeeper:
    """Admits or rejects association requests and counts the admitted ones: in this process,
    plus those of the other listener processes on the port when `shared` is given."""

    def __init__(self, settings: AdmissionSettings, shared: SharedAssociationCounts | None = None) -> None:
        self.settings = settings
        self.shared = shared
        self._lock = threading.Lock()
        self._admitted: dict[int, tuple[str, Any]] = {}  # id(association) -> (calling AE, association)

    def try_admit(self, assoc: Any, calling_aet: str, peer_host: str) -> tuple[tuple[int, int, int], str] | None:
        """Admit the association (counted until `release` or its thread ends), or say why
        not: the A-ASSOCIATE-RJ reason and an explanation for the log."""
        allowed = self.settings.allowed_calling_aets
        if allowed and calling_aet not in allowed:
            return CALLING_AET_NOT_RECOGNIZED, "calling AE title not on the allow-list"
        expected_host = self.settings.calling_hosts.get(calling_aet)
        if self.settings.calling_hosts and (expected_host is None or not same_host(peer_host, expected_host)):
            return CALLING_AET_NOT_RECOGNIZED, "calling AE title called from a host other than its AET dictionary entry"
        # Count and admit in one step: two requests cannot both take the last slot.
        with self._lock, self._shared_lock():
            for key in [key for key, (_, other) in self._admitted.items() if not other.is_alive()]:
                del self._admitted[key]  # ended without a close event (belt and braces)
            admitted = [aet for aet, _ in self._admitted.values()] + (self.shared.others() if self.shared else [])
            if len(admitted) >= self.settings.max_associations:
                return LOCAL_LIMIT_EXCEEDED, "maximum concurrent associations reached"
            per_aet = self.settings.max_associations_per_aet
            if per_aet and admitted.count(calling_aet) >= per_aet:
                return LOCAL_LIMIT_EXCEEDED, "maximum concurrent associations for this calling AE reached"
            self._admitted[id(assoc)] = (calling_aet, assoc)
            self._publish()
        return None

    def release(self, key: int) -> None:
        with self._lock, self._shared_lock():
            if self._admitted.pop(key, None) is not None:
                self._publish()

    def admitted(self) -> int:
        with self._lock:
            return len(self._admitted)

    def _shared_lock(self) -> Any:
        return self.shared.locked() if self.shared else contextlib.nullcontext()

    def _publish(self) -> None:
        if self.shared:
            self.shared.publish([aet for aet, _ in self._admitted.values()])

    def may_query_retrieve(self, calling_aet: str) -> bool:
        return not self.settings.query_retrieve_aets or calling_aet in self.settings.query_retrieve_aets


def same_host(peer_address: str, expected: str) -> bool:
    """Is the connection's address the dictionary's host (an address, or a name resolved now)?"""
    try:
        peer = ipaddress.ip_address(peer_address.split("%")[0])
    except ValueError:
        return False
    try:
        return peer == ipaddress.ip_address(expected)
    except ValueError:
        pass
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(expected, None, proto=socket.IPPROTO_TCP)}
    except OSError:
        return False
    return any(peer == ipaddress.ip_address(address.split("%")[0]) for address in resolved)


def on_requested(event: evt.Event, gatekeeper: Gatekeeper) -> None:
    """EVT_REQUESTED handler: admit (and narrow the contexts), or send the A-ASSOCIATE-RJ."""
    assoc = event.assoc
    calling_aet = assoc.requestor.primitive.calling_ae_title.strip()
    peer_host = str(assoc.requestor.address)
    verdict = gatekeeper.try_admit(assoc, calling_aet, peer_host)
    if verdict is not None:
        (result, source, reason), why = verdict
        log.warning(
            "association rejected",
            extra=fields(calling_aet=calling_aet, peer=f"{peer_host}:{assoc.requestor.port}", reason=why,
                         result="permanent" if result == 1 else "transient"),
        )
        assoc.acse.send_reject(result, source, reason)
        assoc.kill()  # as pynetdicom does after its own rejections: wait until the RJ is sent
        return
    if not gatekeeper.may_query_retrieve(calling_aet):
        assoc.acceptor.supported_contexts = [
            context for context in assoc.acceptor.supported_contexts if service_of(context.abstract_syntax) not in QUERY_RETRIEVE
        ]


def on_closed(event: evt.Event, gatekeeper: Gatekeeper) -> None:
    """EVT_CONN_CLOSE handler: the association's slot is free again."""
    gatekeeper.release(id(event.assoc))
