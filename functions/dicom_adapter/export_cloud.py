"""Export in the cloud: `export_fanout` and `deliver` over Pub/Sub.

  export_fanout  store notification → one message per destination on the exports topic; a
                 publish that fails raises, so Pub/Sub redelivers the notification (deliver is
                 idempotent, so a repeated fan-out costs a repeated, harmless delivery)
  deliver        export message → destination; transient failures raise (redelivery, then the
                 subscription's dead-letter topic); permanent ones are published to the exports
                 dead-letter topic at once, with the reason in the attributes

A notification or message that can never succeed (not a WADO path, unknown instance, bad
base64, not JSON) is published to its dead-letter topic with the reason and acknowledged; it
never crashes the function or loops. Both dead-letter topics are held by pull subscriptions
(terraform/pubsub.tf); docs/operations.md shows how to republish them.
"""

from __future__ import annotations

import base64
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

from cloudevents.http import CloudEvent

from .aets import load_aet_dictionary
from .config import UploadSettings, _truthy, env_name
from .events import MalformedEvent, message_data, utc_now
from .export import DeliveryResult, Exporter
from .logs import fields
from .notifications import api_base_of
from .pubsub import EventPublisher
from .routing import ENV_DESTINATION_CONFIG_JSON, RoutingTable, load_routing
from .upload import Uploader

log = logging.getLogger(__name__)

ATTRIBUTE_LIMIT = 1024  # Pub/Sub allows more; a reason is never that long, a store's text may be


@dataclass(frozen=True)
class CloudExportSettings:
    exports_topic: str
    exports_dead_letter_topic: str
    notifications_dead_letter_topic: str
    routing: RoutingTable
    upload: UploadSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "CloudExportSettings":
        """Rules from DICOM_ADAPTER_DESTINATION_CONFIG_JSON (or Google's ENV_DESTINATION_CONFIG_JSON),
        DIMSE destinations by name from DICOM_ADAPTER_AET_DICTIONARY_INLINE (or ENV_AETS_JSON)."""
        env = os.environ if env is None else env
        peers = load_aet_dictionary(None, env.get(env_name("aet_dictionary_inline")) or env.get("ENV_AETS_JSON"))
        routing = load_routing(
            None,
            env.get(env_name("destination_config_json")) or env.get(ENV_DESTINATION_CONFIG_JSON),
            peers=peers,
            send_to_all_matching=_truthy(env.get(env_name("send_to_all_matching_destinations"))),
            export=True,
        )
        return cls(
            exports_topic=env.get(env_name("exports_topic"), ""),
            exports_dead_letter_topic=env.get(env_name("exports_dead_letter_topic"), ""),
            notifications_dead_letter_topic=env.get(env_name("notifications_dead_letter_topic"), ""),
            routing=routing,
            upload=UploadSettings.from_env(env),
        )


class CloudExport:
    def __init__(self, settings: CloudExportSettings, uploader: Uploader | None = None) -> None:
        self.settings = settings
        self.exporter = Exporter(
            settings.routing, uploader or Uploader(settings.upload), api_base=api_base_of(settings.upload.dicomweb_address)
        )
        self._publishers: dict[str, EventPublisher] = {}

    def _publisher(self, topic: str) -> EventPublisher:
        if topic not in self._publishers:
            self._publishers[topic] = EventPublisher(topic)
        return self._publishers[topic]

    def fan_out(self, cloud_event: CloudEvent) -> int:
        """The body of `export_fanout`: the number of export messages published."""
        try:
            messages = self.exporter.fan_out(cloud_event)
        except MalformedEvent as exc:
            self.dead_letter(self.settings.notifications_dead_letter_topic, cloud_event, str(exc), {})
            return 0
        if messages and not self.settings.exports_topic:
            raise RuntimeError(f"{env_name('exports_topic')} is not set: nowhere to publish the exports")
        for message in messages:
            self._publisher(self.settings.exports_topic).publish_data(message.to_json(), message.pubsub_attributes())
        return len(messages)

    def deliver(self, cloud_event: CloudEvent, delivery_attempt: int) -> DeliveryResult:
        """The body of `deliver`."""
        try:
            result = self.exporter.deliver_cloud_event(cloud_event, delivery_attempt)
        except MalformedEvent as exc:
            self.dead_letter(self.settings.exports_dead_letter_topic, cloud_event, str(exc), {})
            return DeliveryResult("dead_lettered", {"reason": str(exc)})
        if result.outcome == "dead_lettered" and result.record is not None:
            record = result.record
            extra = {k: str(record[k]) for k in ("destination", "http_status", "store_said") if record.get(k) not in (None, "")}
            self.dead_letter(self.settings.exports_dead_letter_topic, cloud_event, str(record.get("reason", "")), extra)
        return result

    def dead_letter(self, topic: str, cloud_event: CloudEvent, reason: str, extra: dict[str, str]) -> None:
        """Keep the message, as it came, on a dead-letter topic with the reason; ERROR log."""
        data, attributes = _original(cloud_event)
        attributes.update({k: v[:ATTRIBUTE_LIMIT] for k, v in extra.items()})
        attributes.update(reason=reason[:ATTRIBUTE_LIMIT], dead_lettered_at=utc_now())
        log.error("export message dead-lettered", extra=fields(reason=reason, event_id=cloud_event["id"], dead_letter_topic=topic or None,
                                                            sop_instance_uid=attributes.get("sop_instance_uid") or attributes.get("sopInstanceUID")))
        if topic:
            self._publisher(topic).publish_data(data, attributes)
        else:
            log.error("no dead-letter topic configured: the message is dropped after this line", extra=fields(event_id=cloud_event["id"]))


def _original(cloud_event: CloudEvent) -> tuple[bytes, dict[str, str]]:
    """The Pub/Sub message's data and attributes, even where its data is not valid base64."""
    body: Any = cloud_event.get_data()
    message = body.get("message") if isinstance(body, dict) else None
    attributes = dict((message or {}).get("attributes") or {}) if isinstance(message, dict) else {}
    try:
        data = message_data(cloud_event)
    except MalformedEvent:
        raw = (message or {}).get("data") if isinstance(message, dict) else None
        data = raw.encode() if isinstance(raw, str) else base64.b64encode(repr(body).encode())
    return data, {str(k): str(v) for k, v in attributes.items()}
