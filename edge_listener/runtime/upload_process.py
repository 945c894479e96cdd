"""The local runtime's upload side, in a process of its own: the stand-in for Cloud Functions.

In the cloud the edge only receives and buffers, and uploads run elsewhere. Locally they run
in a child process, for the same reason: the edge's receive path and the uploads are both
Python, and in one process they would share one interpreter lock. The edge tells the child
about each new queue entry by writing its event to a pipe; the spool is the durable queue, so
a lost notice only delays an entry until the child's next scan. Notices are the events' JSON,
one per line, written with a single write() each: under PIPE_BUF bytes, so the edge's threads
never interleave them.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from dicom_adapter.buffers.spool import Spool
from dicom_adapter.config import UploadSettings
from dicom_adapter.events import BufferedInstance, MalformedEvent
from dicom_adapter.logs import configure_logging, fields
from dicom_adapter.routing import RoutingTable
from dicom_adapter.upload import Uploader

from .child_process import ChildProcess
from edge_listener import metrics
from edge_listener.buffer.dispatcher import Dispatcher, DispatchSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadProcessSettings:
    spool_dir: str
    upload: UploadSettings
    dispatch: DispatchSettings
    json_logs: bool = False
    verbose: bool = False
    export_routing: RoutingTable | None = None  # rules for what reaches the store (docs/export.md)
    export_workers: int = 2


class Notices:
    """The writing end of the notice pipe, shared by the edge's threads (and listener processes).

    Writes never block a C-STORE: a notice that cannot be written now (the upload process is
    busy, starting or being restarted) is dropped, and the buffer asks the upload process to
    scan the queue instead (SpoolBuffer).
    """

    def __init__(self, writer_fd: int) -> None:
        self._writer: int | None = writer_fd
        self._lock = threading.Lock()
        os.set_blocking(writer_fd, False)

    def notify(self, instance: BufferedInstance) -> bool:
        """Tell the upload process; False if the notice could not be written."""
        # Under the lock so the pipe cannot be closed (and its descriptor number reused by
        # another file) between the check and the write.
        with self._lock:
            if self._writer is None:
                return False
            try:
                os.write(self._writer, instance.to_json() + b"\n")
            except OSError:  # full (upload process busy or starting) or broken (gone)
                return False
            return True

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                os.close(self._writer)
                self._writer = None


class UploadProcess:
    """Parent-side handle of the upload process: start, restart if it dies, stop gracefully.

    The pipe lives as long as the runtime: a restarted upload process reads the same pipe, and
    it sees end-of-file (its cue to finish the uploads in progress and exit) once every writer,
    the edge and its listener processes, has closed it.
    """

    def __init__(self, settings: UploadProcessSettings) -> None:
        self.settings = settings
        self._reader, self.writer = os.pipe()  # the writing end goes to the listener processes too
        self.notices = Notices(self.writer)
        self._process = ChildProcess("edge_listener.runtime.upload_process:_child_main", (settings, self._reader), "dicom-adapter-upload", (self._reader,))

    def start(self) -> None:
        self._process.start()

    def is_alive(self) -> bool:
        return self._process.is_alive()

    def restart_if_dead(self) -> None:
        if self._process.exitcode is not None:
            log.error("upload process exited unexpectedly; restarting it", extra=fields(exitcode=self._process.exitcode))
            self.start()

    def stop(self, timeout: float | None = None) -> int | None:
        """Close our end of the pipe and wait for the upload process to finish and exit."""
        self.notices.close()
        self._process.join(timeout)
        if self._process.is_alive():
            log.warning("upload process did not stop in time; terminating it")
            self._process.terminate()
            self._process.join(10)
        os.close(self._reader)
        return self._process.exitcode


def _child_main(settings: UploadProcessSettings, reader_fd: int) -> None:
    # The parent handles SIGINT/SIGTERM and tells us to stop by closing the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(json_format=settings.json_logs, verbose=settings.verbose)
    metrics.start_counting()  # into the directory the parent enabled (inherited environment)
    exports = _export_worker(settings)
    on_stored = None
    if exports is not None and settings.export_routing is not None and settings.export_routing.rules:
        from edge_listener.buffer.export_queue import on_stored_hook

        on_stored = on_stored_hook(exports, settings.upload.dicomweb_address)
    uploader = Uploader(settings.upload, on_stored=on_stored)
    dispatcher = Dispatcher(Spool(settings.spool_dir), uploader.handle_cloud_event, settings.dispatch, uploader.handle_cloud_events)
    dispatcher.start()
    if exports is not None:
        exports.start()
    with open(reader_fd, "rb") as notices:
        # Ends when the edge closes the pipe (stopping) or dies: either way, wind down.
        for line in notices:
            try:
                dispatcher.announce(BufferedInstance.from_json(line))
            except MalformedEvent as exc:  # a torn notice; the scan will find the entry
                log.warning("unreadable notice from the edge", extra=fields(reason=str(exc)))
    dispatcher.stop()
    if exports is not None:
        exports.stop()


def _export_worker(settings: UploadProcessSettings) -> Any:
    """Export over the spool: what reaches the (default) store goes on by the export rules;
    entries queued by an earlier run are delivered even if the rules are gone."""
    if not settings.upload.dicomweb_address:
        return None
    import shutil

    from dicom_adapter.export import Exporter
    from dicom_adapter.notifications import api_base_of

    from edge_listener.buffer.export_queue import ExportSpool, ExportWorker, ExportWorkerSettings

    spool = ExportSpool(settings.spool_dir)
    downloads = spool.root / "downloads"
    shutil.rmtree(downloads, ignore_errors=True)  # leftovers of deliveries cut off by a crash
    downloads.mkdir()
    # An uploader of its own, without the on_stored hook: a delivery is not a new instance in the store.
    exporter = Exporter(
        settings.export_routing or RoutingTable((), has_default=False),
        Uploader(settings.upload),
        api_base=api_base_of(settings.upload.dicomweb_address),
        work_dir=str(downloads),
    )
    return ExportWorker(spool, exporter, ExportWorkerSettings(workers=settings.export_workers, retry_max_s=settings.dispatch.retry_max_s))
