"""C-FIND, C-MOVE and C-GET requests run by the adapter's own exchange instead of pynetdicom's.

pynetdicom's Query/Retrieve service class drives a handler through its generator protocol and
sends every response itself, encoded with pydicom (services/ handlers speak that protocol, so
they work on plain pynetdicom). For requests whose bound handler is the adapter's, these hooks
run the adapter's exchange instead: C-FIND sends find_responses' encoded identifiers as they
are (wire.py), C-MOVE and C-GET run retrieve_exchange.py. pynetdicom 3.0 has no public hook for
a handler that sends its own responses, so the service class's private SCP methods are
replaced (guarded: guard.py); requests bound to any other handler get pynetdicom's own.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

from dicom_adapter.logs import fields
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.events import Event
from pynetdicom.service_class import QueryRetrieveServiceClass

from edge_listener.services import query, retrieve
from edge_listener.services.query import PENDING, SUCCESS, Response
from edge_listener.services.statuses import error_comment

from . import wire
from .retrieve_exchange import get_exchange, move_exchange

log = logging.getLogger(__name__)

HANDLER_FAILED = 0xC311  # what pynetdicom answers when a C-FIND handler raises

_ORIGINAL_FIND = QueryRetrieveServiceClass._c_find_scp


def _request_event(scp: QueryRetrieveServiceClass, event_type: Any, req: Any, context: Any) -> Event:
    """The event pynetdicom would give the bound handler."""
    return Event(scp.assoc, event_type, {"request": req, "context": context.as_tuple, "_is_cancelled": scp.is_cancelled})


def _ours(scp: QueryRetrieveServiceClass, event_type: Any, handler: Callable) -> list[Any] | None:
    """The arguments bound with the adapter's `handler`, or None if another handler is bound."""
    bound = scp.assoc.get_handlers(event_type)
    return list(bound[1] or []) if bound and bound[0] is handler else None


def _find_scp(self: QueryRetrieveServiceClass, req: Any, context: Any) -> None:
    """C-FIND requests bound to query.handle_find: find_responses written by wire; any other
    AE's: pynetdicom's own service."""
    args = _ours(self, evt.EVT_C_FIND, query.handle_find)
    if args is None:
        _ORIGINAL_FIND(self, req, context)
        return

    def respond(code: int, comment: str = "", identifier: bytes | None = None) -> None:
        command = wire.response_command(
            wire.C_FIND_RSP, req.AffectedSOPClassUID, req.MessageID, code,
            error_comment(comment) if comment else None, data_set=identifier is not None,
        )
        wire.send(self.assoc, context.context_id, command, identifier)

    responses: Iterator[Response] = iter(())
    try:
        responses = query.find_responses(_request_event(self, evt.EVT_C_FIND, req, context), *args)
        for code, comment, identifier in responses:
            if not self.assoc.is_established:
                return
            respond(code, comment, identifier)
            if code != PENDING:
                return
        if self.assoc.is_established:
            respond(SUCCESS)
    except OSError:  # the connection broke: nothing left to answer on (the DUL knows, see wire)
        log.warning("C-FIND responses not sent: connection lost", extra=fields(calling_aet=self.assoc.requestor.ae_title))
    except Exception as exc:  # a failure response rather than a silent association
        log.error("C-FIND handler failed", extra=fields(calling_aet=self.assoc.requestor.ae_title, error=type(exc).__name__))
        if self.assoc.is_established:
            respond(HANDLER_FAILED, f"adapter error: {type(exc).__name__}")
    finally:
        getattr(responses, "close", lambda: None)()  # find_responses' own finally (stops the paging) now


_ORIGINAL = {"_move_scp": QueryRetrieveServiceClass._move_scp, "_get_scp": QueryRetrieveServiceClass._get_scp}
_OURS = {
    evt.EVT_C_MOVE: (retrieve.handle_move, move_exchange, "_move_scp", 0xC511, C_MOVE),
    evt.EVT_C_GET: (retrieve.handle_get, get_exchange, "_get_scp", 0xC411, C_GET),
}


def _exchange_scp(event_type: Any) -> Callable[..., None]:
    handler, exchange, method, error_status, primitive = _OURS[event_type]

    def scp(self: QueryRetrieveServiceClass, req: Any, context: Any) -> None:
        args = _ours(self, event_type, handler)
        if args is None:  # someone else's AE: pynetdicom's own service
            _ORIGINAL[method](self, req, context)
            return
        try:
            exchange(_request_event(self, event_type, req, context), *args)
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
    """Route the requests bound to the adapter's C-FIND, C-MOVE and C-GET handlers to its own
    exchange (idempotent)."""
    QueryRetrieveServiceClass._c_find_scp = _find_scp  # type: ignore[method-assign]
    QueryRetrieveServiceClass._move_scp = _exchange_scp(evt.EVT_C_MOVE)  # type: ignore[method-assign]
    QueryRetrieveServiceClass._get_scp = _exchange_scp(evt.EVT_C_GET)  # type: ignore[method-assign]
