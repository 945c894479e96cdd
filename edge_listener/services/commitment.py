"""Storage Commitment SCP (push model): N-ACTION in, N-EVENT-REPORT out.

The N-ACTION is answered at once; then, in a thread of its own, each referenced instance is
looked up in the DICOM store by QIDO-RS (its SOP Class must be the one the requester names).
An instance not in the store yet but still in our buffer (queued for upload) is waited for, a
bounded time. The result goes to the requester in an N-EVENT-REPORT on a new association (its
address from the AET dictionary), calling as --dimse_cmove_aet:
  event type 1: every instance committed; 2: some failed, each with a reason:
  0x0112 no such object instance, 0x0119 class/instance conflict, 0x0110 processing failure.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from dicom_adapter.aets import Peer
from dicom_adapter.buffers.spool import Spool, sop_instance_uid_of
from dicom_adapter.dicomweb import DicomWebClient, DicomWebError
from dicom_adapter.dimse_tls import TlsFiles, associate
from dicom_adapter.logs import fields
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModel

from .statuses import status
from .query import QUERY_TRANSFER_SYNTAXES

log = logging.getLogger(__name__)

STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known SOP Instance
REQUEST_COMMIT = 1
ALL_COMMITTED, SOME_FAILED = 1, 2
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
NO_SUCH_ACTION_TYPE = 0x0123
MISSING_ATTRIBUTE = 0x0120
INVALID_ARGUMENT = 0x0115


@dataclass
class CommitmentService:
    """Storage Commitment: the context it adds and the handler bound to EVT_N_ACTION."""

    client: DicomWebClient
    peers: dict[str, Peer]
    spool: Spool | None = None  # instances still queued for upload are waited for
    calling_aet: str | None = None
    wait_for_buffered_s: float = 120.0
    poll_s: float = 0.5
    tls: TlsFiles | None = None  # our certificate towards requesters marked "tls"
    contexts: list[tuple[str, list[str]]] = field(default_factory=lambda: [(StorageCommitmentPushModel, QUERY_TRANSFER_SYNTAXES)])

    def handlers(self) -> list[tuple[Any, ...]]:
        return [(evt.EVT_N_ACTION, handle_commit, [self])]


@dataclass(frozen=True)
class Reference:
    sop_class_uid: str
    sop_instance_uid: str


def handle_commit(event: Event, service: CommitmentService) -> tuple[Dataset, None]:
    """EVT_N_ACTION handler: check the request, answer it, verify and report in the background."""
    requester = event.assoc.requestor.ae_title
    context = {"calling_aet": requester}
    if event.request.ActionTypeID != REQUEST_COMMIT:
        return status(NO_SUCH_ACTION_TYPE, f"action type {event.request.ActionTypeID} is not 1 (request commit)"), None
    try:
        info = event.action_information
        transaction_uid = str(info.get("TransactionUID") or "")
        references = [Reference(str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID)) for item in info.ReferencedSOPSequence]
    except Exception as exc:
        log.error("commitment request cannot be read", extra=fields(**context, error=type(exc).__name__))
        return status(MISSING_ATTRIBUTE, "Transaction UID or Referenced SOP Sequence missing or unreadable"), None
    if not transaction_uid or not references:
        return status(MISSING_ATTRIBUTE, "Transaction UID or Referenced SOP Sequence missing"), None
    peer = service.peers.get(requester)
    if peer is None:
        log.error("commitment requester unknown", extra=fields(**context))
        return status(PROCESSING_FAILURE, f"{requester} is not in the AET dictionary: no report address"), None
    calling_aet = service.calling_aet or event.assoc.acceptor.ae_title
    log.info("commitment requested", extra=fields(**context, transaction_uid=transaction_uid, instances=len(references)))
    threading.Thread(
        target=_verify_and_report, args=(service, peer, calling_aet, transaction_uid, references), name="commitment", daemon=True
    ).start()
    return status(0x0000), None


def _verify_and_report(service: CommitmentService, peer: Peer, calling_aet: str, transaction_uid: str, references: list[Reference]) -> None:
    try:
        deadline = time.monotonic() + service.wait_for_buffered_s
        outcomes = [(ref, verify(service, ref, deadline)) for ref in references]
        report(peer, calling_aet, transaction_uid, outcomes, service.tls)
    except Exception:
        log.exception("commitment report failed", extra=fields(called_aet=peer.name, transaction_uid=transaction_uid))


def verify(service: CommitmentService, ref: Reference, deadline: float) -> int | None:
    """None if the store holds the instance with that SOP class, else the failure reason."""
    while True:
        try:
            found = next(iter(service.client.search_for_instances(search_filters={"SOPInstanceUID": ref.sop_instance_uid, "includefield": "SOPClassUID"}, page_size=2)), None)
        except DicomWebError:
            found = None
            if not _buffered(service.spool, ref.sop_instance_uid):
                return PROCESSING_FAILURE
        if found is not None:
            stored_class = ((found.get("00080016") or {}).get("Value") or [""])[0]
            return None if stored_class == ref.sop_class_uid else CLASS_INSTANCE_CONFLICT
        if not _buffered(service.spool, ref.sop_instance_uid) or time.monotonic() > deadline:
            return NO_SUCH_OBJECT_INSTANCE
        time.sleep(service.poll_s)


def _buffered(spool: Spool | None, sop_instance_uid: str) -> bool:
    """Is the instance in our buffer, still waiting for its upload?"""
    if spool is None:
        return False
    return any(sop_instance_uid_of(path.name) == sop_instance_uid for path in spool.queue.glob(f"*-{sop_instance_uid}-*"))


def report(
    peer: Peer, calling_aet: str, transaction_uid: str, outcomes: list[tuple[Reference, int | None]], tls: TlsFiles | None = None
) -> None:
    """Send the N-EVENT-REPORT on a new association to the requester (TLS if it is marked so)."""
    info = Dataset()
    info.TransactionUID = transaction_uid
    committed, failed = [], []
    for ref, reason in outcomes:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
        if reason is None:
            committed.append(item)
        else:
            item.FailureReason = reason
            failed.append(item)
    if committed:
        info.ReferencedSOPSequence = committed
    if failed:
        info.FailedSOPSequence = failed
    event_type = ALL_COMMITTED if not failed else SOME_FAILED
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    contexts = [build_context(StorageCommitmentPushModel, QUERY_TRANSFER_SYNTAXES)]
    assoc = associate(ae, peer, tls, contexts=contexts, ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)])
    where = {"called_aet": peer.name, "transaction_uid": transaction_uid, "committed": len(committed), "failed": len(failed)}
    if not assoc.is_established:
        log.error("commitment report not delivered: association refused", extra=fields(**where))
        return
    try:
        response, _ = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
        code = int(response.Status) if "Status" in response else None
    finally:
        if assoc.is_established:
            assoc.release()
    if code == 0x0000:
        log.info("commitment reported", extra=fields(**where))
    else:
        log.error("commitment report not acknowledged", extra=fields(**where, status=code))

