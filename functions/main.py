"""Cloud Functions (gen2) entry points. Thin: each one hands its event to the shared package.

Deploy this folder as it is (`gcloud functions deploy ... --source functions --entry-point
stow_upload`); the local runtime calls the same code with the same CloudEvents.

  stow_upload  Pub/Sub "buffered" message → STOW-RS; raises on a transient failure (redelivery)
  dead_letter  message that exhausted its delivery attempts → dead-letter record in the bucket
  sweep        HTTP (Cloud Scheduler) → re-announce buffered objects that were never uploaded
  export_fanout  DICOM store notification → one "exports" message per matching destination
  deliver      "exports" message → the instance to its destination (STOW-RS or C-STORE)
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any

import flask
import functions_framework
from cloudevents.http import CloudEvent

from dicom_adapter import qido_function
from dicom_adapter.config import SweepSettings, UploadSettings, env_name
from dicom_adapter.dicomweb import DicomWebClient
from dicom_adapter.export_cloud import CloudExport, CloudExportSettings
from dicom_adapter.logs import configure_logging, fields
from dicom_adapter.store_profiles import store_profile
from dicom_adapter.sweep import sweep_buffer
from dicom_adapter.upload import Uploader, store_client


@functools.cache
def _uploader() -> Uploader:
    configure_logging(json_format=True)
    return Uploader(UploadSettings.from_env())


@functions_framework.cloud_event
def stow_upload(cloud_event: CloudEvent) -> None:
    """Pub/Sub 'buffered' message → STOW-RS. Raises on transient failure so Pub/Sub redelivers."""
    _uploader().handle_cloud_event(cloud_event, _delivery_attempt(cloud_event) or 1)


@functions_framework.cloud_event
def dead_letter(cloud_event: CloudEvent) -> None:
    """A 'buffered' message Pub/Sub gave up on (its dead-letter topic): keep it as a dead letter."""
    _uploader().give_up(cloud_event, _delivery_attempt(cloud_event))


@functions_framework.http
def sweep(request: flask.Request) -> tuple[dict[str, Any], int]:
    """Cloud Scheduler → re-publish the events of buffered objects older than the minimum age."""
    configure_logging(json_format=True)
    result = sweep_buffer(SweepSettings.from_env())
    return result.as_json(), 200 if not result.failed else 500


@functools.cache
def _export() -> CloudExport:
    configure_logging(json_format=True)
    return CloudExport(CloudExportSettings.from_env())


@functions_framework.cloud_event
def export_fanout(cloud_event: CloudEvent) -> None:
    """Store notification → export messages. Raises only if they could not be published."""
    _export().fan_out(cloud_event)


@functions_framework.cloud_event
def deliver(cloud_event: CloudEvent) -> None:
    """Export message → destination. Raises on transient failure so Pub/Sub redelivers."""
    _export().deliver(cloud_event, _delivery_attempt(cloud_event) or 1)


def _delivery_attempt(cloud_event: CloudEvent) -> int | None:
    """Pub/Sub's count (set where the subscription has a dead-letter policy)."""
    body = cloud_event.get_data()
    if not isinstance(body, dict):
        return None
    attempt = body.get("deliveryAttempt")
    if not isinstance(attempt, int):
        attributes = (body.get("message") or {}).get("attributes") or {}
        attempt = attributes.get("CloudPubSubDeadLetterSourceDeliveryCount")
    try:
        return int(attempt) if attempt is not None else None
    except ValueError:
        return None


@functools.cache
def _store_client() -> DicomWebClient:
    configure_logging(json_format=True)
    return store_client(UploadSettings.from_env())


@functions_framework.http
def qido(request: flask.Request) -> flask.Response:
    """The edge's C-FIND and retrieve look-ups (internal only): identifier in, matches streamed out."""
    try:
        profile = store_profile(os.environ.get(env_name("qido_store_profile")))
    except ValueError as exc:  # a deployment mistake: every request says so, none is answered wrongly
        logging.getLogger(__name__).error("qido misconfigured", extra=fields(reason=str(exc)))
        return flask.Response(json.dumps({"error": str(exc)}), status=500, mimetype="application/json")
    return qido_function.respond(
        request,
        _store_client(),
        fuzzy=os.environ.get(env_name("fuzzy_matching"), "").lower() in {"1", "true", "yes", "on"},
        page_size=int(os.environ.get(env_name("qido_page_size"), 500)),
        profile=profile,
    )
