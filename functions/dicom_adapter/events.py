"""The event that announces a buffered instance, and its Pub/Sub CloudEvent envelope.

The edge publishes one `BufferedInstance` per acknowledged C-STORE. In the cloud it travels as
the data of a Pub/Sub message that Eventarc delivers to `stow_upload` as a CloudEvent of type
`google.cloud.pubsub.topic.v1.messagePublished`; locally the dispatcher builds the very same
CloudEvent, so the upload code cannot tell the two runtimes apart.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from cloudevents.http import CloudEvent

PUBSUB_MESSAGE_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
LOCAL_TOPIC = "//pubsub.googleapis.com/projects/local/topics/dicom-buffered"
LOCAL_SUBSCRIPTION = "projects/local/subscriptions/dicom-buffered-stow-upload"


class MalformedEvent(ValueError):
    """A message that is not a buffered-instance event: it can never succeed, so retrying is useless."""


@dataclass(frozen=True)
class BufferedInstance:
    """One received instance waiting in the buffer (spool file or GCS object) for upload."""

    buffer_uri: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    calling_aet: str
    called_aet: str
    size: int
    received_at: str = dataclasses.field(default_factory=lambda: utc_now())
    # Where this copy goes (routing.Destination.to_json()); None: the uploader's default store.
    destination: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        # Shallow on purpose: dataclasses.asdict deep-copies every value, which showed in the
        # per-instance cost of the upload path (the values are strings, ints and a JSON dict).
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return json.dumps(fields, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "BufferedInstance":
        try:
            fields = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MalformedEvent(f"event data is not JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise MalformedEvent("event data is not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names - set(fields) if n not in ("received_at", "destination"))
        if missing:
            raise MalformedEvent(f"event data lacks {', '.join(missing)}")
        if fields.get("destination") is not None:
            from .routing import Destination

            try:
                Destination.from_json(fields["destination"])
            except (ValueError, AttributeError) as exc:
                raise MalformedEvent(f"event destination is unusable: {exc}") from None
        try:
            return cls(**{k: v for k, v in fields.items() if k in names})
        except TypeError as exc:
            raise MalformedEvent(str(exc)) from None

    def log_fields(self) -> dict[str, Any]:
        """The fields that may go into a log line: UIDs, AE titles and size, no demographics."""
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "sop_class_uid": self.sop_class_uid,
            "study_instance_uid": self.study_instance_uid,
            "transfer_syntax_uid": self.transfer_syntax_uid,
            "calling_aet": self.calling_aet,
            "called_aet": self.called_aet,
            "size": self.size,
            "destination": self.destination_label,
        }

    @property
    def destination_label(self) -> str | None:
        if not self.destination:
            return None  # the default store; asked for every log line, so no import on this path
        # Imported here: routing loads pydicom's data dictionary, which events do not need.
        from .routing import Destination

        return Destination.from_json(self.destination).label

    def pubsub_attributes(self) -> dict[str, str]:
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "calling_aet": self.calling_aet,
            "called_aet": self.called_aet,
            **({"destination": self.destination_label} if self.destination else {}),
        }


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def pubsub_cloud_event(
    data: bytes,
    attributes: Mapping[str, str] | None = None,
    *,
    topic: str = LOCAL_TOPIC,
    subscription: str = LOCAL_SUBSCRIPTION,
    message_id: str | None = None,
) -> CloudEvent:
    """Wrap message bytes in the CloudEvent Eventarc delivers for a Pub/Sub message."""
    message_id = message_id or uuid.uuid4().hex
    published = utc_now()
    return CloudEvent(
        {
            "type": PUBSUB_MESSAGE_PUBLISHED,
            "source": topic,
            "id": message_id,
            "specversion": "1.0",
            "datacontenttype": "application/json",
            "time": published,
        },
        {
            "message": {
                "data": base64.b64encode(data).decode("ascii"),
                "attributes": dict(attributes or {}),
                "messageId": message_id,
                "publishTime": published,
            },
            "subscription": subscription,
        },
    )


def message_data(cloud_event: CloudEvent) -> bytes:
    """The decoded data of the Pub/Sub message inside a messagePublished CloudEvent."""
    body = cloud_event.get_data()
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except json.JSONDecodeError as exc:
            raise MalformedEvent(f"CloudEvent body is not JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
        raise MalformedEvent("CloudEvent body has no Pub/Sub 'message'")
    encoded = body["message"].get("data")
    if not isinstance(encoded, str):
        raise MalformedEvent("Pub/Sub message has no 'data'")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedEvent(f"Pub/Sub message data is not base64: {exc}") from None


def buffered_instance_from_cloud_event(cloud_event: CloudEvent) -> BufferedInstance:
    return BufferedInstance.from_json(message_data(cloud_event))


def buffered_instance_cloud_event(instance: BufferedInstance) -> CloudEvent:
    return pubsub_cloud_event(instance.to_json(), instance.pubsub_attributes())
