"""`dicom-adapter export`: the Google export adapter's single-peer mode, as a drop-in.

It pulls the DICOM store's notifications from a Pub/Sub subscription and sends each new
instance to one peer, by C-STORE (`--peer_dimse_*`) or STOW-RS (`--peer_dicomweb_address`),
with the same fan-out and delivery code as the `export_fanout` and `deliver` functions (one
rule, matching everything). A message is acknowledged once its instance is delivered, or
dead-lettered (ERROR log; published with the reason to `--dead_letter_topic` if given);
transient failures nack it, so Pub/Sub redelivers it by the subscription's retry policy.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from dicom_adapter.config import UploadSettings
from dicom_adapter.events import MalformedEvent, pubsub_cloud_event
from dicom_adapter.export import Exporter
from dicom_adapter.export_cloud import CloudExport, CloudExportSettings
from dicom_adapter.logs import fields
from dicom_adapter.notifications import api_base_of
from dicom_adapter.routing import Destination, Filter, RoutingTable, Rule
from dicom_adapter.upload import TransientUploadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SinglePeerSettings:
    subscription: str  # projects/P/subscriptions/S
    peer: Destination
    upload: UploadSettings  # dicomweb_address: the source store (for projects/... names), calling_aet: --client_aet
    dead_letter_topic: str = ""
    workers: int = 4


class SinglePeerExport:
    def __init__(self, settings: SinglePeerSettings) -> None:
        self.settings = settings
        routing = RoutingTable((Rule(0, Filter.parse(""), (settings.peer,)),), has_default=False)
        self.cloud = CloudExport(CloudExportSettings("", settings.dead_letter_topic, settings.dead_letter_topic, routing, settings.upload))
        self.exporter: Exporter = self.cloud.exporter
        self.exporter.api_base = api_base_of(settings.upload.dicomweb_address)
        self._future: Any = None
        self._client: Any = None

    def handle(self, cloud_event: Any, delivery_attempt: int) -> bool:
        """Fan out and deliver one notification; True to ack, False to nack (redeliver)."""
        try:
            messages = self.exporter.fan_out(cloud_event)
        except MalformedEvent as exc:
            self.cloud.dead_letter(self.settings.dead_letter_topic, cloud_event, str(exc), {})
            return True
        except TransientUploadError as exc:
            log.warning("store unavailable, will retry", extra=fields(reason=str(exc)))
            return False
        for message in messages:
            try:
                result = self.exporter.deliver(message, delivery_attempt)
            except TransientUploadError as exc:
                log.warning("peer unavailable, will retry", extra=fields(**message.log_fields(), reason=str(exc)))
                return False
            if result.outcome == "dead_lettered" and result.record is not None:
                self.cloud.dead_letter(self.settings.dead_letter_topic, cloud_event, str(result.record.get("reason", "")),
                                        {"destination": message.target.label})
        return True

    def start(self) -> None:
        from google.cloud import pubsub_v1

        self._client = pubsub_v1.SubscriberClient()

        def callback(message: Any) -> None:
            event = pubsub_cloud_event(message.data, dict(message.attributes), message_id=message.message_id,
                                       subscription=self.settings.subscription)
            try:
                ok = self.handle(event, message.delivery_attempt or 1)
            except Exception:  # a bug must not kill the subscriber thread: nack and say so
                log.exception("export failed unexpectedly", extra=fields(message_id=message.message_id))
                ok = False
            message.ack() if ok else message.nack()

        flow = pubsub_v1.types.FlowControl(max_messages=self.settings.workers)
        # On stop, deliveries in progress finish (and ack) before the stream closes.
        self._future = self._client.subscribe(self.settings.subscription, callback, flow_control=flow, await_callbacks_on_shutdown=True)

    def wait(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            if self._future is not None and self._future.done():
                self._future.result()  # raises what ended the stream (e.g. no such subscription)
                return

    def stop(self) -> None:
        if self._future is not None:
            self._future.cancel()
            try:
                self._future.result(timeout=60)
            except Exception:  # cancelled, or already failed: either way, stopped
                pass
        if self._client is not None:
            self._client.close()
