"""Extra listener processes: more associations at once than one Python interpreter can serve.

Every association of a listener shares its process's interpreter lock, so on a machine with
several cores `--dimse_processes N` runs N-1 more listeners on the same port (SO_REUSEPORT:
the kernel spreads new connections over them). Each writes into the same spool and sends its
notices down the same pipe to the one upload process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

from dicom_adapter.buffers.spool import Spool
from dicom_adapter.logs import configure_logging, fields
from dicom_adapter.routing import RoutingTable

from .buffering import SpoolBuffer
from .server import Listener, ListenerSettings
from .services import QueryRetrieveSettings, build_services
from .store import StoreService
from .upload_process import Notices

log = logging.getLogger(__name__)
_spawn = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class ListenerProcessSettings:
    listener: ListenerSettings
    spool_dir: str
    drain_timeout_s: float
    json_logs: bool = False
    verbose: bool = False
    routing: RoutingTable = field(default_factory=lambda: RoutingTable(()))
    query_retrieve: QueryRetrieveSettings | None = None


class ListenerProcess:
    """Parent-side handle of one extra listener process."""

    def __init__(self, settings: ListenerProcessSettings, notices_writer: Connection, index: int) -> None:
        self.settings = settings
        self._writer = notices_writer
        self._name = f"dicom-adapter-listener-{index}"
        self._process: Any = None
        self._ready: Any = None

    def start(self) -> None:
        self._ready = _spawn.Event()
        self._process = _spawn.Process(target=_child_main, args=(self.settings, self._writer, self._ready), name=self._name)
        self._process.start()

    def wait_ready(self, timeout: float) -> bool:
        """True once the process listens on the port (so `ready` means every listener is up)."""
        return bool(self._ready.wait(timeout))

    def restart_if_dead(self) -> None:
        if self._process is not None and not self._process.is_alive():
            log.error("listener process exited unexpectedly; restarting it", extra=fields(process=self._name, exitcode=self._process.exitcode))
            self.start()

    def begin_stop(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.terminate()  # SIGTERM: the child drains like the main listener

    def join(self, timeout: float | None) -> None:
        if self._process is None:
            return
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)


def shared_port_settings(settings: ListenerSettings, port: int, processes: int) -> ListenerSettings:
    """Settings for one of `processes` listeners sharing `port` and the association limit
    (rounded down, so together they never exceed it)."""
    per_process = max(1, settings.max_associations // processes)
    return replace(settings, port=port, reuse_port=processes > 1, max_associations=per_process)


def _child_main(settings: ListenerProcessSettings, writer: Connection, ready: Any) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    configure_logging(json_format=settings.json_logs, verbose=settings.verbose)
    notices = Notices(writer)
    listener = Listener(
        settings.listener,
        StoreService(SpoolBuffer(Spool(settings.spool_dir), notices.notify), settings.routing),
        build_services(settings.query_retrieve),
    )
    listener.start()
    ready.set()
    parent = os.getppid()
    while not stop.wait(1.0):
        if os.getppid() != parent:  # the main process died (kill -9, OOM): do not live on as an orphan
            log.error("main process is gone; stopping this listener")
            break
    listener.drain(settings.drain_timeout_s)
    notices.close()
