"""Extra listener processes: more associations at once than one Python interpreter can serve.

Every association of a listener shares its process's interpreter lock, so on a machine with
several cores `--dimse_processes N` runs N-1 more listeners on the same port: they inherit the
main listener's listening sockets and take turns accepting, the least busy first
(server.EdgeAssociationServer). Each writes into the same spool and sends its notices down the
same pipe to the one upload process.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field, replace

from dicom_adapter.buffers.spool import Spool
from dicom_adapter.logs import configure_logging, fields
from dicom_adapter.routing import RoutingTable

from edge_listener import metrics
from edge_listener.stop_signals import stop_on_signals
from edge_listener.buffer.buffering import SpoolBuffer
from .child_process import ChildProcess, ReadyPipe, signal_ready
from edge_listener.front.server import Listener, ListenerSettings
from .assembly import QueryRetrieveSettings, build_services
from edge_listener.services.store import StoreService
from .upload_process import Notices

log = logging.getLogger(__name__)


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

    def __init__(self, settings: ListenerProcessSettings, notices_writer_fd: int, index: int) -> None:
        self.settings = settings
        self._writer_fd = notices_writer_fd
        self._name = f"dicom-adapter-listener-{index}"
        self._process: ChildProcess | None = None
        self._ready: ReadyPipe | None = None

    def start(self) -> None:
        if self._ready is not None:
            self._ready.close()
        self._ready = ReadyPipe()
        fds = (self._writer_fd, self._ready.child_fd)
        self._process = ChildProcess(
            "edge_listener.runtime.listener_process:_child_main", (self.settings, *fds), self._name, (*fds, *self.settings.listener.listen_fds)
        )
        self._process.start()
        self._ready.close_child_end()

    def wait_ready(self, timeout: float) -> bool:
        """True once the process listens on the port (so `ready` means every listener is up)."""
        return self._ready is not None and self._ready.wait(timeout)

    def restart_if_dead(self) -> None:
        """Restart a listener that crashed; leave one that a SIGTERM stopped (it drained and
        exited 0, or the signal ended it while it was still starting), as systemd's
        Restart=on-failure does.

        A SIGTERM reaches a child when the whole process group is stopped (systemd, a process
        manager, the benchmark): the main process is stopping too, and restarting the child in
        between would start a listener nobody asked for and log an error about a clean stop."""
        exitcode = self._process.exitcode if self._process is not None else None
        if exitcode is None:
            return
        if exitcode in (0, -signal.SIGTERM):
            log.info("listener process stopped on request; not restarting it", extra=fields(process=self._name, exitcode=exitcode))
            self._process = None
            return
        log.error("listener process exited unexpectedly; restarting it", extra=fields(process=self._name, exitcode=exitcode))
        self.start()

    def begin_stop(self) -> None:
        if self._process is not None:
            self._process.terminate()  # SIGTERM: the child drains like the main listener

    def join(self, timeout: float | None) -> None:
        if self._process is None:
            return
        self._process.join(timeout)
        self._process.kill()  # only if still alive


def shared_port_settings(
    settings: ListenerSettings, processes: int, admission_dir: str, listen_fds: tuple[int, ...] = ()
) -> ListenerSettings:
    """Settings for one of `processes` listeners sharing the port (and the plain port beside a
    TLS one): the first binds them, the others serve its sockets (`listen_fds`); with several,
    they count their associations together in `admission_dir`."""
    return replace(
        settings,
        shared_accept=processes > 1,
        listen_fds=listen_fds,
        shared_admission_dir=admission_dir if processes > 1 else None,
    )


def _child_main(settings: ListenerProcessSettings, writer_fd: int, ready_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = stop_on_signals((signal.SIGTERM,))
    configure_logging(json_format=settings.json_logs, verbose=settings.verbose)
    metrics.start_counting()  # into the directory the parent enabled (inherited environment)
    notices = Notices(writer_fd)
    listener = Listener(
        settings.listener,
        StoreService(SpoolBuffer(Spool(settings.spool_dir), notices.notify), settings.routing),
        build_services(settings.query_retrieve),
    )
    listener.start()
    signal_ready(ready_fd)
    parent = os.getppid()
    while not stop.wait(1.0):
        if os.getppid() != parent:  # the main process died (kill -9, OOM): do not live on as an orphan
            log.error("main process is gone; stopping this listener")
            break
    listener.drain(settings.drain_timeout_s)
    notices.close()
