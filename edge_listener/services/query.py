"""C-FIND SCP: answer Patient Root and Study Root queries from the DICOMweb store.

The identifier is translated into QIDO-RS searches by the shared `dicom_adapter.qido` (in
process in local mode; the `qido` Cloud Function in cloud mode, through qido_client.py), and
each match is sent as a Pending response as soon as its page arrives; the paging runs in a
thread of its own (read_ahead), so the store searches the next page while this one is sent. A
C-CANCEL stops the paging. Responses are encoded in the requester's Specific Character Set
when it can hold every value, in UTF-8 (ISO_IR 192) otherwise (identifier_encoding.py, straight
from the DICOM JSON). Identifier values are never logged (they are PHI).

pynetdicom's C-FIND service would want each match as a Dataset and encode it and its command
set with pydicom (most of the CPU per match), so the fast path sends find_responses' bytes
itself (front/fastpath/exchanges.py); on plain pynetdicom, handle_find hands them to it.
"""

from __future__ import annotations

import logging
from io import BytesIO
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

from dicom_adapter.logs import fields
from dicom_adapter.qido import PATIENT_ROOT, STUDY_ROOT, QueryError
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.dsutils import decode
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from .statuses import CANNOT_UNDERSTAND, status
from .identifier_encoding import encode_identifier

log = logging.getLogger(__name__)

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
UNABLE_TO_PROCESS = 0xC001  # C-FIND "unable to process" (0xC000-0xCFFF), 0xC000 is kept for bad identifiers

FIND_MODELS = {
    PatientRootQueryRetrieveInformationModelFind: PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelFind: STUDY_ROOT,
}
# Query identifiers are small: the uncompressed syntaxes cover every SCU.
QUERY_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"]
READ_AHEAD = 1000  # matches the paging thread may be ahead of the responses (two default pages)

# (identifier, model) -> matches as DICOM JSON; raises QueryError. qido.find_json bound to a
# client, or qido_client's find_json.
Finder = Callable[[Dataset, str], Iterator[dict[str, Any]]]
# What handle_find yields: (status, error comment, encoded identifier of a Pending response).
Response = tuple[int, str, "bytes | None"]


@dataclass
class QueryService:
    """C-FIND: the contexts it adds to the AE and the handler bound to EVT_C_FIND."""

    find: Finder
    contexts: list[tuple[str, list[str]]] = field(
        default_factory=lambda: [(sop_class, QUERY_TRANSFER_SYNTAXES) for sop_class in FIND_MODELS]
    )

    def handlers(self) -> list[tuple[Any, ...]]:
        return [(evt.EVT_C_FIND, handle_find, [self])]


def handle_find(event: Event, service: QueryService) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """EVT_C_FIND handler, in pynetdicom's protocol: (status, identifier) per response. The
    identifiers are find_responses' encoding, read back as a pydicom Dataset whose elements
    pynetdicom writes out unchanged; a failure is a status Dataset carrying its Error Comment.
    (The fast path sends find_responses' bytes as they are: fastpath/exchanges.py.)"""
    syntax = UID(event.context.transfer_syntax)
    for code, comment, identifier in find_responses(event, service):
        if identifier is not None:
            yield code, decode(BytesIO(identifier), syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
        else:
            yield status(code, comment) if comment else code, None


def find_responses(event: Event, service: QueryService) -> Iterator[Response]:
    """The responses to a C-FIND: Pending per match, its identifier encoded in the requested
    character set; then Cancel, or a failure with a comment. (Success after the last match is
    the caller's.)"""
    started = time.monotonic()
    context = {"calling_aet": event.assoc.requestor.ae_title, "sop_class_uid": str(event.request.AffectedSOPClassUID)}
    model = FIND_MODELS.get(event.request.AffectedSOPClassUID)
    try:
        identifier = event.identifier
        requested_charset = identifier.get("SpecificCharacterSet")
        context["level"] = str(identifier.get("QueryRetrieveLevel", ""))[:16]
    except Exception as exc:
        log.error("C-FIND identifier cannot be decoded", extra=fields(**context, error=type(exc).__name__))
        yield CANNOT_UNDERSTAND, "identifier cannot be decoded", None
        return
    transfer_syntax = str(event.context.transfer_syntax)
    matches = read_ahead(service.find(identifier, model or STUDY_ROOT), READ_AHEAD)
    count = 0
    try:
        for match in matches:
            if event.is_cancelled:
                log.info("C-FIND cancelled", extra=fields(**context, matches=count))
                yield CANCEL, "", None
                return
            yield PENDING, "", encode_identifier(match, requested_charset, transfer_syntax)
            count += 1
    except QueryError as exc:
        log.error("C-FIND failed", extra=fields(**context, status=f"0x{exc.code:04X}", reason=exc.comment))
        yield exc.code, exc.comment, None
        return
    except Exception as exc:  # never let a handler error become a bare failure
        log.error("C-FIND failed unexpectedly", extra=fields(**context, error=type(exc).__name__))
        yield UNABLE_TO_PROCESS, f"adapter error: {type(exc).__name__}", None
        return
    finally:
        matches.close()  # stops the paging
    log.info("C-FIND done", extra=fields(**context, matches=count, duration_ms=int((time.monotonic() - started) * 1000)))


T = TypeVar("T")


def read_ahead(source: Iterator[T], depth: int) -> Iterator[T]:
    """`source` (the paged QIDO search) run in a thread of its own, at most `depth` items ahead
    of the consumer, its exceptions raised in the consumer. Closing the result stops the
    source after the item (page request) under way and closes it in its thread, without
    waiting for that request."""
    items: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                items.put((kind, value), timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in source:
                if not put("item", item):
                    return
            put("end", None)
        except BaseException as exc:  # handed to the consumer
            put("error", exc)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name="qido-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
