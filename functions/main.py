"""Cloud Functions (gen2) entry points. Thin: each one hands its event to the shared package.

Deploy this folder as it is (`gcloud functions deploy ... --source functions --entry-point
stow_upload`); the local runtime calls the same code with the same CloudEvents.
"""

from __future__ import annotations

import functools
import os

import flask
import functions_framework
from cloudevents.http import CloudEvent

from dicom_adapter import qido_function
from dicom_adapter.config import UploadSettings, env_name
from dicom_adapter.dicomweb import DicomWebClient
from dicom_adapter.logs import configure_logging
from dicom_adapter.upload import Uploader, store_client


@functools.cache
def _uploader() -> Uploader:
    configure_logging(json_format=True)
    return Uploader(UploadSettings.from_env())


@functions_framework.cloud_event
def stow_upload(cloud_event: CloudEvent) -> None:
    """Pub/Sub 'buffered' message → STOW-RS. Raises on transient failure so Pub/Sub redelivers."""
    _uploader().handle_cloud_event(cloud_event, _delivery_attempt(cloud_event))


def _delivery_attempt(cloud_event: CloudEvent) -> int:
    body = cloud_event.get_data()
    attempt = body.get("deliveryAttempt") if isinstance(body, dict) else None
    return int(attempt) if isinstance(attempt, int) else 1


@functools.cache
def _store_client() -> DicomWebClient:
    configure_logging(json_format=True)
    return store_client(UploadSettings.from_env())


@functions_framework.http
def qido(request: flask.Request) -> flask.Response:
    """The edge's C-FIND and retrieve look-ups (internal only): identifier in, matches streamed out."""
    return qido_function.respond(
        request,
        _store_client(),
        fuzzy=os.environ.get(env_name("fuzzy_matching"), "").lower() in {"1", "true", "yes", "on"},
        page_size=int(os.environ.get(env_name("qido_page_size"), 500)),
    )
