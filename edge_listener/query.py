"""C-FIND SCP: answer Patient Root and Study Root queries from the DICOMweb store.

The identifier is translated into QIDO-RS searches by the shared `dicom_adapter.qido` (in
process in local mode; the `qido` Cloud Function in cloud mode, through qido_client.py), and
each match is sent as a Pending response as soon as its page arrives. A C-CANCEL stops the
paging. Responses are encoded in the requester's Specific Character Set when it can hold every
value, in UTF-8 (ISO_IR 192) otherwise. Identifier values are never logged (they are PHI).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from dicom_adapter.logs import fields
from dicom_adapter.qido import PATIENT_ROOT, STUDY_ROOT, QueryError
from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from .dimse import CANNOT_UNDERSTAND, status

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCEL = 0xFE00
UNABLE_TO_PROCESS = 0xC001  # C-FIND "unable to process" (0xC000-0xCFFF), 0xC000 is kept for bad identifiers

FIND_MODELS = {
    PatientRootQueryRetrieveInformationModelFind: PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelFind: STUDY_ROOT,
}
# Query identifiers are small: the uncompressed syntaxes cover every SCU.
QUERY_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"]
_TEXT_VRS = {"PN", "LO", "SH", "ST", "LT", "UT", "UC"}

# (identifier, model) -> matches; raises QueryError. qido.find bound to a client, or qido_client.
Finder = Callable[[Dataset, str], Iterator[Dataset]]


@dataclass
class QueryService:
    """C-FIND: the contexts it adds to the AE and the handler bound to EVT_C_FIND."""

    find: Finder
    contexts: list[tuple[str, list[str]]] = field(
        default_factory=lambda: [(sop_class, QUERY_TRANSFER_SYNTAXES) for sop_class in FIND_MODELS]
    )

    def handlers(self) -> list[tuple[Any, ...]]:
        return [(evt.EVT_C_FIND, handle_find, [self])]


def handle_find(event: Event, service: QueryService) -> Iterator[tuple[Any, Dataset | None]]:
    """EVT_C_FIND handler: Pending per match, then Success, Cancel or a failure with a comment."""
    started = time.monotonic()
    context = {"calling_aet": event.assoc.requestor.ae_title, "sop_class_uid": str(event.request.AffectedSOPClassUID)}
    model = FIND_MODELS.get(event.request.AffectedSOPClassUID)
    try:
        identifier = event.identifier
        requested_charset = identifier.get("SpecificCharacterSet")
        context["level"] = str(identifier.get("QueryRetrieveLevel", ""))[:16]
    except Exception as exc:
        log.error("C-FIND identifier cannot be decoded", extra=fields(**context, error=type(exc).__name__))
        yield status(CANNOT_UNDERSTAND, "identifier cannot be decoded"), None
        return
    matches = service.find(identifier, model or STUDY_ROOT)
    count = 0
    try:
        for match in matches:
            if event.is_cancelled:
                log.info("C-FIND cancelled", extra=fields(**context, matches=count))
                yield CANCEL, None
                return
            yield PENDING, with_character_set(match, requested_charset)
            count += 1
    except QueryError as exc:
        log.error("C-FIND failed", extra=fields(**context, status=f"0x{exc.code:04X}", reason=exc.comment))
        yield status(exc.code, exc.comment), None
        return
    except Exception as exc:  # never let a handler error become pynetdicom's bare 0xC311
        log.error("C-FIND failed unexpectedly", extra=fields(**context, error=type(exc).__name__))
        yield status(UNABLE_TO_PROCESS, f"adapter error: {type(exc).__name__}"), None
        return
    finally:
        close = getattr(matches, "close", None)
        if close is not None:
            close()  # stops the paging
    log.info("C-FIND done", extra=fields(**context, matches=count, duration_ms=int((time.monotonic() - started) * 1000)))


def with_character_set(match: Dataset, requested: Any) -> Dataset:
    """Give the match the requester's character set if it holds every text value, else UTF-8."""
    requested_terms = _terms(requested)
    texts = [str(element.value) for element in match if element.VR in _TEXT_VRS and not element.is_empty]
    if _encodable(texts, requested_terms):
        if requested_terms:
            match.SpecificCharacterSet = requested
        return match
    match.SpecificCharacterSet = "ISO_IR 192"
    return match


def _terms(value: Any) -> list[str]:
    """Specific Character Set terms (one string or a multi-value), empty ones dropped."""
    if not value:
        return []
    values = [value] if isinstance(value, str) else list(value)
    return [str(term).strip() for term in values if str(term).strip()]


def _encodable(texts: list[str], terms: list[str]) -> bool:
    if not terms:  # the default repertoire
        return all(text.isascii() for text in texts)
    if len(terms) > 1 or terms[0].startswith("ISO 2022"):
        return True  # code extensions: pydicom switches sets as it encodes
    codec = python_encoding.get(terms[0].strip())
    if codec is None:
        return False
    try:
        for text in texts:
            text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True
