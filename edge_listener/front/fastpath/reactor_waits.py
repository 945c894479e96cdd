"""Make pynetdicom's two reactor threads per association wait for work instead of polling.

pynetdicom runs two polling loops per association: the DUL reactor (reading PDUs, sending
what the association queues) and the association reactor (serving DIMSE messages, release,
abort, timeouts), each sleeping 1 ms whenever it finds nothing to do. Measured on the edge:
an open association with nothing to do cost 5.8 % of a core (four idle associations almost a
quarter of one), and on a request/response exchange every sleep is latency. Here each loop
waits until there is something for it, with IDLE_WAIT_S as a backstop for what nobody
announces (a kill from another thread, the network idle timer):

- the DUL reactor waits in select() on its socket and on a wake-up pipe, written to when a
  PDU is queued for it to send (send_pdu) or it is told to stop. While its ARTIM timer runs
  (association setup and release) it keeps pynetdicom's 1 ms steps, so the timer fires on time.
- the association reactor waits on an Event that the DUL reactor sets after every state
  machine action that gives it something (a DIMSE message, a release or abort indication),
  that is, after every action except a C-STORE fragment taken by direct_store.py.

pynetdicom has no setting for either wait, so both modules are given a `time` namespace whose
`sleep` does this for the two reactor loops (found by the calling function's name) and is
the real sleep for every other caller.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
import types
from typing import Any

from pynetdicom import association as _association_module
from pynetdicom import dul as _dul_module
from pynetdicom.fsm import StateMachine

IDLE_WAIT_S = 0.05
_real_sleep = time.sleep
_pipe_lock = threading.Lock()  # a wake-up pipe is never written after it is closed (its fd may be reused)


def _reactor_sleep(seconds: float) -> None:
    caller = sys._getframe(1).f_code.co_name
    thread = threading.current_thread()
    if caller == "run_reactor" and isinstance(thread, _dul_module.DULServiceProvider):
        _dul_wait(thread, seconds)
    elif caller == "_run_reactor" and isinstance(thread, _association_module.Association):
        _association_wait(thread)
    else:
        _real_sleep(seconds)


def _dul_wait(dul: Any, seconds: float) -> None:
    """Until a PDU arrives, one is queued to be sent, or the DUL is told to stop."""
    if dul.__dict__.get("_wake_read") is None:
        with _pipe_lock:
            dul._wake_read, dul._wake_write = os.pipe()
        os.set_blocking(dul._wake_write, False)
        if not dul.to_provider_queue.empty() or dul._kill_thread:
            return  # queued before the pipe existed: nobody wrote to it
    timer = dul.artim_timer
    timeout = seconds if timer._start_time is not None and timer._end_time is None else IDLE_WAIT_S
    sources = [dul._wake_read]
    sock = getattr(dul.socket, "socket", None)
    if sock is not None and not getattr(dul, "reading_suspended", False):  # (wire may read it instead)
        sources.append(sock)
    try:
        ready, _, _ = select.select(sources, [], [], timeout)
    except (OSError, ValueError):  # the socket was closed meanwhile: the reactor finds out itself
        _real_sleep(seconds)
        return
    if dul._wake_read in ready:
        try:
            os.read(dul._wake_read, 4096)
        except BlockingIOError:
            pass


def _wake_dul(dul: Any) -> None:
    with _pipe_lock:
        fd = dul.__dict__.get("_wake_write")
        if fd is not None:
            try:
                os.write(fd, b"w")
            except (BlockingIOError, OSError):  # full: it is awake already
                pass


def _close_pipe(dul: Any) -> None:
    with _pipe_lock:
        for name in ("_wake_read", "_wake_write"):
            fd = dul.__dict__.pop(name, None)
            if fd is not None:
                os.close(fd)


def _association_wait(assoc: Any) -> None:
    """Until the DUL reactor has done something for this association (or IDLE_WAIT_S)."""
    wake = assoc.__dict__.get("_reactor_wake")
    if wake is None:
        assoc._reactor_wake = threading.Event()
        return  # whatever came before the Event existed is looked at now
    wake.wait(IDLE_WAIT_S)
    wake.clear()


def _wake_association(assoc: Any) -> None:
    wake = assoc.__dict__.get("_reactor_wake")
    if wake is not None:
        wake.set()


_pynetdicom_send_pdu = _dul_module.DULServiceProvider.send_pdu
_pynetdicom_kill_dul = _dul_module.DULServiceProvider.kill_dul
_pynetdicom_stop_dul = _dul_module.DULServiceProvider.stop_dul
_pynetdicom_run_reactor = _dul_module.DULServiceProvider.run_reactor
_pynetdicom_do_action = StateMachine.do_action


def _send_pdu(self: Any, primitive: Any) -> None:
    _pynetdicom_send_pdu(self, primitive)
    _wake_dul(self)


def _kill_dul(self: Any) -> None:
    _pynetdicom_kill_dul(self)
    _wake_dul(self)


def _stop_dul(self: Any) -> bool:
    if self.state_machine.current_state == "Sta1":
        _wake_dul(self)  # (pynetdicom then sets _kill_thread and waits for the thread to end)
    return _pynetdicom_stop_dul(self)


def _run_reactor(self: Any) -> None:
    try:
        _pynetdicom_run_reactor(self)
    finally:
        _close_pipe(self)
        _wake_association(self.assoc)  # the association reactor notices the DUL has ended


def _do_action(self: Any, event: str) -> None:
    _pynetdicom_do_action(self, event)
    assoc = self.dul.assoc
    if event != "Evt10" or not assoc.dimse.msg_queue.empty():
        _wake_association(assoc)


def install() -> None:
    """Give pynetdicom's reactors these waits (idempotent)."""
    for module in (_association_module, _dul_module):
        if isinstance(module.time, types.SimpleNamespace):
            continue
        shim = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("__")})
        shim.sleep = _reactor_sleep
        module.time = shim  # type: ignore[assignment]
    dul_class = _dul_module.DULServiceProvider
    dul_class.send_pdu = _send_pdu  # type: ignore[method-assign]
    dul_class.kill_dul = _kill_dul  # type: ignore[method-assign]
    dul_class.stop_dul = _stop_dul  # type: ignore[method-assign]
    dul_class.run_reactor = _run_reactor  # type: ignore[method-assign]
    StateMachine.do_action = _do_action  # type: ignore[method-assign]
