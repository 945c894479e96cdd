"""C-MOVE and C-GET SCP: send the instances a request names, fetched from the DICOMweb store.

For each request: plan it by QIDO-RS (qido.plan_retrieval): above IMAGE level the series with
the store's count of their instances (one search), at IMAGE level the instances; a thread
fetches them by WADO-RS (`transfer-syntax=*`: the bytes as stored; a whole series per request
above IMAGE level, its instances named by their own file meta) ahead of the C-STOREs, small
ones into memory, large ones into the staging folder (retrieve_fetch.py); each is C-STOREd
byte for byte as fetched, the data set read from memory or the file one PDU at a time
(dimse_wire.py). So the first C-STORE goes out as soon as the first instance has arrived,
without a search per instance first. C-MOVE sends to the Move Destination, looked up in the AET
dictionary, calling as `--dimse_cmove_aet`, on ONE association unless a later series brings a
SOP class it was not offered (then on a new one offering them all; never two at once:
retrieve_outbound.py); C-GET sends on the requester's own association (it proposed the storage
contexts with the SCP role). Pending responses carry the remaining/completed/failed/warning
counts (remaining from the planned count); the last one is Success, 0xB000 or 0xA702 with the
Failed SOP Instance UID List, or Cancel after a C-CANCEL.

Transfer syntax: the destination is offered each SOP class in every common transfer syntax,
one context per syntax. The instance goes in its stored syntax when that was accepted;
otherwise the store is asked to convert it into one that was (Explicit VR Little Endian
first); if it cannot, the instance fails with a reason instead of going out in wrong bytes.

pynetdicom's own C-MOVE/C-GET service wants every instance as an in-memory Dataset and opens
the destination association as the listener's AE, so for requests bound to the handlers below
`install()` lets the handler run the exchange itself (see _exchange_scp). The messages of the
exchange are written by dimse_wire.py rather than pynetdicom's send_msg (half the CPU).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from dicom_adapter.aets import Peer
from dicom_adapter.dicomweb import DicomWebClient
from dicom_adapter.dimse_tls import TlsConfigError, TlsFiles, associate
from dicom_adapter.logs import fields
from dicom_adapter.qido import (
    PATIENT_ROOT,
    STUDY_ROOT,
    InstanceRef,
    QueryError,
    SeriesRef,
    series_identifier,
)
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, build_context, evt
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import encode
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from . import dimse_wire
from .dimse import error_comment
from .process_folders import process_folder, remove_folders_of_gone_processes
from .query import QUERY_TRANSFER_SYNTAXES
from .retrieve_fetch import Fetched, Prefetcher, fetch_instance
from .retrieve_outbound import DestinationUnavailable, Outbound

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
        install()

    def handlers(self) -> list[tuple[Any, ...]]:
        return [(evt.EVT_C_MOVE, handle_move, [self]), (evt.EVT_C_GET, handle_get, [self])]


def _own_staging_dir(root: Path) -> Path:
    """This process's folder under `root` (listener processes share the spool), emptied, and
    the folders of processes that are gone removed with what they left mid-retrieve."""
    remove_folders_of_gone_processes(root)
    return process_folder(root, fresh=True)


class Responses:
    """The C-MOVE/C-GET responses of one request, with the sub-operation counts.

    With `defer_pending` (C-MOVE, whose C-STOREs go on another association) the Pending
    response after a sub-operation is only marked due (`pending`), and goes out while the next
    C-STORE is with the destination (`send_due`, called as that request's `meanwhile`) or
    before any other response: the same responses with the same counts, but written while we
    wait anyway instead of between one C-STORE and the next (measured: 0.06 ms of the sender's
    0.2 ms per instance). C-GET keeps them in order with its C-STOREs, on the one association.
    """

    def __init__(self, event: Event, command_field: int, *, defer_pending: bool = False) -> None:
        self.event = event
        self.command_field = command_field
        self.context_id = event.context.context_id
        self.transfer_syntax = UID(event.context.transfer_syntax)
        self.remaining = self.completed = self.failed = self.warning = 0
        self.failed_uids: list[str] = []
        self.defer_pending = defer_pending
        self._due = False
        self.lost = False  # a due Pending response found the requester's connection gone

    def pending(self) -> None:
        """A Pending response with the counts as they are now: sent, or due (defer_pending)."""
        if self.defer_pending:
            self._due = True
        else:
            self.send(PENDING)

    def send_due(self) -> None:
        """Send the Pending response that is due, if one is (the counts have not moved since).
        A lost connection only sets `lost`: this runs in the middle of a C-STORE exchange."""
        if self._due:
            self._due = False
            try:
                self.send(PENDING)
            except OSError:
                self.lost = True

    def send(self, code: int, comment: str = "", *, counts: bool = True, failed_list: bool = False) -> None:
        if code != PENDING:
            self.send_due()
        request = self.event.request
        identifier = None
        if failed_list:
            failed = Dataset()
            failed.FailedSOPInstanceUIDList = self.failed_uids
            ts = self.transfer_syntax
            identifier = encode(failed, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
        command = dimse_wire.response_command(
            self.command_field, request.AffectedSOPClassUID, request.MessageID, code,
            error_comment(comment) if comment else None, data_set=identifier is not None,
            NumberOfRemainingSuboperations=self.remaining if counts and code in (PENDING, CANCEL) else None,
            NumberOfCompletedSuboperations=self.completed if counts else None,
            NumberOfFailedSuboperations=self.failed if counts else None,
            NumberOfWarningSuboperations=self.warning if counts else None,
        )
        dimse_wire.send(self.event.assoc, self.context_id, command, identifier)

    def finish(self) -> int:
        """The final response after the sub-operations; returns its status."""
        if not self.failed and not self.warning:
            self.send(SUCCESS)
            return SUCCESS
        code = SUBOPERATIONS_FAILED if self.failed and not self.completed and not self.warning else WARNING
        self.send(code, failed_list=bool(self.failed_uids))
        return code


def handle_move(event: Event, service: RetrieveService) -> None:
    """EVT_C_MOVE handler: the whole exchange, on ONE association to the Move Destination
    where the SOP classes allow (retrieve_outbound.py)."""
    responses = Responses(event, dimse_wire.C_MOVE_RSP, defer_pending=True)
    destination = str(event.request.MoveDestination or "").strip()
    context = _log_context(event, move_destination=destination)
    plan = _plan(event, service, MOVE_MODELS, responses, context)
    if plan is None:
        return
    peer = service.peers.get(destination)
    if peer is None:
        log.error("C-MOVE destination unknown", extra=fields(**context))
        responses.send(MOVE_DESTINATION_UNKNOWN, f"move destination {destination} is not in the AET dictionary", counts=False)
        return
    if not plan:
        responses.send(SUCCESS)
        return

    def open_association(sop_classes: set[str]) -> Any:
        ae = AE(ae_title=service.cmove_aet or event.assoc.acceptor.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        try:
            assoc = associate(ae, peer, service.tls, contexts=_offered_contexts(sop_classes))
        except TlsConfigError as exc:
            log.error("C-MOVE destination needs TLS", extra=fields(**context, reason=str(exc)))
            raise DestinationUnavailable(f"{destination} needs TLS: no certificate configured") from None
        if not assoc.is_established:
            log.error("C-MOVE destination refused or unreachable", extra=fields(**context, peer=f"{peer.host}:{peer.port}"))
            raise DestinationUnavailable(f"cannot associate with {destination} at {peer.host}:{peer.port}")
        return assoc

    known = {item.sop_class_uid for item in plan if isinstance(item, InstanceRef)}
    outbound = Outbound(open_association, known=known, prepare=_throttle)
    originator = (event.assoc.requestor.ae_title, event.request.MessageID)
    try:
        _suboperations(event, service, plan, responses, outbound, originator, context)
    finally:
        outbound.release()


def handle_get(event: Event, service: RetrieveService) -> None:
    """EVT_C_GET handler: the C-STOREs go back on the requester's association."""
    responses = Responses(event, dimse_wire.C_GET_RSP)
    context = _log_context(event)
    plan = _plan(event, service, GET_MODELS, responses, context)
    if plan is None:
        return
    if not plan:
        responses.send(SUCCESS)
        return
    outbound = Outbound.requester(event.assoc, prepare=_throttle)
    try:
        _suboperations(event, service, plan, responses, outbound, None, context)
    finally:
        outbound.end_sending()


def _plan(event: Event, service: RetrieveService, models: dict, responses: Responses, context: dict) -> Plan | None:
    """What to send (series with their counts, or instances), or None after answering a failure."""
    started = time.monotonic()
    try:
        identifier = event.identifier
        context["level"] = str(identifier.get("QueryRetrieveLevel", ""))[:16]
        plan: Plan = list(dict.fromkeys(service.plan(identifier, models[event.request.AffectedSOPClassUID])))
    except QueryError as exc:
        log.error("retrieve refused", extra=fields(**context, status=f"0x{exc.code:04X}", reason=exc.comment))
        responses.send(exc.code, exc.comment, counts=False)
        return None
    except Exception as exc:
        log.error("retrieve failed unexpectedly", extra=fields(**context, error=type(exc).__name__))
        responses.send(UNABLE_TO_PROCESS, f"identifier cannot be processed: {type(exc).__name__}", counts=False)
        return None
    count = _planned_instances(plan)
    if count > MAX_SUBOPERATIONS:
        responses.send(TOO_MANY_MATCHES, f"{count} instances match; at most {MAX_SUBOPERATIONS} per request", counts=False)
        return None
    context["instances"] = count
    context["resolve_ms"] = int((time.monotonic() - started) * 1000)
    return plan


def _planned_instances(plan: Plan) -> int:
    return sum(item.instances if isinstance(item, SeriesRef) else 1 for item in plan)


def _suboperations(
    event: Event,
    service: RetrieveService,
    plan: Plan,
    responses: Responses,
    outbound: Outbound,
    originator: tuple[str, int] | None,
    context: dict,
) -> None:
    """Fetch (ahead, in a thread) and C-STORE every instance, with a Pending response after
    each; then the final response. `originator`: C-MOVE's (AE title, message ID)."""
    started = time.monotonic()
    expected = responses.remaining = _planned_instances(plan)
    sent: set[InstanceRef] = set()
    complete = False
    fetcher = Prefetcher(
        service.client, plan, service.staging_dir, whole_series=context.get("level") != "IMAGE",
        series_instances=lambda series: list(service.resolve(series_identifier(series), STUDY_ROOT)),
    )
    try:
        for fetched in fetcher:
            if event.is_cancelled:
                fetched.discard()
                log.info("retrieve cancelled", extra=fields(**context, completed=responses.completed))
                responses.send(CANCEL, failed_list=True)
                return
            msg_id = (event.request.MessageID + 1 + len(sent)) % 65536  # sub-operations get their own IDs
            try:
                outcome, reason = _send_one(service, fetched, outbound, msg_id, originator, responses.send_due)
            except DestinationUnavailable as exc:
                if not sent:  # nothing counted yet: the whole request is refused
                    responses.send(MOVE_DESTINATION_UNKNOWN, exc.comment, counts=False)
                    return
                outcome, reason = "failed", exc.comment
            responses.send_due()  # if this one never went out
            sent.add(fetched.ref)
            _count(responses, fetched.ref, outcome, reason, context)
            if not outbound.is_established or responses.lost:
                break
            responses.remaining = max(0, expected - len(sent))
            if responses.remaining:
                responses.pending()
        else:
            complete = not fetcher.broken
    finally:
        fetcher.close()
        outbound.end_sending()
    if not event.assoc.is_established or responses.lost:
        log.warning("retrieve responses not sent: connection lost", extra=fields(**context, completed=responses.completed))
        return
    if not complete:  # an association that broke (or the fetcher) leaves the rest unsent: failed
        for ref in fetcher.unsent(sent):
            _count(responses, ref, "failed", "not sent", None)
    responses.failed += fetcher.unnamed
    responses.remaining = 0
    code = responses.finish()
    log.info(
        "retrieve done",
        extra=fields(
            **context,
            status=f"0x{code:04X}",
            completed=responses.completed,
            failed=responses.failed,
            warning=responses.warning,
            associations=outbound.opened,
            duration_ms=int((time.monotonic() - started) * 1000),
        ),
    )


def _count(responses: Responses, ref: InstanceRef, outcome: str, reason: str, context: dict | None) -> None:
    """Add one sub-operation's outcome to the counts (a failure to the Failed SOP Instance UID
    List, and logged when `context` is given)."""
    if outcome == "completed":
        responses.completed += 1
    elif outcome == "warning":
        responses.warning += 1
    else:
        responses.failed += 1
        responses.failed_uids.append(ref.sop_instance_uid)
        if context is not None:
            log.warning("sub-operation failed", extra=fields(**context, sop_instance_uid=ref.sop_instance_uid, reason=reason))


def _send_one(
    service: RetrieveService,
    fetched: Fetched,
    outbound: Outbound,
    msg_id: int,
    originator: tuple[str, int] | None,
    meanwhile: Callable[[], None] | None = None,
) -> tuple[str, str]:
    """C-STORE one fetched instance (converted by the store first if the destination does not
    take its transfer syntax); (outcome, reason). `meanwhile` runs while the destination has
    the request. DestinationUnavailable: no association for it."""
    try:
        if fetched.meta is None:
            return "failed", fetched.reason
        assoc = outbound.association(fetched.meta.sop_class_uid)
        accepted = outbound.accepted(assoc, fetched.meta.sop_class_uid)
        if not accepted:
            return "failed", f"destination accepted no context for SOP class {fetched.meta.sop_class_uid}"
        stored_syntax = fetched.meta.transfer_syntax_uid
        if stored_syntax not in accepted:
            wanted = next((ts for ts in (EXPLICIT_VR_LE, IMPLICIT_VR_LE) if ts in accepted), next(iter(accepted)))
            fetched.discard()
            fetched = fetch_instance(service.client, fetched.ref, service.staging_dir, wanted)
            if fetched.meta is None:
                return "failed", f"destination does not accept {stored_syntax} and the store cannot convert it ({fetched.reason})"
            if fetched.meta.transfer_syntax_uid != wanted:
                return "failed", f"destination does not accept {stored_syntax}; the store sent {fetched.meta.transfer_syntax_uid}"
        try:
            response = _store(assoc, accepted[fetched.meta.transfer_syntax_uid], fetched, msg_id, originator, meanwhile)
        except Exception as exc:  # the association broke
            return "failed", f"C-STORE not sent: {type(exc).__name__}"
    finally:
        fetched.discard()
    code = getattr(response, "Status", None) if response is not None else None
    if code == SUCCESS:
        return "completed", ""
    if code is not None and code in (0xB000, 0xB006, 0xB007):
        return "warning", f"C-STORE status 0x{code:04X}"
    return "failed", "no C-STORE response" if code is None else f"C-STORE status 0x{code:04X}"


def _store(
    assoc: Any, context_id: int, fetched: Fetched, msg_id: int, originator: tuple[str, int] | None, meanwhile: Callable[[], None] | None
) -> Any:
    """The C-STORE request of a fetched instance, its data set sent exactly as fetched; the
    response primitive (None on a DIMSE timeout)."""
    meta = fetched.meta
    assert meta is not None
    command = dimse_wire.command_set(
        AffectedSOPClassUID=meta.sop_class_uid,
        CommandField=dimse_wire.C_STORE_RQ,
        MessageID=msg_id,
        Priority=dimse_wire.PRIORITY_LOW,
        CommandDataSetType=dimse_wire.DATA_SET,
        AffectedSOPInstanceUID=meta.sop_instance_uid,
        MoveOriginatorApplicationEntityTitle=originator[0] if originator else None,
        MoveOriginatorMessageID=originator[1] if originator else None,
    )
    return dimse_wire.send_and_wait(assoc, context_id, command, fetched.data_set(), meanwhile)


def _offered_contexts(sop_classes: set[str]) -> list[Any]:
    """One context per (SOP class, transfer syntax); fewer syntaxes when classes are many."""
    per_class = max(2, min(len(OFFERED_TRANSFER_SYNTAXES), MAX_CONTEXTS // max(1, len(sop_classes))))
    contexts = []
    for sop_class in sorted(sop_classes):
        for syntax in OFFERED_TRANSFER_SYNTAXES[:per_class]:
            contexts.append(build_context(sop_class, [syntax]))
    return contexts[:MAX_CONTEXTS]


MAX_QUEUED_PDUS = 32  # P-DATA waiting for the socket, per association (x the peer's PDU size)


def _throttle(assoc: Any) -> None:
    """Make P-DATA that goes through pynetdicom's DUL (TLS associations; see dimse_wire) wait
    for the socket: the PDUs of a data set are queued for the network thread without waiting,
    so a fast disk and a slow peer would put the whole instance in that queue. Only P-DATA
    waits: association control PDUs (release, abort) never do.
    """
    dul = assoc.dul
    if getattr(dul, "_throttled", False):
        return
    send_pdu = dul.send_pdu

    def throttled_send_pdu(primitive: Any) -> None:
        if isinstance(primitive, P_DATA):
            while dul.to_provider_queue.qsize() >= MAX_QUEUED_PDUS and dul.is_alive() and not dul._kill_thread:
                time.sleep(0.0005)
        send_pdu(primitive)

    dul.send_pdu = throttled_send_pdu
    dul._throttled = True


def _log_context(event: Event, **extra: Any) -> dict[str, Any]:
    return {"calling_aet": event.assoc.requestor.ae_title, "sop_class_uid": str(event.request.AffectedSOPClassUID), **extra}


# -- letting the handlers run the exchange -----------------------------------------------------

_ORIGINAL = {"_move_scp": QueryRetrieveServiceClass._move_scp, "_get_scp": QueryRetrieveServiceClass._get_scp}
_OURS = {evt.EVT_C_MOVE: (handle_move, "_move_scp", 0xC511), evt.EVT_C_GET: (handle_get, "_get_scp", 0xC411)}


def _exchange_scp(event_type: Any) -> Callable[..., None]:
    handler, method, error_status = _OURS[event_type]
    primitive = C_MOVE if event_type is evt.EVT_C_MOVE else C_GET

    def scp(self: QueryRetrieveServiceClass, req: Any, context: Any) -> None:
        bound = self.assoc.get_handlers(event_type)
        if not bound or bound[0] is not handler:  # someone else's AE: pynetdicom's own service
            _ORIGINAL[method](self, req, context)
            return
        try:
            evt.trigger(self.assoc, event_type, {"request": req, "context": context.as_tuple, "_is_cancelled": self.is_cancelled})
        except Exception as exc:  # a failure response rather than a silent association
            log.exception("retrieve handler failed", extra=fields(calling_aet=self.assoc.requestor.ae_title))
            rsp = primitive()
            rsp.MessageIDBeingRespondedTo = req.MessageID
            rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
            rsp.Status = error_status
            rsp.ErrorComment = f"adapter error: {type(exc).__name__}"[:64]
            if self.assoc.is_established:
                self.dimse.send_msg(rsp, context.context_id)

    return scp


def install() -> None:
    """Route C-MOVE/C-GET requests bound to our handlers to them (idempotent)."""
    QueryRetrieveServiceClass._move_scp = _exchange_scp(evt.EVT_C_MOVE)  # type: ignore[method-assign]
    QueryRetrieveServiceClass._get_scp = _exchange_scp(evt.EVT_C_GET)  # type: ignore[method-assign]
