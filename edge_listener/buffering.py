"""Where the C-STORE handler puts a checked instance before it acks: one interface, two backends.

- `SpoolBuffer` (local): fsync the reception file, rename it into the spool's queue, fsync the
  folder, then tell the upload process. The queue itself is the durable event, so the notice
  is only a wake-up call.
- `CloudBuffer` (GKE): upload the reception file create-only into the GCS bucket, then publish
  its event to Pub/Sub and wait for the publish to be confirmed. If the publish fails, the
  object is deleted again (and, should even that fail, `sweep` re-announces it later), so the
  sender's failure status never leaves an object that nobody will upload.

Both receive into a local folder first: the handler must walk the whole data set (truncation,
UIDs) before anything becomes visible to the uploader, and a GCS object cannot be withdrawn
from a reader once finalized. In the cloud that folder is the pod's emptyDir; its size bounds
the instances in flight, not their number.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Protocol

from dicom_adapter.buffers.gcs import BufferWriteFailed, GcsBuffer
from dicom_adapter.buffers.spool import Spool
from dicom_adapter.events import BufferedInstance
from dicom_adapter.logs import fields
from dicom_adapter.pubsub import EventPublisher, PublishFailed

from .reception import ReceptionFile

log = logging.getLogger(__name__)


class BufferRefused(Exception):
    """The buffer could not take the instance; `comment` goes into the DIMSE Error Comment."""

    def __init__(self, comment: str) -> None:
        super().__init__(comment)
        self.comment = comment


class InstanceBuffer(Protocol):
    incoming: Path  # where pynetdicom writes data sets as they arrive

    def put(self, reception: ReceptionFile, instance: BufferedInstance) -> BufferedInstance:
        """Make the received file durable and its event un-losable; return the event sent.

        Raises OSError (local disk) or BufferRefused; either way nothing is left to upload."""


class SpoolBuffer:
    def __init__(self, spool: Spool, announce: Callable[[BufferedInstance], None]) -> None:
        self.spool = spool
        self.incoming = spool.incoming
        self.announce = announce

    def put(self, reception: ReceptionFile, instance: BufferedInstance) -> BufferedInstance:
        reception.sync()
        final = self.spool.commit(Path(reception.name), self.spool.new_entry_name(instance.sop_instance_uid))
        reception.moved()
        instance = dataclasses.replace(instance, buffer_uri=self.spool.uri(final))
        self.announce(instance)
        return instance


class CloudBuffer:
    def __init__(self, bucket: GcsBuffer, publisher: EventPublisher, incoming: Path) -> None:
        self.bucket = bucket
        self.publisher = publisher
        self.incoming = incoming
        incoming.mkdir(parents=True, exist_ok=True)

    def put(self, reception: ReceptionFile, instance: BufferedInstance) -> BufferedInstance:
        reception.close()
        name = Spool.new_entry_name(instance.sop_instance_uid)
        try:
            instance = self.bucket.put_file(Path(reception.name), name, instance)
        except BufferWriteFailed as exc:
            raise BufferRefused(str(exc)) from None
        try:
            self.publisher.publish(instance)
        except PublishFailed as exc:
            self._withdraw(instance)
            raise BufferRefused(f"event {exc}") from None
        return instance

    def _withdraw(self, instance: BufferedInstance) -> None:
        try:
            self.bucket.discard(instance)
        except Exception as exc:  # sweep will re-announce it; the sender hears a failure either way
            log.warning(
                "could not delete an object whose event was not published; sweep will re-announce it",
                extra=fields(**instance.log_fields(), reason=type(exc).__name__),
            )
