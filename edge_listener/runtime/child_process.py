"""Child processes of the local runtime (upload process, extra listeners), started as plain
`python` subprocesses.

Not multiprocessing: its spawn start method also starts a resource-tracker process (~15 MB of
RSS that does nothing here, since the children share no semaphores or shared memory), and its
Connection objects cannot be handed to a child except through multiprocessing itself. The
children get what they need as file descriptors kept open across exec (the notice pipe, a
readiness pipe) and their target and settings as one pickle on stdin.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import pickle
import select
import subprocess
import sys
from typing import Any

from .stack_dumps import enable_stack_dumps

_BOOTSTRAP = "from edge_listener.runtime.child_process import run_child; run_child()"


class ChildProcess:
    """One child running `module.function(*args)`; fds in `pass_fds` stay open (same numbers)."""

    def __init__(self, target: str, args: tuple[Any, ...], name: str, pass_fds: tuple[int, ...] = ()) -> None:
        self.target = target
        self.args = args
        self.name = name
        self.pass_fds = pass_fds
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._popen = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP], stdin=subprocess.PIPE, pass_fds=self.pass_fds)
        assert self._popen.stdin is not None
        with self._popen.stdin as stdin:
            pickle.dump((self.name, self.target, self.args), stdin)

    def is_alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def exitcode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def terminate(self) -> None:
        if self.is_alive():
            assert self._popen is not None
            self._popen.terminate()

    def join(self, timeout: float | None = None) -> None:
        if self._popen is None:
            return
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        if self.is_alive():
            assert self._popen is not None
            self._popen.kill()
            self._popen.wait(5)


def run_child() -> None:
    """The child's side: read the target from stdin and run it."""
    enable_stack_dumps()  # first: loading the target's modules takes a while
    name, target, args = pickle.load(sys.stdin.buffer)
    sys.stdin.close()
    multiprocessing.current_process().name = name  # the logs' processName
    module_name, function_name = target.split(":")
    getattr(importlib.import_module(module_name), function_name)(*args)


class ReadyPipe:
    """A one-shot "I am ready" signal from a child: it writes a byte to `child_fd`."""

    def __init__(self) -> None:
        self._read_fd, self.child_fd = os.pipe()

    def wait(self, timeout: float) -> bool:
        readable, _, _ = select.select([self._read_fd], [], [], timeout)
        return bool(readable) and os.read(self._read_fd, 1) == b"1"

    def close_child_end(self) -> None:
        """After the child started: the parent keeps only the reading end."""
        os.close(self.child_fd)

    def close(self) -> None:
        os.close(self._read_fd)


def signal_ready(fd: int) -> None:
    os.write(fd, b"1")
    os.close(fd)
