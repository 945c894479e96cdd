"""The adapter under test, run as users run it: `dicom-adapter local` and `dicom-adapter edge`."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

from .processes import ManagedProcess, free_port
from .shipped import adapter_program

ADAPTER_AET = "ADAPTER"
# The suite runs the DIMSE tests twice (scripts/test.sh): with the fast path (the default) and
# on plain pynetdicom (DICOM_ADAPTER_DIMSE_FAST_PATH=off, inherited by every adapter started).
# A test of something only the fast path does checks what plain pynetdicom does instead.
FAST_PATH = os.environ.get("DICOM_ADAPTER_DIMSE_FAST_PATH", "on") != "off"


def adapter_command() -> list[str]:
    """`dicom-adapter` as installed from the wheel (support/shipped.py), not the checkout."""
    return adapter_program()


class AdapterProcess:
    """A `dicom-adapter` serving command on a free DIMSE port; restartable on the same port."""

    def __init__(
        self,
        work_dir: Path,
        *,
        aet: str = ADAPTER_AET,
        extra_args: Sequence[str] = (),
        extra_env: dict[str, str] | None = None,
        name: str = "adapter",
        program: Sequence[str] | None = None,
    ) -> None:
        """`program` replaces the installed `dicom-adapter` (e.g. the edge image's entrypoint)."""
        self.program = list(program) if program else adapter_command()
        self.work_dir = Path(work_dir)
        self.aet = aet
        self.port = free_port()
        self.extra_args = list(extra_args)
        self.process = ManagedProcess(
            self.command(),
            log_dir=self.work_dir,
            name=name,
            extra_env={"PYTHONUNBUFFERED": "1", **(extra_env or {})},
        )

    def command(self) -> list[str]:
        raise NotImplementedError

    def listener_args(self) -> list[str]:
        return ["--dimse_aet", self.aet, "--dimse_port", str(self.port), "--dimse_host", "127.0.0.1"]

    def start(self, timeout: float = 60.0) -> "AdapterProcess":
        self.process.start()
        # 'ready' is printed once the socket listens; probing the port with a bare TCP connect
        # would only leave an association attempt for the adapter to time out.
        self.process.wait_for_output(r"\bready\b", timeout=timeout)
        return self

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait: the graceful drain path."""
        return self.process.stop(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: the crash path."""
        self.process.kill()

    def logs(self) -> str:
        return self.process.output()

    def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        """Wait until a log line of this run contains `text`: a line written just after the
        change a test waited for (a dead letter, an emptied queue) may not be there yet."""
        self.process.wait_for_output(re.escape(text), timeout)

    def __enter__(self) -> "AdapterProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process.is_running():
            self.stop()


class LocalAdapter(AdapterProcess):
    """`dicom-adapter local` with its own spool."""

    def __init__(self, work_dir: Path, dicomweb_address: str | None = None, *, spool_dir: Path | None = None, **kwargs: Any) -> None:
        self.spool_dir = spool_dir or Path(work_dir) / "spool"
        self.dicomweb_address = dicomweb_address
        super().__init__(work_dir, **kwargs)

    def command(self) -> list[str]:
        return self.program + [
            "local",
            *self.listener_args(),
            *(["--dicomweb_address", self.dicomweb_address] if self.dicomweb_address else []),
            "--spool_dir", str(self.spool_dir),
            "--redelivery_max_delay", "2",
            *self.extra_args,
        ]

    def queue_entries(self) -> list[Path]:
        queue = self.spool_dir / "queue"
        return sorted(queue.glob("*.dcm")) if queue.exists() else []

    def dead_letters(self) -> list[Path]:
        dead = self.spool_dir / "dead"
        return sorted(dead.glob("*.dcm")) if dead.exists() else []

    def incoming_files(self) -> list[Path]:
        incoming = self.spool_dir / "incoming"
        return sorted(incoming.iterdir()) if incoming.exists() else []

    def export_entries(self) -> list[Path]:
        """Export work not yet done: notifications to route and messages to deliver."""
        exports = self.spool_dir / "exports"
        return sorted(exports.glob("notifications/*.json")) + sorted(exports.glob("queue/*.json"))

    def export_dead_letters(self) -> list[Path]:
        return sorted((self.spool_dir / "exports" / "dead").glob("*.json"))

    def wait_until_drained(self, timeout: float = 120.0) -> None:
        """Until the upload queue is empty (everything uploaded or dead-lettered)."""
        deadline = time.monotonic() + timeout
        while self.queue_entries():
            if not self.process.is_running():
                raise RuntimeError(f"adapter exited while draining\n{self.process.output_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.queue_entries())} entries still queued after {timeout}s")
            time.sleep(0.05)


class CloudEdge(AdapterProcess):
    """`dicom-adapter edge`: GCS buffer + Pub/Sub topic (emulators), health on a free port."""

    def __init__(self, work_dir: Path, gcs_buffer: str, pubsub_topic: str, **kwargs: Any) -> None:
        self.gcs_buffer = gcs_buffer
        self.pubsub_topic = pubsub_topic
        self.health_port = free_port()
        super().__init__(work_dir, **kwargs)

    def command(self) -> list[str]:
        return self.program + [
            "edge",
            *self.listener_args(),
            "--gcs_buffer", self.gcs_buffer,
            "--pubsub_topic", self.pubsub_topic,
            "--work_dir", str(self.work_dir / "edge-work"),
            "--health_port", str(self.health_port),
            *self.extra_args,
        ]

    def health_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.health_port}{path}"
