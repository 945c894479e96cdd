"""Processes for tests: free ports, readiness waits, managed subprocesses, memory measurement.

Tests start real servers (Orthanc, storescp, the adapter itself). They must never leak a
process into the next test or the next CI job, never collide on a port, and never trust a
fixed sleep on a noisy 2-core machine. Everything here waits on an observable condition
(a port accepting, an HTTP answer, a line in the log) and always cleans up.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import IO, Callable, Iterable, Mapping, Sequence

__all__ = [
    "free_port",
    "wait_for_port",
    "wait_for_http",
    "ManagedProcess",
    "live_processes",
    "start_sequence",
    "peak_rss_bytes",
    "current_rss_bytes",
    "descendant_pids",
    "RssSampler",
]

LOOPBACK = "127.0.0.1"

# Ports handed out in this test process. The kernel may hand the same ephemeral port to two
# consecutive bind(0) calls once the first socket is closed; remembering them keeps two
# servers started by one test from being given the same port.
_handed_out_ports: set[int] = set()
_port_lock = threading.Lock()


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free now and was not handed out before in this process.

    Asks the kernel (bind to port 0) so parallel CI jobs do not collide on fixed numbers.
    """
    with _port_lock:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
            if port not in _handed_out_ports:
                _handed_out_ports.add(port)
                return port
    raise RuntimeError("could not find a free TCP port")


def _raise_if_dead(process: "ManagedProcess | None", what: str) -> None:
    if process is not None and not process.is_running():
        raise RuntimeError(
            f"{process.name} exited with code {process.returncode} while waiting for {what}\n"
            f"{process.output_tail()}"
        )


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` every 0.1 s; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def wait_for_port(
    host: str,
    port: int,
    timeout: float = 30.0,
    *,
    process: "ManagedProcess | None" = None,
) -> None:
    """Block until host:port accepts a TCP connection (or raise TimeoutError).

    With `process`, fail fast with its output if it dies instead of waiting out the timeout.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        _raise_if_dead(process, f"{host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} did not accept connections in {timeout}s: {last_error}")
        time.sleep(0.05)


def wait_for_http(
    url: str,
    timeout: float = 30.0,
    *,
    process: "ManagedProcess | None" = None,
    ok_statuses: Iterable[int] = (200,),
) -> bytes:
    """Block until GET url answers with one of `ok_statuses`; return the body.

    Uses urllib (no connection pool) so a half-started server is polled afresh every time.
    """
    ok = set(ok_statuses)
    deadline = time.monotonic() + timeout
    last: str = "no attempt"
    while True:
        _raise_if_dead(process, url)
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                body = response.read()
                if response.status in ok:
                    return body
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return exc.read()
            last = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            last = repr(exc)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} not ready in {timeout}s (last: {last})")
        time.sleep(0.05)


# Every ManagedProcess that is started registers here so the `process_cleanup` fixture (and
# interpreter exit, as a last resort) can stop whatever a failing test left behind.
_live: "weakref.WeakSet[ManagedProcess]" = weakref.WeakSet()
_start_counter = 0
_counter_lock = threading.Lock()


def start_sequence() -> int:
    """Number of ManagedProcess starts so far; processes started later have a higher start_seq."""
    with _counter_lock:
        return _start_counter


def live_processes() -> list["ManagedProcess"]:
    """ManagedProcesses that were started and not yet stopped, oldest first."""
    return sorted((p for p in list(_live) if p.started), key=lambda p: p.start_seq)


class ManagedProcess:
    """A subprocess in its own process group with its output captured to files.

    Why a process group: servers such as Orthanc, a shell wrapper or `dicom-adapter` may spawn
    children; stopping the group leaves no orphan holding a port or a file. Why files instead of
    pipes: a chatty server can fill a pipe buffer and stall if nobody reads it, and files stay
    readable after the test for the failure report.

    `cleanup_scope` is "test" (stopped by the autouse `process_cleanup` fixture at the end of the
    test that started it) or "session" (a long-lived fixture such as the shared Orthanc stops it).
    """

    def __init__(
        self,
        cmd: Sequence[str | os.PathLike[str]],
        *,
        log_dir: str | os.PathLike[str],
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        cleanup_scope: str = "test",
    ) -> None:
        if cleanup_scope not in ("test", "session"):
            raise ValueError("cleanup_scope must be 'test' or 'session'")
        self.cmd = [os.fspath(c) for c in cmd]
        self.name = name or Path(self.cmd[0]).name
        self.log_dir = Path(log_dir)
        self.env = dict(os.environ if env is None else env)
        if extra_env:
            self.env.update(extra_env)
        self.cwd = os.fspath(cwd) if cwd is not None else None
        self.cleanup_scope = cleanup_scope
        self.popen: subprocess.Popen[bytes] | None = None
        self.start_seq = -1
        self._runs = 0
        self.stdout_path = self.log_dir / f"{self.name}.stdout.log"
        self.stderr_path = self.log_dir / f"{self.name}.stderr.log"
        self._files: list[IO[bytes]] = []
        self._out_offset = 0
        self._err_offset = 0

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self.popen is not None

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise RuntimeError(f"{self.name} not started")
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> "ManagedProcess":
        """Start the command; a restarted process appends to the same log files."""
        global _start_counter
        if self.is_running():
            raise RuntimeError(f"{self.name} is already running")
        self._close_files()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._runs += 1
        out = open(self.stdout_path, "ab")
        err = open(self.stderr_path, "ab")
        if self._runs > 1:
            marker = f"\n===== restart #{self._runs - 1} =====\n".encode()
            out.write(marker)
            err.write(marker)
            out.flush()
            err.flush()
        self._files = [out, err]
        self._out_offset = out.tell()
        self._err_offset = err.tell()
        self.popen = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        with _counter_lock:
            _start_counter += 1
            self.start_seq = _start_counter
        _live.add(self)
        return self

    def send_signal(self, sig: int) -> None:
        """Signal the whole process group (no-op if it is gone)."""
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _group_alive(self) -> bool:
        if self.popen is None:
            return False
        try:
            os.killpg(self.popen.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the group, wait up to `timeout`, then SIGKILL it; return the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        return self._finish()

    def kill(self) -> int | None:
        """SIGKILL the group at once (a crash, as far as the process can tell)."""
        if self.popen is None:
            return None
        self.send_signal(signal.SIGKILL)
        return self._finish()

    def _finish(self) -> int | None:
        assert self.popen is not None
        # The leader may be gone while children live on in the group: kill those too.
        if self.popen.poll() is None or self._group_alive():
            self.send_signal(signal.SIGKILL)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - unkillable (D state)
            pass
        deadline = time.monotonic() + 5
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._close_files()
        _live.discard(self)
        return self.popen.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit by itself; return its exit code."""
        if self.popen is None:
            raise RuntimeError(f"{self.name} not started")
        code = self.popen.wait(timeout=timeout)
        if not self._group_alive():
            self._close_files()
            _live.discard(self)
        return code

    def _close_files(self) -> None:
        for f in self._files:
            try:
                f.close()
            except OSError:
                pass
        self._files = []

    def __enter__(self) -> "ManagedProcess":
        if not self.started or not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- output ----------------------------------------------------------------------------

    def stdout(self) -> str:
        return _read_text(self.stdout_path)

    def stderr(self) -> str:
        return _read_text(self.stderr_path)

    def output(self) -> str:
        """stdout followed by stderr (all runs)."""
        return self.stdout() + self.stderr()

    def output_tail(self, lines: int = 40) -> str:
        out = self.stdout().splitlines()[-lines:]
        err = self.stderr().splitlines()[-lines:]
        return (
            f"--- {self.name} stdout (tail) ---\n" + "\n".join(out)
            + f"\n--- {self.name} stderr (tail) ---\n" + "\n".join(err)
        )

    def wait_for_output(
        self,
        pattern: str | re.Pattern[str],
        timeout: float = 30.0,
        *,
        current_run_only: bool = True,
    ) -> re.Match[str]:
        """Block until a line of stdout or stderr matches `pattern` (e.g. r"\\bready\\b").

        Only output of the current run counts by default, so a restart waits for a fresh line.
        Raises RuntimeError with the output tail if the process exits first.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            alive = self.is_running()  # sample before reading: a last line may race the exit
            for path, offset in ((self.stdout_path, self._out_offset), (self.stderr_path, self._err_offset)):
                text = _read_text(path, offset if current_run_only else 0)
                for line in text.splitlines():
                    match = regex.search(line)
                    if match:
                        return match
            if not alive:
                raise RuntimeError(
                    f"{self.name} exited with code {self.returncode} before printing "
                    f"{regex.pattern!r}\n{self.output_tail()}"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.name} did not print {regex.pattern!r} in {timeout}s\n{self.output_tail()}"
                )
            time.sleep(0.05)

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited={self.returncode}"
        return f"<ManagedProcess {self.name} pid={self.popen.pid if self.popen else None} {state}>"


def _read_text(path: Path, offset: int = 0) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


@atexit.register
def _stop_leftovers() -> None:  # pragma: no cover - safety net only
    for proc in live_processes():
        try:
            proc.kill()
        except Exception:
            pass


# -- memory ----------------------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for raw in f:
                if raw.startswith(field.encode() + b":"):
                    return int(raw.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set size (VmHWM) of a live process, in bytes.

    VmHWM disappears with the process, so read it before it exits, or use RssSampler.
    """
    kib = _status_kib(pid, "VmHWM")
    if kib is None:
        raise ProcessLookupError(f"no /proc/{pid}/status (process gone?)")
    return kib * 1024


def current_rss_bytes(pid: int) -> int:
    """Current resident set size (VmRSS) of a live process, in bytes."""
    kib = _status_kib(pid, "VmRSS")
    if kib is None:
        raise ProcessLookupError(f"no /proc/{pid}/status (process gone?)")
    return kib * 1024


def descendant_pids(pid: int) -> list[int]:
    """All live descendants of pid (children, grandchildren, ...), via /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may contain spaces/parens: the ppid is the 2nd field after the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) >= 2:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class RssSampler:
    """Track the memory of a process tree over time in a background thread.

    Why: VmHWM is per process and lost when the process exits, and a worker child may come and
    go between two looks. The sampler records, every `interval` seconds:
      - peak_total_rss_bytes: the largest sum of VmRSS over the process and its descendants;
      - peak_process_hwm_bytes: the largest VmHWM any single process of the tree reported
        (catches spikes shorter than the interval, as long as that process was seen once).
    Use as a context manager around the work being measured.
    """

    def __init__(self, pid: int, *, interval: float = 0.05, include_children: bool = True) -> None:
        self.pid = pid
        self.interval = interval
        self.include_children = include_children
        self.peak_total_rss_bytes = 0
        self.peak_process_hwm_bytes = 0
        self.hwm_by_pid: dict[int, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-sampler-{pid}", daemon=True)

    def sample(self) -> None:
        pids = [self.pid] + (descendant_pids(self.pid) if self.include_children else [])
        total = 0
        for pid in pids:
            rss = _status_kib(pid, "VmRSS")
            hwm = _status_kib(pid, "VmHWM")
            if rss is not None:
                total += rss * 1024
            if hwm is not None:
                hwm_bytes = hwm * 1024
                if hwm_bytes > self.hwm_by_pid.get(pid, 0):
                    self.hwm_by_pid[pid] = hwm_bytes
                self.peak_process_hwm_bytes = max(self.peak_process_hwm_bytes, hwm_bytes)
        self.peak_total_rss_bytes = max(self.peak_total_rss_bytes, total)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> "RssSampler":
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> "RssSampler":
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.sample()
        return self

    def __enter__(self) -> "RssSampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
