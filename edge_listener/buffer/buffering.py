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
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from dicom_adapter.buffers.spool import Spool
from dicom_adapter.events import BufferedInstance
from dicom_adapter.logs import fields
from dicom_adapter.routing import Destination

from .reception import ReceptionFile

if TYPE_CHECKING:  # the cloud clients (grpc: ~13 MB) are loaded only by the cloud edge
    from dicom_adapter.buffers.gcs import GcsBuffer
    from dicom_adapter.pubsub import EventPublisher

log = logging.getLogger(__name__)


class BufferRefused(Exception):
    """The buffer could not take the instance; `comment` goes into the DIMSE Error Comment."""

    def __init__(self, comment: str) -> None:
        super().__init__(comment)
        self.comment = comment


class InstanceBuffer(Protocol):
    incoming: Path  # where pynetdicom writes data sets as they arrive

    def put(
        self, reception: ReceptionFile, instance: BufferedInstance, destinations: Sequence[Destination | None]
    ) -> list[BufferedInstance]:
        """Make the received file durable, once per destination (None: the default store), and
        its events un-losable; return the events sent.

        Raises OSError (local disk) or BufferRefused; either way nothing is left to upload."""


class SpoolBuffer:
    def __init__(self, spool: Spool, announce: Callable[[BufferedInstance], bool | None]) -> None:
        self.spool = spool
        self.incoming = spool.incoming
        self.announce = announce

    def put(
        self, reception: ReceptionFile, instance: BufferedInstance, destinations: Sequence[Destination | None]
    ) -> list[BufferedInstance]:
        reception.sync()
        name = self.spool.new_entry_name(instance.sop_instance_uid)
        entries = self.spool.commit(reception.name, name, destinations)
        reception.moved()
        events = [
            dataclasses.replace(instance, buffer_uri=self.spool.entry_uri(entry), destination=destination.to_json() if destination else None)
            for entry, destination in zip(entries, destinations)
        ]
        for event in events:
            if self.announce(event) is False:
                # The notice was lost (the upload process is starting or too busy to read):
                # its dispatcher scans the queue within a second instead of at its next tick.
                self.spool.request_rescan()
        return events


class CloudBuffer:
    def __init__(self, bucket: "GcsBuffer", publisher: "EventPublisher", incoming: Path) -> None:
        self.bucket = bucket
        self.publisher = publisher
        self.incoming = incoming
        incoming.mkdir(parents=True, exist_ok=True)

    def put(
        self, reception: ReceptionFile, instance: BufferedInstance, destinations: Sequence[Destination | None]
    ) -> list[BufferedInstance]:
        from dicom_adapter.buffers.gcs import BufferWriteFailed
        from dicom_adapter.pubsub import PublishFailed

        reception.close()
        name = Spool.new_entry_name(instance.sop_instance_uid)
        try:
            events = self.bucket.put_file(Path(reception.name), name, instance, destinations)
        except BufferWriteFailed as exc:
            raise BufferRefused(str(exc)) from None
        for index, event in enumerate(events):
            try:
                self.publisher.publish(event)
            except PublishFailed as exc:
                # The copies already announced will be uploaded; the rest must not linger.
                for unannounced in events[index:]:
                    self._withdraw(unannounced)
                raise BufferRefused(f"event {exc}") from None
        return events

    def _withdraw(self, event: BufferedInstance) -> None:
        try:
            self.bucket.discard(event)
        except Exception as exc:  # sweep will re-announce it; the sender hears a failure either way
            log.warning(
                "could not delete an object whose event was not published; sweep will re-announce it",
                extra=fields(**event.log_fields(), reason=type(exc).__name__),
            )
