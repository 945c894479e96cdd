"""The one-machine runtime: the DIMSE listener, and uploads over the spool in a child process.

The spool's queue/ folder is the durable queue between them, as GCS and Pub/Sub are in the
cloud: the listener (server.py, store.py) acknowledges what is durable in the queue, and the
upload process (upload_process.py, dispatcher.py) hands each entry to the same `stow_upload`
code the Cloud Function runs.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from dicom_adapter.buffers.spool import Spool
from dicom_adapter.events import BufferedInstance
from dicom_adapter.logs import fields
from dicom_adapter.routing import RoutingTable

from edge_listener import metrics
from edge_listener.buffer.buffering import SpoolBuffer
from .health import HealthServer
from edge_listener.intake.watch import WatchedFolder, WatchSettings
from .listener_process import (
    ListenerProcess,
    ListenerProcessSettings,
    shared_port_settings,
)
from edge_listener.front.server import Listener, ListenerSettings
from .assembly import QueryRetrieveSettings, build_services
from .pipeline_metrics import exposition, pipeline_registry, spool_counters_dir, spool_state
from edge_listener.front.shared_admission import SharedAssociationCounts
from edge_listener.services.store import StoreService
from .upload_process import UploadProcess, UploadProcessSettings

log = logging.getLogger(__name__)


class LocalRuntime:
    """`dicom-adapter local`: listener(s) + upload process over one spool, drained on stop."""

    def __init__(
        self,
        listener_settings: ListenerSettings,
        upload_settings: UploadProcessSettings,
        *,
        processes: int = 1,
        drain_timeout_s: float = 30.0,
        routing: RoutingTable = RoutingTable(()),
        query_retrieve: QueryRetrieveSettings | None = None,
        watch: WatchSettings | None = None,
        health_port: int | None = None,
    ) -> None:
        self.spool = Spool(upload_settings.spool_dir)
        # Before any child starts: they inherit where to count.
        counters_dir = spool_counters_dir(upload_settings.spool_dir)
        metrics.enable(counters_dir)
        self.spool.register_destinations(routing.destinations)
        cleared = self.spool.clear_incoming()
        if cleared:
            log.info("cleared unfinished receptions from an earlier run", extra=fields(count=cleared))
        self.drain_timeout_s = drain_timeout_s
        self.uploads = UploadProcess(upload_settings)
        admission_dir = str(self.spool.root / "associations")
        SharedAssociationCounts.reset(admission_dir)
        first = shared_port_settings(listener_settings, processes, admission_dir)
        self.listener = Listener(first, StoreService(SpoolBuffer(self.spool, self.uploads.notices.notify), routing), build_services(query_retrieve))
        # The others serve the first one's listening sockets (whatever port 0 picked).
        shared = shared_port_settings(listener_settings, processes, admission_dir, self.listener.listen_fds)
        self.extra_listeners = [
            ListenerProcess(
                ListenerProcessSettings(
                    shared,
                    upload_settings.spool_dir,
                    drain_timeout_s,
                    upload_settings.json_logs,
                    upload_settings.verbose,
                    routing,
                    query_retrieve,
                ),
                self.uploads.writer,
                index,
            )
            for index in range(1, processes)
        ]
        self.watcher = _watched_folder(watch, self.spool, self.uploads.notices.notify, routing) if watch else None
        self.health = None
        if health_port is not None:
            registry = pipeline_registry(counters_dir, lambda: spool_state(self.spool.root)[0])
            self.health = HealthServer(
                listener_settings.host,
                health_port,
                alive=self.listener.is_serving,
                checks={"spool_writable": lambda: os.access(self.spool.queue, os.W_OK), "upload_process": self.uploads.is_alive},
                interval_s=5.0,
                metrics=lambda: exposition(registry),
            )

    def start(self) -> None:
        self.uploads.start()
        for extra in self.extra_listeners:
            extra.start()
        self.listener.start()
        for extra in self.extra_listeners:
            if not extra.wait_ready(60):
                raise RuntimeError("a listener process did not start within 60 s")
        if self.watcher is not None:
            self.watcher.start()
        if self.health is not None:
            self.health.start()

    def supervise(self) -> None:
        """Called periodically while running: keep the child processes alive."""
        self.uploads.restart_if_dead()
        for extra in self.extra_listeners:
            extra.restart_if_dead()

    def drain(self) -> None:
        """Stop accepting, let associations and uploads in progress finish, keep the rest queued.

        Safe on a runtime that only partly started."""
        if self.health is not None:
            self.health.draining = True
        if self.watcher is not None:
            self.watcher.stop(self.drain_timeout_s)
        for extra in self.extra_listeners:
            extra.begin_stop()
        self.listener.drain(self.drain_timeout_s)
        for extra in self.extra_listeners:
            extra.join(self.drain_timeout_s + 10)
        log.info("listeners closed; finishing uploads in progress")
        # Bounded: an upload to a store that hangs is cut off, and its entry stays queued.
        self.uploads.stop(timeout=self.drain_timeout_s + 60)
        status = self.spool.status()
        if self.health is not None:
            self.health.stop()
        log.info("stopped", extra=fields(queued=status.queued, dead_letters=status.dead_letters))


def _watched_folder(
    settings: WatchSettings, spool: Spool, announce: Callable[[BufferedInstance], None], routing: RoutingTable
) -> WatchedFolder:
    """The drop folder, feeding the spool as a C-STORE does (same routing; the ledger is the import's)."""
    from edge_listener.intake.intake import Intake
    from edge_listener.intake.ledger import Ledger
    from edge_listener.intake.sink import spool_sink

    intake = Intake(spool_sink(spool, announce, routing), Ledger.in_spool(spool.root), use_fingerprints=False)
    return WatchedFolder(settings, intake)
