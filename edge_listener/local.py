"""The one-machine runtime: the DIMSE listener, and uploads over the spool in a child process.

The spool's queue/ folder is the durable queue between them, as GCS and Pub/Sub are in the
cloud: the listener (server.py, store.py) acknowledges what is durable in the queue, and the
upload process (upload_process.py, dispatcher.py) hands each entry to the same `stow_upload`
code the Cloud Function runs.
"""

from __future__ import annotations

import logging
import time

from dicom_adapter.buffers.spool import Spool
from dicom_adapter.logs import fields

from .server import Listener, ListenerSettings
from .store import StoreService
from .upload_process import UploadProcess, UploadProcessSettings

log = logging.getLogger(__name__)


class LocalRuntime:
    """`dicom-adapter local`: listener + upload process over one spool, drained on stop."""

    def __init__(self, listener_settings: ListenerSettings, upload_settings: UploadProcessSettings) -> None:
        self.spool = Spool(upload_settings.spool_dir)
        cleared = self.spool.clear_incoming()
        if cleared:
            log.info("cleared unfinished receptions from an earlier run", extra=fields(count=cleared))
        self.uploads = UploadProcess(upload_settings)
        self.listener = Listener(listener_settings, StoreService(self.spool, self.uploads.notify))

    def start(self) -> None:
        self.uploads.start()
        self.listener.start()

    def supervise(self) -> None:
        """Called periodically while running: keep the upload process alive."""
        self.uploads.restart_if_dead()

    def drain(self, association_timeout_s: float = 30.0, upload_timeout_s: float | None = None) -> None:
        """Stop accepting, let associations and uploads in progress finish, keep the rest queued."""
        self.listener.stop_accepting()
        if self.listener.active_associations():
            log.info("waiting for open associations to finish", extra=fields(count=self.listener.active_associations()))
        deadline = time.monotonic() + association_timeout_s
        while self.listener.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.listener.active_associations():
            log.warning("aborting associations still open after the drain timeout", extra=fields(count=self.listener.active_associations()))
            self.listener.abort_all()
        log.info("listener closed; finishing uploads in progress")
        self.uploads.stop(upload_timeout_s)
        status = self.spool.status()
        log.info("stopped", extra=fields(queued=status.queued, dead_letters=status.dead_letters))
