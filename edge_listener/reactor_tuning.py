"""Make pynetdicom's reactors poll fast while an association is busy, and slowly when idle.

pynetdicom runs two polling loops per association (the DUL reactor reading PDUs and the
association reactor serving messages); each sleeps 1 ms whenever it finds nothing to do. On a
request/response protocol those sleeps sit in the critical path of every C-STORE: measured on
the bare receiver (bench/bare_receiver.py, 1000 x 70 KB, one association), 0.1 ms sleeps take
it from ~235 to ~320 instances/s at the same CPU per instance. Always polling at 0.1 ms would
cost ~22 % of a core per *idle* association (measured: 4 idle associations, 90 % of a core),
so the short sleep applies only within BUSY_WINDOW_S after the association last received a
DIMSE message, and pynetdicom's own 1 ms sleep applies otherwise. With several busy
associations the slow sleeps no longer cost throughput (the associations overlap each other's
waits) while the fast ones would fight over the interpreter lock (measured: 4 associations
fell from 1.0 to 0.95 x one), so fast polling is kept for at most FAST_POLL_MAX_BUSY of them.

pynetdicom has no setting for the association reactor's sleep, so both modules are given a
`time` namespace whose `sleep` consults the association of the calling thread. Everything else
in those modules' `time` is the real one.
"""

from __future__ import annotations

import select
import threading
import time
import types

from pynetdicom import association as _association_module
from pynetdicom import dul as _dul_module
from pynetdicom import evt

BUSY_WINDOW_S = 0.05
FAST_SLEEP_S = 0.0001
FAST_POLL_MAX_BUSY = 2
_real_sleep = time.sleep
_monotonic = time.monotonic
_busy_until: dict[int, float] = {}  # id(association) -> end of its busy window


def _association_of_current_thread():
    thread = threading.current_thread()
    if isinstance(thread, _association_module.Association):
        return thread
    return getattr(thread, "assoc", None)  # the DUL reactor thread


def _adaptive_sleep(seconds: float) -> None:
    if seconds > FAST_SLEEP_S:
        assoc = _association_of_current_thread()
        now = _monotonic()
        if assoc is not None and _busy_until.get(id(assoc), 0.0) > now:
            busy = sum(1 for until in list(_busy_until.values()) if until > now)
            if busy <= FAST_POLL_MAX_BUSY:
                seconds = FAST_SLEEP_S
    _wait_for_input(seconds)


def _wait_for_input(seconds: float) -> None:
    """Sleep, but in a DUL reactor wake as soon as its socket has data: the peer's answer is
    then read at once instead of after the sleep (a tenth of a millisecond or more per
    request/response round trip). Same CPU as the sleep: select() blocks for the same time."""
    thread = threading.current_thread()
    sock = getattr(getattr(thread, "socket", None), "socket", None) if isinstance(thread, _dul_module.DULServiceProvider) else None
    if sock is not None and not getattr(thread, "reading_suspended", False):  # (dimse_wire may read it instead)
        try:
            select.select([sock], [], [], seconds)
            return
        except (OSError, ValueError):  # closed meanwhile: the reactor finds out itself
            pass
    _real_sleep(seconds)


def mark_busy(event: evt.Event) -> None:
    """EVT_DIMSE_RECV (and EVT_DIMSE_SENT) handler: this association is in an exchange."""
    mark_assoc_busy(event.assoc)


def mark_assoc_busy(assoc: object) -> None:
    """The same for messages sent past pynetdicom's send_msg (dimse_wire.py): no event there."""
    _busy_until[id(assoc)] = _monotonic() + BUSY_WINDOW_S


def forget(event: evt.Event) -> None:
    """EVT_CONN_CLOSE handler."""
    _busy_until.pop(id(event.assoc), None)


# For associations we open ourselves (C-MOVE destinations): busy from our first request on.
BUSY_HANDLERS = [(evt.EVT_DIMSE_SENT, mark_busy), (evt.EVT_DIMSE_RECV, mark_busy), (evt.EVT_CONN_CLOSE, forget)]


def install() -> None:
    """Give pynetdicom's reactor modules the adaptive sleep (idempotent)."""
    for module in (_association_module, _dul_module):
        if isinstance(module.time, types.SimpleNamespace):
            continue
        shim = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("__")})
        shim.sleep = _adaptive_sleep
        module.time = shim  # type: ignore[assignment]
