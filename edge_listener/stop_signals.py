"""SIGTERM and SIGINT as a `threading.Event` that a command waits on and hands to its threads.

Not `signal.signal(SIGTERM, lambda *_: stop.set())`: Python runs that handler in the main
thread, between two bytecodes, and that may be a moment when the main thread holds the
Event's own lock (a plain, non-reentrant Lock), for instance inside `stop.wait(1.0)` just woken
by a first signal when a second one arrives. `Event.set()` then waits for a lock its own thread
holds, and the process hangs without a word (CPython issue #126434 is the same trap with
`multiprocessing.Event`). Ctrl-C on the Quick start sends two signals at once (SIGINT from the
terminal, SIGTERM from the script's trap); systemd and Kubernetes may repeat SIGTERM.

So the Python handler does nothing itself. The interpreter's C-level wakeup fd
(`signal.set_wakeup_fd`) receives the signal's number, and a small thread sets the Event.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Iterable


def _noted_by_the_wakeup_fd(_signum: int, _frame: object) -> None:
    """Replaces the default action (exit); the wakeup fd has already recorded the signal."""


def stop_on_signals(signums: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> threading.Event:
    """An Event set when one of `signums` arrives. Call from the main thread, once per process."""
    wanted = frozenset(int(signum) for signum in signums)
    stop = threading.Event()
    reader, writer = os.pipe()  # not inherited by child processes (O_CLOEXEC)
    os.set_blocking(writer, False)  # the interpreter requires it: a signal must never block on a full pipe
    for signum in wanted:
        signal.signal(signum, _noted_by_the_wakeup_fd)
    signal.set_wakeup_fd(writer, warn_on_full_buffer=False)

    def set_on_wanted_signal() -> None:
        while True:
            received = os.read(reader, 64)  # one byte per signal, its number
            if not received:
                return
            if wanted.intersection(received):
                stop.set()

    threading.Thread(target=set_on_wanted_signal, name="stop-signals", daemon=True).start()
    return stop
