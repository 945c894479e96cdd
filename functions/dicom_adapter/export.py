"""Export: instances new in the DICOM store go on to the systems the export rules name.

Two steps, each at-least-once and idempotent, so each may run twice:
  fan_out   a store notification → one `ExportMessage` per matching destination. The rules see
            what the notification tells (UIDs, modality) and, only where they need more, the
            instance's WADO-RS metadata.
  deliver   one `ExportMessage` → the instance fetched by WADO-RS as stored (transfer-syntax=*,
            streamed to a temporary file) and handed to the import side's upload code
            (`Uploader.upload`): STOW-RS to a DICOMweb destination or C-STORE to a DIMSE one,
            with its retries, duplicate check and verdicts. Transient failures raise
            `TransientUploadError` (the transport redelivers); permanent ones come back as a
            dead-letter record, which the transport keeps (Pub/Sub dead-letter topic, spool).

The transports: Cloud Functions over Pub/Sub (export_cloud.py), the local runtime over the
spool (edge_listener/export_queue.py), and `dicom-adapter export` (one peer, a pull subscription).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from cloudevents.http import CloudEvent
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

from .buffers.spool import SpoolObject
from .dicomweb import DicomWebClient, DicomWebError
from .events import BufferedInstance, MalformedEvent, message_data, pubsub_cloud_event, utc_now
from .logs import fields
from .notifications import IGNORED_ACTIONS, Notification, StoredInstanceRef, notification_from_cloud_event
from .part10 import MalformedDataset, read_file_meta
from .routing import Destination, RoutingTable
from .upload import TransientUploadError, Uploader

log = logging.getLogger(__name__)

LOCAL_EXPORTS_TOPIC = "//pubsub.googleapis.com/projects/local/topics/dicom-exports"
LOCAL_EXPORTS_SUBSCRIPTION = "projects/local/subscriptions/dicom-exports-deliver"


@dataclass(frozen=True)
class ExportMessage:
    """One instance for one destination: the data of a message on the exports topic."""

    instance: StoredInstanceRef
    destination: dict[str, Any]  # routing.Destination.to_json()
    notified_at: str = dataclasses.field(default_factory=utc_now)
    notification_id: str = ""

    @property
    def target(self) -> Destination:
        return Destination.from_json(self.destination)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "ExportMessage":
        try:
            body = json.loads(data)
            instance = StoredInstanceRef(**body["instance"])
            Destination.from_json(body["destination"])
            return cls(instance, body["destination"], str(body.get("notified_at", "")), str(body.get("notification_id", "")))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MalformedEvent(f"not an export message: {type(exc).__name__}: {str(exc)[:200]}") from None

    def pubsub_attributes(self) -> dict[str, str]:
        return {"sop_instance_uid": self.instance.sop_instance_uid, "destination": self.target.label}

    def cloud_event(self) -> CloudEvent:
        """The CloudEvent `deliver` gets for this message (the local runtime builds it too)."""
        return pubsub_cloud_event(self.to_json(), self.pubsub_attributes(), topic=LOCAL_EXPORTS_TOPIC, subscription=LOCAL_EXPORTS_SUBSCRIPTION)

    def log_fields(self) -> dict[str, Any]:
        return {**self.instance.log_fields(), "destination": self.target.label}


@dataclass(frozen=True)
class DeliveryResult:
    outcome: str  # stored | duplicate | overwritten | dead_lettered
    record: dict[str, Any] | None = None  # the dead-letter record
    transcode_skipped: str = ""  # as UploadResult's


class _Download(SpoolObject):
    """The instance fetched for one delivery, as the upload code's `BufferedObject`: a
    temporary file that `complete` removes and `dead_letter` only records (the store keeps
    the instance; the transport keeps the message). `convert` fetches it in another syntax."""

    def __init__(self, path: Path, exporter: "Exporter", ref: StoredInstanceRef) -> None:
        super().__init__(path)
        self.record: dict[str, Any] | None = None
        self._exporter = exporter
        self._ref = ref

    def dead_letter(self, record: dict[str, Any]) -> None:
        self.record = record
        self.path.unlink(missing_ok=True)

    @contextmanager
    def convert(self, transfer_syntax: str) -> Iterator[Path]:
        converted = self.path.with_name(self.path.name + ".converted")
        try:
            if not self._exporter.fetch(self._ref, converted, transfer_syntax):
                raise DicomWebError("the store no longer has the instance", 404)
            yield converted
        finally:
            converted.unlink(missing_ok=True)


class Exporter:
    """The fan-out and delivery steps, whatever the transport."""

    def __init__(self, routing: RoutingTable, uploader: Uploader, *, api_base: str, work_dir: str | None = None) -> None:
        self.routing = routing
        self.uploader = uploader
        self.api_base = api_base
        self.work_dir = work_dir  # where downloads wait (None: the system's temporary folder)

    # -- fan-out ---------------------------------------------------------------------------

    def fan_out(self, cloud_event: CloudEvent) -> list[ExportMessage]:
        """The export messages of one store notification. Raises MalformedEvent for a message
        that can never be exported (the caller dead-letters it) and TransientUploadError when
        the store could not be asked now."""
        notification = notification_from_cloud_event(cloud_event, self.api_base)
        if notification.action in IGNORED_ACTIONS:
            log.info("notification not exported (action)", extra=fields(**notification.instance.log_fields(), action=notification.action))
            return []
        if not self.routing.rules:
            return []
        dataset = self._routing_dataset(notification)
        messages = [
            ExportMessage(notification.instance, destination.to_json(), utc_now(), notification.message_id)
            for destination in self.routing.route("", "", dataset)
            if destination is not None
        ]
        log.info("routed", extra=fields(**notification.instance.log_fields(), destinations=len(messages)))
        return messages

    def _routing_dataset(self, notification: Notification) -> Dataset | None:
        """What the rules test: the notification's own values if they cover every attribute
        the rules name, else the instance's metadata from the store."""
        if not self.routing.needs_dataset:
            return None
        known = notification.known_values()
        if all(keyword_for_tag(tag) in known for tag in self.routing.tags):
            dataset = Dataset()
            for keyword, value in known.items():
                setattr(dataset, keyword, value)
            return dataset
        ref = notification.instance
        try:
            metadata = self._client(ref.store).retrieve_instance_metadata(ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid)
        except DicomWebError as exc:
            if self._transient(exc):
                raise TransientUploadError(f"instance metadata not available now: {exc.reason}") from None
            raise MalformedEvent(f"the store refused the instance's metadata: {exc.reason}") from None
        if metadata is None:
            raise MalformedEvent("unknown instance: the store has no instance at this path")
        try:
            return Dataset.from_json(metadata, bulk_data_uri_handler=lambda tag, vr, uri: None)
        except (ValueError, TypeError, KeyError) as exc:
            raise MalformedEvent(f"the store's metadata is not DICOM JSON: {type(exc).__name__}") from None

    # -- delivery ----------------------------------------------------------------------------

    def deliver_cloud_event(self, cloud_event: CloudEvent, delivery_attempt: int = 1) -> DeliveryResult:
        """The body of `deliver` (MalformedEvent for a message that is not an export message)."""
        return self.deliver(ExportMessage.from_json(message_data(cloud_event)), delivery_attempt)

    def deliver(self, message: ExportMessage, delivery_attempt: int = 1) -> DeliveryResult:
        ref = message.instance
        with tempfile.TemporaryDirectory(prefix="export-", dir=self.work_dir) as folder:
            path = Path(folder) / f"{ref.sop_instance_uid}.dcm"
            try:
                found = self.fetch(ref, path)
            except DicomWebError as exc:
                return self._dead_letter(message, f"the store refused the instance: {exc.reason}", delivery_attempt)
            if not found:
                return self._dead_letter(message, "the store has no such instance (deleted since the notification?)", delivery_attempt)
            try:
                with open(path, "rb") as fp:
                    meta = read_file_meta(fp)
            except MalformedDataset as exc:
                return self._dead_letter(message, f"the store returned no Part-10 file: {exc}", delivery_attempt)
            instance = BufferedInstance(
                buffer_uri=path.as_uri(),
                sop_class_uid=meta.sop_class_uid,
                sop_instance_uid=ref.sop_instance_uid,
                study_instance_uid=ref.study_instance_uid,
                series_instance_uid=ref.series_instance_uid,
                transfer_syntax_uid=meta.transfer_syntax_uid,
                calling_aet=meta.source_aet,
                called_aet="",
                size=path.stat().st_size,
                received_at=message.notified_at,
                destination=message.destination,
            )
            download = _Download(path, self, ref)
            result = self.uploader.upload(instance, delivery_attempt, buffered=download)
            if result.outcome == "dead_lettered":
                return DeliveryResult("dead_lettered", self._record(message, download.record or {"reason": result.detail}, delivery_attempt))
            return DeliveryResult(result.outcome, transcode_skipped=result.transcode_skipped)

    def fetch(self, ref: StoredInstanceRef, path: Path, transfer_syntax: str = "*") -> bool:
        """WADO-RS the instance into `path`, streamed; False if the store does not have it."""
        try:
            retrieved = self._client(ref.store).retrieve_instance(
                ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid, transfer_syntax=transfer_syntax
            )
            if retrieved is None:
                return False
            with retrieved, open(path, "wb") as out:
                retrieved.copy_to(out)
        except DicomWebError as exc:
            if self._transient(exc):
                raise TransientUploadError(f"could not fetch the instance from the store: {exc.reason}") from None
            raise
        return True

    def _client(self, store: str) -> DicomWebClient:
        return self.uploader.client_for(Destination.dicomweb(store))

    def _transient(self, exc: DicomWebError) -> bool:
        return exc.http_status is None or exc.http_status in self.uploader.settings.retry_status_codes

    def _dead_letter(self, message: ExportMessage, reason: str, delivery_attempt: int) -> DeliveryResult:
        log.error("export dead-lettered", extra=fields(**message.log_fields(), reason=reason))
        return DeliveryResult("dead_lettered", self._record(message, {"reason": reason}, delivery_attempt))

    @staticmethod
    def _record(message: ExportMessage, found: dict[str, Any], delivery_attempt: int) -> dict[str, Any]:
        return {
            "reason": found.get("reason", ""),
            "store_said": found.get("store_said", ""),
            "http_status": found.get("http_status"),
            "failure_reason": found.get("failure_reason"),
            "destination": message.target.label,
            "delivery_attempt": delivery_attempt,
            "dead_lettered_at": utc_now(),
            "export": json.loads(message.to_json()),
        }
