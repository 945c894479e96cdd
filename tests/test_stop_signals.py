"""SIGTERM/SIGINT stop a command even when they arrive while its main thread holds the stop
Event's lock (edge_listener/stop_signals.py says why that hung the Quick start's Ctrl-C).

Each case runs in its own interpreter: signal handlers and the wakeup fd are process-wide."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from support.shipped import REPO

RUN = [sys.executable, "-c"]
ENV_PATH = f"{REPO}:{REPO / 'functions'}"


def run_python(code: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RUN, textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout,
                          env={"PYTHONPATH": ENV_PATH, "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_that_arrives_while_the_events_lock_is_held_still_stops(signum: int):
    # The moment the old `lambda *_: stop.set()` handler deadlocked on, made certain: the main
    # thread holds the Event's condition lock when the signal's handler runs.
    result = run_python(f"""
        import os, signal
        from edge_listener.stop_signals import stop_on_signals
        stop = stop_on_signals()
        with stop._cond:
            os.kill(os.getpid(), {int(signum)})  # the handler runs here, in this thread, lock held
            print("handler returned", flush=True)
        print("stopped" if stop.wait(5) else "not stopped", flush=True)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["handler returned", "stopped"]


def test_the_old_handler_hangs_at_that_moment():
    """The failure the module prevents, shown with the handler it replaced."""
    with pytest.raises(subprocess.TimeoutExpired):
        run_python("""
            import os, signal, threading
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            with stop._cond:
                os.kill(os.getpid(), signal.SIGTERM)
        """, timeout=3)


def test_other_signals_leave_the_event_unset():
    result = run_python("""
        import os, signal
        from edge_listener.stop_signals import stop_on_signals
        stop = stop_on_signals((signal.SIGTERM,))
        signal.signal(signal.SIGUSR2, lambda *_: None)  # a Python handler: its number reaches the wakeup fd too
        os.kill(os.getpid(), signal.SIGUSR2)
        print("set" if stop.wait(0.5) else "unset", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        print("set" if stop.wait(5) else "unset", flush=True)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["unset", "set"]
