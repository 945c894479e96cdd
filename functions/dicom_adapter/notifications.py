"""The DICOM store's "new instance" notification, as the Healthcare API publishes it.

The message data is the instance's WADO path,
`projects/P/locations/L/datasets/D/dicomStores/S/dicomWeb/studies/ST/series/SE/instances/I`;
newer stores add attributes (`action`, `modality`, `studyInstanceUID`, ...). Locally the
upload process emits the same message for the local store, with the instance's full URL as
the data (`http://host/dicom-web/studies/.../instances/I`), since that store has no
`projects/...` name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import quote, unquote

from cloudevents.http import CloudEvent

from .events import MalformedEvent, message_data

HEALTHCARE_API = "https://healthcare.googleapis.com/v1"
LOCAL_NOTIFICATIONS_TOPIC = "//pubsub.googleapis.com/projects/local/topics/dicom-store-notifications"
LOCAL_NOTIFICATIONS_SUBSCRIPTION = "projects/local/subscriptions/dicom-store-notifications-export-fanout"
# Actions that do not announce instance content to send on (deletions, storage class changes).
IGNORED_ACTIONS = frozenset({"DeleteInstances", "DeleteSeries", "DeleteStudy", "SetBlobStorageSettings"})

_UID = r"[0-9]+(?:\.[0-9]+)*"
_WADO_PATH = re.compile(rf"(?P<root>.+?)/studies/(?P<study>{_UID})/series/(?P<series>{_UID})/instances/(?P<sop>{_UID})/?")
_STORE_NAME = re.compile(r"projects/[^/]+/locations/[^/]+/datasets/[^/]+/dicomStores/[^/]+/dicomWeb")
# Notification attributes that are DICOM attributes a rule may test, by keyword.
ATTRIBUTE_KEYWORDS = {
    "modality": "Modality",
    "studyInstanceUID": "StudyInstanceUID",
    "seriesInstanceUID": "SeriesInstanceUID",
    "sopInstanceUID": "SOPInstanceUID",
}


@dataclass(frozen=True)
class StoredInstanceRef:
    """An instance in a DICOMweb store: the store's service root and the three UIDs."""

    store: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str

    @property
    def wado_url(self) -> str:
        segments = (quote(uid, safe="") for uid in (self.study_instance_uid, self.series_instance_uid, self.sop_instance_uid))
        return "{}/studies/{}/series/{}/instances/{}".format(self.store, *segments)

    def log_fields(self) -> dict[str, str]:
        return {"sop_instance_uid": self.sop_instance_uid, "study_instance_uid": self.study_instance_uid, "source_store": self.store}


@dataclass(frozen=True)
class Notification:
    instance: StoredInstanceRef
    attributes: dict[str, str] = field(default_factory=dict)
    message_id: str = ""

    @property
    def action(self) -> str:
        return self.attributes.get("action", "")

    def known_values(self) -> dict[str, str]:
        """DICOM keyword → value that the notification itself tells (no store request needed)."""
        values = {
            "StudyInstanceUID": self.instance.study_instance_uid,
            "SeriesInstanceUID": self.instance.series_instance_uid,
            "SOPInstanceUID": self.instance.sop_instance_uid,
        }
        for attribute, keyword in ATTRIBUTE_KEYWORDS.items():
            if self.attributes.get(attribute):
                values[keyword] = self.attributes[attribute]
        return values


def api_base_of(dicomweb_address: str | None) -> str:
    """Where `projects/...` names resolve: the API root of the configured store if it is a
    Healthcare API URL (or a stand-in for one), else the Healthcare API itself."""
    if dicomweb_address and "/projects/" in dicomweb_address:
        return dicomweb_address[: dicomweb_address.index("/projects/")]
    return HEALTHCARE_API


def parse_wado_path(text: str, api_base: str = HEALTHCARE_API) -> StoredInstanceRef:
    """A notification's data (a `projects/...` WADO path or an http(s) instance URL)."""
    text = text.strip()
    found = _WADO_PATH.fullmatch(unquote(text)) if text.isprintable() else None
    if not found:
        raise MalformedEvent(f"notification data is not a WADO instance path: {text[:200]!r}")
    root = found.group("root")
    if root.startswith("projects/"):
        if not _STORE_NAME.fullmatch(root):
            raise MalformedEvent(f"notification names no DICOM store: {root[:200]!r}")
        root = f"{api_base.rstrip('/')}/{root}"
    elif not root.startswith(("http://", "https://")):
        raise MalformedEvent(f"notification data is neither projects/... nor an http(s) URL: {text[:200]!r}")
    return StoredInstanceRef(root, found.group("study"), found.group("series"), found.group("sop"))


def notification_from_cloud_event(cloud_event: CloudEvent, api_base: str = HEALTHCARE_API) -> Notification:
    """Parse the messagePublished CloudEvent of a store notification (MalformedEvent if it is not one)."""
    data = message_data(cloud_event)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEvent("notification data is not text") from None
    body: Any = cloud_event.get_data()
    message: Mapping[str, Any] = body.get("message", {}) if isinstance(body, dict) else {}
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise MalformedEvent("notification attributes are not a map")
    return Notification(parse_wado_path(text, api_base), {str(k): str(v) for k, v in attributes.items()}, str(message.get("messageId", "")))


def local_notification(store: str, study: str, series: str, sop: str) -> tuple[bytes, dict[str, str]]:
    """The message the local runtime emits once its store holds an instance: data and attributes."""
    ref = StoredInstanceRef(store.rstrip("/"), study, series, sop)
    attributes = {"action": "StoreInstances", "studyInstanceUID": study, "seriesInstanceUID": series, "sopInstanceUID": sop}
    return ref.wado_url.encode(), attributes
