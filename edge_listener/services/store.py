"""C-STORE SCP: make the received instance durable in the buffer, then (and only then) ack.

The received data set is in a reception file in the buffer's incoming folder, behind the
adapter's file meta (buffer/reception.py). store_received checks that data set by its element
headers, routes it, and hands it to the buffer (buffer/buffering.py: the spool queue locally, a
GCS object plus a Pub/Sub event in the cloud); Success is answered once the buffer has it.
Anything that fails on the way answers a failure status with an Error Comment and leaves
nothing to upload (the reception file is deleted).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from dicom_adapter.events import BufferedInstance
from dicom_adapter.logs import fields
from dicom_adapter.part10 import MalformedDataset, read_file_meta, summarize_dataset
from dicom_adapter.routing import DEFAULT_LABEL, Destination, RoutingTable, read_routing_header
from pydicom.dataset import Dataset
from pynetdicom.events import Event

from edge_listener import metrics
from edge_listener.buffer.buffering import BufferRefused, InstanceBuffer
from .statuses import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SUCCESS,
    status,
)
from edge_listener.buffer.high_water import BufferFull
from edge_listener.buffer.reception import ReceptionFile, new_reception

log = logging.getLogger(__name__)


class Refused(Exception):
    """The instance cannot be accepted; carries the DIMSE status and its explanation."""

    def __init__(self, code: int, comment: str) -> None:
        super().__init__(comment)
        self.code = code
        self.comment = comment


@dataclass
class StoreService:
    """What the C-STORE handler needs: the rules that say where instances go, and the buffer
    to put them into."""

    buffer: InstanceBuffer
    routing: RoutingTable = field(default_factory=lambda: RoutingTable(()))


def handle_store(event: Event, service: StoreService) -> Dataset | int:
    """EVT_C_STORE handler. pynetdicom has written the data set into a file of its own
    (STORE_RECV_CHUNKED_DATASET): its data set is copied behind the adapter's file meta into a
    reception file, which is then buffered. (The fast path receives straight into the
    reception file instead: front/fastpath/direct_store.py.)"""
    request = event.request
    sop_class_uid = str(request.AffectedSOPClassUID or "")
    sop_instance_uid = str(request.AffectedSOPInstanceUID or "")
    transfer_syntax_uid = str(event.context.transfer_syntax)
    reception = new_reception(event.assoc)
    try:
        reception.write_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax_uid)
        _copy_received(event, reception)
        code, comment = store_received(
            reception,
            service,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            calling_aet=event.assoc.requestor.ae_title,
            called_aet=event.assoc.acceptor.ae_title,
        )
    finally:
        reception.remove()  # gone into the buffer, or refused: either way not ours any more
    return SUCCESS if code == SUCCESS else status(code, comment)  # a bare status on the path of every ack


def _copy_received(event: Event, reception: ReceptionFile) -> None:
    """The data set of pynetdicom's reception file into `reception` (a failure is kept in
    reception.error, and answered as a spool failure)."""
    if reception.error is not None:
        return
    try:
        with open(event.dataset_path, "rb") as received:
            read_file_meta(received)  # positions it at the data set
            reception.copy_dataset(received)
    except (OSError, MalformedDataset, AttributeError) as exc:
        reception.error = exc if isinstance(exc, OSError) else OSError(errno.EIO, f"pynetdicom's reception unreadable: {exc}")


def store_received(
    reception: ReceptionFile,
    service: StoreService,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    calling_aet: str,
    called_aet: str,
) -> tuple[int, str]:
    """Buffer a received C-STORE data set; the DIMSE status to answer and its Error Comment.
    Logs the outcome (no PHI: UIDs, AE titles, sizes, statuses)."""
    started = time.monotonic()
    context = {
        "sop_instance_uid": sop_instance_uid,
        "sop_class_uid": sop_class_uid,
        "calling_aet": calling_aet,
        "transfer_syntax_uid": transfer_syntax_uid,
    }
    try:
        events = buffer_instance(
            reception,
            service,
            transfer_syntax_uid=transfer_syntax_uid,
            command_sop_class_uid=sop_class_uid,
            command_sop_instance_uid=sop_instance_uid,
            calling_aet=calling_aet,
            called_aet=called_aet,
        )
    except Refused as refusal:
        log.error("C-STORE refused", extra=fields(**context, status=f"0x{refusal.code:04X}", reason=refusal.comment))
        metrics.count_rejected(refusal.code)
        return refusal.code, refusal.comment
    except Exception as exc:  # never let a handler error become pynetdicom's bare 0xC211
        log.exception("C-STORE failed unexpectedly", extra=fields(**context))
        metrics.count_rejected(OUT_OF_RESOURCES)
        return OUT_OF_RESOURCES, f"adapter error: {type(exc).__name__}"
    duration_ms = int((time.monotonic() - started) * 1000)
    for event in events:
        log.info("buffered", extra=fields(**event.log_fields(), duration_ms=duration_ms))
    metrics.count_buffered(events[0].size if events else 0, [event.destination_label or DEFAULT_LABEL for event in events])
    return SUCCESS, ""


def buffer_instance(
    reception: ReceptionFile,
    service: StoreService,
    *,
    transfer_syntax_uid: str,
    command_sop_class_uid: str,
    command_sop_instance_uid: str,
    calling_aet: str,
    called_aet: str,
) -> list[BufferedInstance]:
    """Check the received Part-10 file, route it, and put it into the buffer; return its events
    (one per destination)."""
    reception.flush()
    if reception.error is not None or reception.dataset_offset is None:
        raise Refused(OUT_OF_RESOURCES, _spool_failure(reception.error or OSError(errno.EIO, "no data set written")))
    received = Path(reception.name)
    with open(received, "rb") as source:
        size = os.fstat(source.fileno()).st_size
        try:
            summary = summarize_dataset(source, reception.dataset_offset, size, transfer_syntax_uid)
        except MalformedDataset as exc:
            raise Refused(CANNOT_UNDERSTAND, f"malformed data set: {exc}") from None
    # The file meta holds the command's UIDs; they must be the data set's.
    _check_uids(summary.sop_class_uid, summary.sop_instance_uid, command_sop_class_uid, command_sop_instance_uid)
    destinations = _route(service.routing, received, calling_aet, called_aet)
    instance = BufferedInstance(
        buffer_uri="",
        sop_class_uid=summary.sop_class_uid,
        sop_instance_uid=summary.sop_instance_uid,
        study_instance_uid=summary.study_instance_uid,
        series_instance_uid=summary.series_instance_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        calling_aet=calling_aet,
        called_aet=called_aet,
        size=size,
    )
    try:
        return service.buffer.put(reception, instance, destinations)
    except OSError as exc:
        raise Refused(OUT_OF_RESOURCES, _spool_failure(exc)) from None
    except BufferRefused as refusal:
        raise Refused(OUT_OF_RESOURCES, refusal.comment) from None


def _route(routing: RoutingTable, received: Path, calling_aet: str, called_aet: str) -> tuple[Destination | None, ...]:
    header = None
    if routing.needs_dataset:
        try:
            header = read_routing_header(received, routing.tags)
        except Exception as exc:  # pydicom raises many types on odd encodings
            raise Refused(CANNOT_UNDERSTAND, f"header unreadable for routing: {type(exc).__name__}") from None
    destinations = routing.route(calling_aet, called_aet, header)
    if not destinations:
        raise Refused(PROCESSING_FAILURE, "no routing rule matches and there is no default store")
    return destinations


def _spool_failure(exc: OSError) -> str:
    if isinstance(exc, BufferFull):
        return "buffer full: spool disk above its high-water mark"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "spool disk full"
    return f"spool write failed: {exc.strerror or exc}"


_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def _check_uids(dataset_class: str, dataset_instance: str, command_class: str, command_instance: str) -> None:
    if not dataset_instance:
        raise Refused(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "data set has no SOP Instance UID (0008,0018)")
    if not dataset_class:
        raise Refused(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "data set has no SOP Class UID (0008,0016)")
    # The UID names the spool file and goes into DICOMweb URLs: only a well-formed one may.
    if len(dataset_instance) > 64 or not _UID.fullmatch(dataset_instance):
        raise Refused(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "SOP Instance UID is not a valid UID")
    if dataset_instance != command_instance:
        raise Refused(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "SOP Instance UID differs from the command's")
    if dataset_class != command_class:
        raise Refused(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class UID differs from the command's")
