"""sweep: no acknowledged instance may be stranded in the buffer.

Every object in the bucket's queue/ was acknowledged to a sender, and leaves the queue only
when `stow_upload` stored it (or dead-lettered it). One that is still there after the minimum
age lost its event somewhere: the edge died between upload and publish, a publish failed and
its object could not be deleted, or a delivery was dropped. Sweep publishes its event again,
rebuilt from the object's metadata. A repeat is harmless: uploads are idempotent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .buffers.gcs import GcsBuffer, GcsLocation
from .config import SweepSettings
from .logs import fields
from .pubsub import EventPublisher, PublishFailed

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    republished: int = 0
    unreadable: int = 0  # objects without our metadata: not from the edge, left for an operator
    failed: int = 0  # publishes that failed: the next sweep tries again

    def as_json(self) -> dict[str, int]:
        return {"republished": self.republished, "unreadable": self.unreadable, "failed": self.failed}


def sweep_buffer(settings: SweepSettings, bucket: GcsBuffer | None = None, publisher: EventPublisher | None = None) -> SweepResult:
    bucket = bucket or GcsBuffer(GcsLocation.parse(settings.gcs_buffer))
    own_publisher = publisher is None
    publisher = publisher or EventPublisher(settings.pubsub_topic)
    result = SweepResult()
    try:
        for blob in bucket.queued(older_than_s=settings.min_age_minutes * 60):
            try:
                event = bucket.event_of(blob)
            except (KeyError, ValueError, TypeError):
                result.unreadable += 1
                log.error("buffered object has no instance metadata; not re-announced", extra=fields(object=blob.name))
                continue
            try:
                publisher.publish(event)
            except PublishFailed as exc:
                result.failed += 1
                log.error("could not re-announce a buffered object", extra=fields(**event.log_fields(), reason=str(exc)))
                continue
            result.republished += 1
            log.warning(
                "re-announced a buffered object that was not uploaded in time",
                extra=fields(**event.log_fields(), min_age_minutes=settings.min_age_minutes),
            )
    finally:
        if own_publisher:
            publisher.close()
    log.info("sweep finished", extra=fields(**result.as_json()))
    return result
