"""The fast path: every replacement of pynetdicom's internals, installed by one call, behind
one guard.

Plain pynetdicom serves every DIMSE service of the adapter correctly through its public
handler protocol (the services package is written to it). For speed, and for what that
protocol cannot express, this package changes how pynetdicom works inside:

- reactor_waits.py  the two reactor threads per association wait for work instead of polling
                    every millisecond (idle CPU, and latency on every request/response);
- direct_store.py   C-STORE requests received into the buffer and answered in the network
                    thread, with no pydicom decode of the command set (a third of the CPU);
- wire.py           DIMSE messages written straight onto the socket (C-STORE responses; the
                    C-FIND, C-MOVE and C-GET exchanges) instead of encoded with pydicom;
- exchanges.py      the C-FIND, C-MOVE and C-GET requests bound to the adapter's handlers run
                    the adapter's own exchange: streaming, one outbound association per
                    C-MOVE calling as --dimse_cmove_aet, the store converting what a
                    destination cannot take;
- bounds.py         each PDU read against a size limit and a deadline: protection, not speed,
                    so it stays on with the fast path off, as long as the pynetdicom code it
                    relies on is unchanged (guard.bounds_mismatches).

`install()` checks guard.py first (the exact pynetdicom version, and the source of every
pynetdicom function all this relies on). On a mismatch it installs nothing and logs a WARNING
naming the difference: the edge then serves on plain pynetdicom, slower, with the
differences docs/architecture.md lists. Nothing outside this package names a private
pynetdicom attribute (tests/test_architecture.py).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_adapter.logs import fields

from . import guard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FastPathState:
    active: bool
    reason: str  # why it is off ("" when on)
    bounds: bool  # PDUs read through bounds.py


_lock = threading.Lock()
_state: FastPathState | None = None


def install(enabled: bool = True) -> FastPathState:
    """Install the fast path once per process if `enabled` and the guard allows; the state."""
    global _state
    with _lock:
        if _state is not None:  # (patches cannot be taken back: the first call decides)
            return _state
        bounds_problems = guard.bounds_mismatches()
        if bounds_problems:
            log.warning("PDU size and time bounds off: pynetdicom reads PDUs unchecked", extra=fields(reason="; ".join(bounds_problems)))
        bounds = not bounds_problems
        if not enabled:
            _state = FastPathState(False, "turned off (--dimse_fast_path off)", bounds)
            log.info("DIMSE fast path off: serving on plain pynetdicom", extra=fields(reason=_state.reason))
            return _state
        problems = guard.mismatches()
        if problems:
            _state = FastPathState(False, "; ".join(problems), bounds)
            log.warning(
                "DIMSE fast path off: serving on plain pynetdicom (slower)",
                extra=fields(reason=_state.reason, pynetdicom=guard.installed_pynetdicom_version() or "none"),
            )
            return _state
        from . import direct_store, exchanges, reactor_waits, wire

        reactor_waits.install()
        wire.install_fast_store_responses()
        direct_store.install()
        exchanges.install()
        _state = FastPathState(True, "", bounds)
        return _state


def request_handler() -> Any:
    """The handler class of accepted connections: guarded reads (bounds.py) where the guard
    allows them, pynetdicom's own otherwise."""
    if _state is not None and _state.bounds:
        from .bounds import GuardedRequestHandler

        return GuardedRequestHandler
    from pynetdicom.transport import RequestHandler

    return RequestHandler


def discard_partial(assoc: Any) -> bool:
    """On connection close: remove the file of a C-STORE data set cut off mid-transfer (one
    the fast path was receiving, or pynetdicom's own reception of it); True if there was one."""
    if _state is None or not _state.active:
        return False  # plain pynetdicom: reception.discard_stale_files removes it later
    from . import direct_store

    if direct_store.discard_partial(assoc):
        return True
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    partial_file = getattr(message, "_data_set_file", None)  # a C-STORE direct_store left to pynetdicom
    if partial_file is None or not getattr(partial_file, "name", ""):
        return False
    try:
        partial_file.close()
        Path(partial_file.name).unlink(missing_ok=True)
    except OSError:
        return False
    return True
