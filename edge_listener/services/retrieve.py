"""C-MOVE and C-GET SCP: send the instances a request names, fetched from the DICOMweb store.

For each request: plan it by QIDO-RS (qido.plan_retrieval): above IMAGE level the series with
the store's count of their instances (one search), at IMAGE level the instances; a thread
fetches them by WADO-RS (`transfer-syntax=*`: the bytes as stored; a whole series per request
above IMAGE level, its instances named by their own file meta) ahead of the C-STOREs, small
ones into memory, large ones into the staging folder (retrieve_fetch.py). So the first C-STORE
goes out as soon as the first instance has arrived, without a search per instance first.

Transfer syntax: the destination is offered each SOP class in every common transfer syntax,
one context per syntax. The instance goes in its stored syntax when that was accepted;
otherwise the store is asked to convert it into one that was (Explicit VR Little Endian
first); if it cannot, the instance fails with a reason instead of going out in wrong bytes.

Two ways to run the exchange, sharing this module's planning, fetching and conversion:
- the fast path's (front/fastpath/retrieve_exchange.py, the default): each instance C-STOREd
  byte for byte as fetched, read one PDU at a time; C-MOVE calling as `--dimse_cmove_aet` on
  ONE association unless a later series brings a SOP class it was not offered;
- pynetdicom's handler protocol (handle_move, handle_get below), on plain pynetdicom: each
  instance handed to pynetdicom as a Dataset, which it encodes and sends; C-MOVE on the one
  association pynetdicom opens, as the listener's AE title.
Either way the Pending responses carry the remaining/completed/failed/warning counts and the
last one is Success, 0xB000 or 0xA702 with the Failed SOP Instance UID List, or Cancel after a
C-CANCEL.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

from dicom_adapter.aets import Peer
from dicom_adapter.dicomweb import DicomWebClient
from dicom_adapter.dimse_tls import TlsConfigError, TlsFiles, tls_args
from dicom_adapter.logs import fields
from dicom_adapter.qido import (
    PATIENT_ROOT,
    STUDY_ROOT,
    InstanceRef,
    QueryError,
    SeriesRef,
    series_identifier,
)
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import build_context, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from edge_listener.buffer.process_folders import process_folder, remove_folders_of_gone_processes

from .query import QUERY_TRANSFER_SYNTAXES
from .retrieve_fetch import Fetched, Prefetcher, fetch_instance
from .statuses import status

log = logging.getLogger(__name__)

MOVE_MODELS = {PatientRootQueryRetrieveInformationModelMove: PATIENT_ROOT, StudyRootQueryRetrieveInformationModelMove: STUDY_ROOT}
GET_MODELS = {PatientRootQueryRetrieveInformationModelGet: PATIENT_ROOT, StudyRootQueryRetrieveInformationModelGet: STUDY_ROOT}

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
WARNING = 0xB000
SUBOPERATIONS_FAILED = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
TOO_MANY_MATCHES = 0xA701
UNABLE_TO_PROCESS = 0xC000
MAX_SUBOPERATIONS = 65535  # the counts are US

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
# Offered to a move destination for every SOP class, one context each, so that it can take
# each instance as stored: uncompressed first (the fallbacks), then the common encapsulated ones.
OFFERED_TRANSFER_SYNTAXES = [
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    "1.2.840.10008.1.2.1.99",  # deflated
    "1.2.840.10008.1.2.2",  # explicit big endian
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE lossless
]
MAX_CONTEXTS = 128  # presentation context IDs are odd numbers 1-255
VERIFICATION = "1.2.840.10008.1.1"  # offered when no SOP class is known (an association must offer one)
# pynetdicom's own C-MOVE/C-GET service takes each instance as a Dataset, which it encodes whole:
# memory of about three times the instance. Larger ones fail on plain pynetdicom, with a reason.
PLAIN_MAX_INSTANCE_BYTES = 32 << 20

# (identifier, model) -> what it names (qido.plan_retrieval), or its instances (resolve_instances)
Planner = Callable[[Dataset, str], Iterator[InstanceRef | SeriesRef]]
Resolver = Callable[[Dataset, str], Iterator[InstanceRef]]
Plan = list[InstanceRef | SeriesRef]


@dataclass
class RetrieveService:
    """C-MOVE and C-GET: contexts for the AE and the handlers bound to EVT_C_MOVE / EVT_C_GET."""

    plan: Planner
    resolve: Resolver  # a planned series' instances, when its WADO-RS answer comes up short
    client: DicomWebClient
    peers: dict[str, Peer]
    staging_dir: Path
    cmove_aet: str | None = None
    tls: TlsFiles | None = None  # our certificate towards move destinations marked "tls"
    contexts: list[tuple[str, list[str]]] = field(
        default_factory=lambda: [(sop_class, QUERY_TRANSFER_SYNTAXES) for sop_class in (*MOVE_MODELS, *GET_MODELS)]
    )

    def __post_init__(self) -> None:
        self.staging_dir = _own_staging_dir(self.staging_dir)

    def handlers(self) -> list[tuple[Any, ...]]:
        return [(evt.EVT_C_MOVE, handle_move, [self]), (evt.EVT_C_GET, handle_get, [self])]


def _own_staging_dir(root: Path) -> Path:
    """This process's folder under `root` (listener processes share the spool), emptied, and
    the folders of processes that are gone removed with what they left mid-retrieve."""
    remove_folders_of_gone_processes(root)
    return process_folder(root, fresh=True)


class Refusal(Exception):
    """The request is refused before any sub-operation: the status and its Error Comment."""

    def __init__(self, code: int, comment: str) -> None:
        super().__init__(comment)
        self.code = code
        self.comment = comment


def plan_request(event: Event, service: RetrieveService, models: dict, context: dict) -> Plan:
    """What to send (series with their counts, or instances); Refusal (logged) if nothing may
    be. Adds the level, the instance count and the time it took to `context`."""
    started = time.monotonic()
    try:
        identifier = event.identifier
        context["level"] = str(identifier.get("QueryRetrieveLevel", ""))[:16]
        plan: Plan = list(dict.fromkeys(service.plan(identifier, models[event.request.AffectedSOPClassUID])))
    except QueryError as exc:
        log.error("retrieve refused", extra=fields(**context, status=f"0x{exc.code:04X}", reason=exc.comment))
        raise Refusal(exc.code, exc.comment) from None
    except Exception as exc:
        log.error("retrieve failed unexpectedly", extra=fields(**context, error=type(exc).__name__))
        raise Refusal(UNABLE_TO_PROCESS, f"identifier cannot be processed: {type(exc).__name__}") from None
    count = planned_instances(plan)
    if count > MAX_SUBOPERATIONS:
        raise Refusal(TOO_MANY_MATCHES, f"{count} instances match; at most {MAX_SUBOPERATIONS} per request")
    context["instances"] = count
    context["resolve_ms"] = int((time.monotonic() - started) * 1000)
    return plan


def planned_instances(plan: Plan) -> int:
    return sum(item.instances if isinstance(item, SeriesRef) else 1 for item in plan)


def prefetcher(service: RetrieveService, plan: Plan, context: dict) -> Prefetcher:
    """The plan's instances fetched ahead of their C-STOREs (whole series above IMAGE level)."""
    return Prefetcher(
        service.client, plan, service.staging_dir, whole_series=context.get("level") != "IMAGE",
        series_instances=lambda series: list(service.resolve(series_identifier(series), STUDY_ROOT)),
    )


def as_accepted(service: RetrieveService, fetched: Fetched, accepted: Collection[str]) -> tuple[Fetched | None, str]:
    """The instance in a transfer syntax the destination accepted for its SOP class: as stored,
    or else converted by the store (Explicit VR Little Endian first); (None, why) if neither.
    The fetched instance is discarded when it is not the one returned."""
    if fetched.meta is None:
        return None, fetched.reason
    if not accepted:
        fetched.discard()
        return None, f"destination accepted no context for SOP class {fetched.meta.sop_class_uid}"
    stored_syntax = fetched.meta.transfer_syntax_uid
    if stored_syntax in accepted:
        return fetched, ""
    wanted = next((ts for ts in (EXPLICIT_VR_LE, IMPLICIT_VR_LE) if ts in accepted), next(iter(accepted)))
    fetched.discard()
    converted = fetch_instance(service.client, fetched.ref, service.staging_dir, wanted)
    if converted.meta is None:
        return None, f"destination does not accept {stored_syntax} and the store cannot convert it ({converted.reason})"
    if converted.meta.transfer_syntax_uid != wanted:
        converted.discard()
        return None, f"destination does not accept {stored_syntax}; the store sent {converted.meta.transfer_syntax_uid}"
    return converted, ""


def accepted_syntaxes(assoc: Any, sop_class: str) -> dict[str, int]:
    """Transfer syntax -> context ID in which we may send `sop_class` on `assoc` as the C-STORE
    SCU, in the order the contexts were accepted (C-GET, on the requester's association: only
    where it took the SCP role)."""
    found: dict[str, int] = {}
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax != sop_class:
            continue
        if assoc.is_acceptor and not cx.as_scu:
            continue
        found.setdefault(str(cx.transfer_syntax[0]), cx.context_id)
    return found


def offered_contexts(sop_classes: set[str]) -> list[Any]:
    """One context per (SOP class, transfer syntax); fewer syntaxes when classes are many."""
    per_class = max(2, min(len(OFFERED_TRANSFER_SYNTAXES), MAX_CONTEXTS // max(1, len(sop_classes))))
    contexts = []
    for sop_class in sorted(sop_classes):
        for syntax in OFFERED_TRANSFER_SYNTAXES[:per_class]:
            contexts.append(build_context(sop_class, [syntax]))
    return contexts[:MAX_CONTEXTS]


def log_context(event: Event, **extra: Any) -> dict[str, Any]:
    return {"calling_aet": event.assoc.requestor.ae_title, "sop_class_uid": str(event.request.AffectedSOPClassUID), **extra}


# -- letting the handlers run the exchange -----------------------------------------------------


# -- pynetdicom's handler protocol (plain pynetdicom; the fast path runs its own exchange) --------


def handle_move(event: Event, service: RetrieveService) -> Iterator[Any]:
    """EVT_C_MOVE handler in pynetdicom's protocol: the destination, the number of
    sub-operations, then (Pending, instance) for each; pynetdicom opens ONE association (as
    the listener's AE title, offering every SOP class of the plan: the series' instances are
    searched for their classes first) and sends. A refusal raises: pynetdicom answers 0xC514,
    the log says why. The fast path replaces all of this with
    fastpath/retrieve_exchange.move_exchange (docs/architecture.md lists the differences)."""
    destination = str(event.request.MoveDestination or "").strip()
    context = log_context(event, move_destination=destination)
    plan = plan_request(event, service, MOVE_MODELS, context)
    peer = service.peers.get(destination)
    if peer is None:
        log.error("C-MOVE destination unknown", extra=fields(**context))
        yield None, None
        return
    try:
        tls = tls_args(service.tls, peer.host, peer.tls)
    except TlsConfigError as exc:
        log.error("C-MOVE destination needs TLS", extra=fields(**context, reason=str(exc)))
        yield None, None
        return
    destination_assoc: list[Any] = []

    def accepted(accepted_event: Event) -> None:
        destination_assoc.append(accepted_event.assoc)
        nodelay(accepted_event.assoc)

    yield peer.host, peer.port, {
        "contexts": offered_contexts(_sop_classes(service, plan) or {VERIFICATION}),
        "tls_args": tls,
        "evt_handlers": [(evt.EVT_ACCEPTED, accepted)],
    }
    yield planned_instances(plan)
    fetcher = prefetcher(service, plan, context)
    try:
        yield from _plain_suboperations(
            event, service, fetcher, lambda sop_class: accepted_syntaxes(destination_assoc[0], sop_class) if destination_assoc else {}, context
        )
    finally:
        fetcher.close()


def _sop_classes(service: RetrieveService, plan: Plan) -> set[str]:
    """Every SOP class the plan's instances have (a series planned by its count is searched)."""
    classes = {item.sop_class_uid for item in plan if isinstance(item, InstanceRef)}
    for item in plan:
        if isinstance(item, SeriesRef):
            classes.update(ref.sop_class_uid for ref in service.resolve(series_identifier(item), STUDY_ROOT))
    return classes


def handle_get(event: Event, service: RetrieveService) -> Iterator[Any]:
    """EVT_C_GET handler in pynetdicom's protocol: the number of sub-operations, then
    (Pending, instance) for each, sent by pynetdicom on the requester's association. The fast
    path replaces it with fastpath/retrieve_exchange.get_exchange."""
    context = log_context(event)
    try:
        plan = plan_request(event, service, GET_MODELS, context)
    except Refusal as refusal:
        yield 1
        yield status(refusal.code, refusal.comment), None
        return
    yield planned_instances(plan)
    fetcher = prefetcher(service, plan, context)
    try:
        yield from _plain_suboperations(event, service, fetcher, lambda sop_class: accepted_syntaxes(event.assoc, sop_class), context)
    finally:
        fetcher.close()


def _plain_suboperations(
    event: Event, service: RetrieveService, fetcher: Prefetcher, accepted: Callable[[str], dict[str, int]], context: dict
) -> Iterator[tuple[Any, Dataset | None]]:
    """(Pending, instance as a Dataset) for each fetched instance, converted by the store
    where the destination does not take its transfer syntax; Cancel after a C-CANCEL. An
    instance that cannot be sent is yielded as a failed sub-operation (pynetdicom counts it)."""
    started = time.monotonic()
    sent = 0
    for fetched in fetcher:
        if event.is_cancelled:
            fetched.discard()
            log.info("retrieve cancelled", extra=fields(**context, sent=sent))
            yield CANCEL, None
            return
        sendable, reason = as_accepted(service, fetched, accepted(fetched.meta.sop_class_uid) if fetched.meta else {})
        if sendable is not None and (size := sendable.size) > PLAIN_MAX_INSTANCE_BYTES:
            sendable.discard()
            sendable, reason = None, f"{size} bytes: more than plain pynetdicom sends in bounded memory (the fast path streams it)"
        if sendable is None:
            log.warning("sub-operation failed", extra=fields(**context, sop_instance_uid=fetched.ref.sop_instance_uid, reason=reason))
            yield PENDING, _unsendable(fetched.ref)
            continue
        try:
            assert sendable.content is not None
            sendable.content.seek(0)
            dataset = dcmread(sendable.content)
        finally:
            sendable.discard()
        sent += 1
        yield PENDING, dataset
    log.info("retrieve done", extra=fields(**context, sent=sent, duration_ms=int((time.monotonic() - started) * 1000)))


def _unsendable(ref: InstanceRef) -> Dataset:
    """What pynetdicom is given for an instance that cannot be sent: a data set its C-STORE
    refuses before sending (no SOP Class UID), so the sub-operation counts as failed with the
    instance's UID in the Failed SOP Instance UID List."""
    dataset = Dataset()
    dataset.SOPInstanceUID = ref.sop_instance_uid
    return dataset


def nodelay(assoc: Any) -> None:
    """Nagle's algorithm off on an association we opened (DIMSE is request/response)."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
