"""`kill -USR1 PID`: every thread of that adapter process writes its stack to stderr.

For a process that does not stop or answer (a drain that waits on something it should not):
the stacks say where each thread is, without a debugger on the machine. Python's faulthandler
writes them from the signal handler itself, so it works while every Python thread is blocked.
The dump names code locations only (files, lines, functions), never values, so no PHI.
Not used in the Cloud Functions, where gunicorn owns SIGUSR1 (it reopens its logs).
"""

from __future__ import annotations

import faulthandler
import signal
import sys


def enable_stack_dumps() -> None:
    """Dump all threads' stacks to stderr on SIGUSR1 (idempotent; the process keeps running)."""
    try:
        target = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced (a test runner): the process's own
        target = 2
    faulthandler.register(signal.SIGUSR1, file=target, all_threads=True, chain=False)
