"""stow_upload: one buffered instance into the DICOM store, exactly as it was received.

Given the event of a buffered instance, upload it by STOW-RS and then remove it from the
buffer. Every delivery may be a repeat (at-least-once), so:
  * a buffered object that is gone was handled by an earlier delivery: nothing to do;
  * a store that already holds an instance with this UID is asked for it, and if its data set
    is ours byte for byte the upload counts as done; if not, that is a conflict, reported
    (or, with stow_overwrite, the stored one is deleted and ours stored);
  * transient failures are retried here a few times with backoff and jitter, then raised so
    the transport (Pub/Sub, or the local dispatcher) redelivers later;
  * permanent rejections move the object to the dead letters with the reason, and log ERROR.
A destination with a transform (de-identification, transcoding) gets a copy made here, after
the ack (transformed_copy.py); the others get the buffered bytes as they are.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import requests
from cloudevents.http import CloudEvent
from tenacity import (
    RetryError,
    Retrying,
    retry_if_result,
    stop_after_attempt,
    wait_random_exponential,
)

from .aets import Peer
from .buffers import BufferedObject, open_buffered_object
from .config import UploadSettings, uses_google_auth
from .credentials import BasicAuth, BearerAuth
from .dicomweb import DicomWebAddress, DicomWebClient, StowOutcome, StowVerdict
from .events import (
    BufferedInstance,
    MalformedEvent,
    buffered_instance_from_cloud_event,
    utc_now,
)
from .logs import fields
from .multipart import BodyPart
from .part10 import DatasetDigester
from .routing import DEFAULT_LABEL, Destination, DestinationAuth
from .transformed_copy import TransformedCopy, TransformFailed, transformed

if TYPE_CHECKING:  # imported where a copy is made (transformed_copy.py)
    from .transforms import Transform

log = logging.getLogger(__name__)


class TransientUploadError(RuntimeError):
    """The store could not take the instance now; deliver the event again later."""


@dataclass(frozen=True)
class UploadResult:
    """What became of one delivery (for the caller's counters and tests)."""

    outcome: str  # stored | duplicate | overwritten | already_done | dead_lettered | malformed_event
    detail: str = ""
    transcode_skipped: str = ""  # why a transformed copy kept its received transfer syntax


class Uploader:
    """Uploads buffered instances to their destination: the event's (a DICOMweb store by
    STOW-RS, a DIMSE peer by C-STORE), or the default store of the settings."""

    def __init__(
        self,
        settings: UploadSettings,
        session: requests.Session | None = None,
        on_stored: Callable[[BufferedInstance, Destination], None] | None = None,
    ) -> None:
        self.settings = settings
        self._session = session
        # Called once the store holds the instance, before it leaves the buffer: the local
        # runtime queues the store's notification there (durably), as the Healthcare API would.
        self._on_stored = on_stored or (lambda instance, destination: None)
        self._clients: dict[str, DicomWebClient] = {}
        self._lock = threading.Lock()

    def _client(self, address: str, auth: DestinationAuth | None = None) -> DicomWebClient:
        """One client (and connection pool) per DICOMweb store, shared by the upload threads."""
        with self._lock:
            key = f"{address} {auth}"
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = DicomWebClient(
                    DicomWebAddress(address),
                    self._session or _new_session(address, auth),
                    retry_status_codes=self.settings.retry_status_codes,
                    timeout=(self.settings.connect_timeout_s, self.settings.read_timeout_s),
                )
            return client

    def client_for(self, destination: Destination) -> DicomWebClient:
        """The client of a DICOMweb destination (its auth included)."""
        return self._client(destination.address, destination.auth)

    def _destination(self, instance: BufferedInstance) -> Destination | None:
        if instance.destination:
            return Destination.from_json(instance.destination)
        if not self.settings.dicomweb_address:
            return None
        return replace(Destination.dicomweb(self.settings.dicomweb_address), transform=self.settings.default_transform)

    def handle_cloud_event(self, cloud_event: CloudEvent, delivery_attempt: int = 1) -> UploadResult:
        """The body of the `stow_upload` entry point."""
        try:
            instance = buffered_instance_from_cloud_event(cloud_event)
        except MalformedEvent as exc:
            # Nothing to upload and nothing to keep but the message: say so loudly and ack it.
            log.error("dropping malformed buffered-instance event", extra=fields(reason=str(exc), event_id=cloud_event["id"]))
            return UploadResult("malformed_event", str(exc))
        return self.upload(instance, delivery_attempt)

    def give_up(self, cloud_event: CloudEvent, delivery_attempts: int | None) -> UploadResult:
        """The body of `dead_letter`: Pub/Sub stopped redelivering this event; keep the instance
        as a dead letter so that an operator can redrive it once the store is healthy."""
        try:
            instance = buffered_instance_from_cloud_event(cloud_event)
        except MalformedEvent as exc:
            log.error("dropping malformed dead-lettered event", extra=fields(reason=str(exc), event_id=cloud_event["id"]))
            return UploadResult("malformed_event", str(exc))
        buffered = open_buffered_object(instance.buffer_uri)
        if not buffered.exists():
            log.info("dead-lettered event of an instance that was uploaded meanwhile", extra=fields(**instance.log_fields()))
            return UploadResult("already_done")
        attempts = f"{delivery_attempts} delivery attempts" if delivery_attempts else "its delivery attempts"
        outcome = StowOutcome(StowVerdict.REJECTED, None, f"gave up after {attempts}: the upload kept failing transiently")
        return self._dead_letter(buffered, instance, outcome, delivery_attempts or 0)

    def upload(self, instance: BufferedInstance, delivery_attempt: int = 1, buffered: BufferedObject | None = None) -> UploadResult:
        """Store one buffered instance at its destination; `buffered`: the object itself, where
        the caller has it other than by its URI (an export's temporary download)."""
        buffered = buffered or open_buffered_object(instance.buffer_uri)
        if not buffered.exists():
            log.info("already uploaded by an earlier delivery", extra=fields(**instance.log_fields()))
            return UploadResult("already_done")
        destination = self._destination(instance)
        if destination is None:
            outcome = StowOutcome(StowVerdict.REJECTED, None, "the event names no destination and there is no default store")
            return self._dead_letter(buffered, instance, outcome, delivery_attempt)
        if destination.transform is None:
            return self._deliver(buffered, instance, destination, delivery_attempt)
        try:
            with transformed(buffered, instance, self._bounded(destination.transform), self.settings.deidentify_key_secret, redrive_command(instance)) as (copy, copied, did):
                result = self._deliver(copy, copied, destination, delivery_attempt)
                return replace(result, transcode_skipped=did.skipped.reason) if did.skipped else result
        except TransformFailed as exc:  # never the original instead: it was meant to be transformed
            return self._dead_letter(buffered, instance, StowOutcome(StowVerdict.REJECTED, None, str(exc)), delivery_attempt)

    def _bounded(self, transform: Transform) -> Transform:
        """The transform within this process's transcode memory (settings.transcode_max_pixel_bytes)."""
        cap = self.settings.transcode_max_pixel_bytes
        if cap is None or transform.max_pixel_bytes <= cap:
            return transform
        return replace(transform, max_pixel_bytes=cap)

    def _deliver(self, buffered: BufferedObject, instance: BufferedInstance, destination: Destination, delivery_attempt: int) -> UploadResult:
        """Store the object (the buffered one, or its transformed copy) and settle the outcome."""
        started = time.monotonic()
        outcome = self._store_with_retries(buffered, instance, destination)
        if outcome.verdict is StowVerdict.ALREADY_EXISTS:
            return self._resolve_existing(buffered, instance, destination, outcome, delivery_attempt, started)
        if outcome.verdict is StowVerdict.STORED:
            return self._stored(buffered, instance, destination, outcome, started)
        if outcome.verdict is StowVerdict.TRANSIENT:
            log.warning("store unavailable, will retry", extra=fields(**instance.log_fields(), reason=outcome.reason, delivery_attempt=delivery_attempt))
            raise TransientUploadError(outcome.reason)
        return self._dead_letter(buffered, instance, outcome, delivery_attempt)

    def _stored(
        self, buffered: BufferedObject, instance: BufferedInstance, destination: Destination, outcome: StowOutcome, started: float, batch: int = 1
    ) -> UploadResult:
        """The store holds the instance: tell the hook, then take it out of the buffer."""
        self._on_stored(instance, destination)
        buffered.complete()
        if outcome.warning_reason is not None:
            log.warning("stored with a warning", extra=fields(**instance.log_fields(), warning_reason=f"0x{outcome.warning_reason:04X}"))
        extra = {"batch": batch} if batch > 1 else {}
        if isinstance(buffered, TransformedCopy):  # a transformed copy says so, and of which instance
            extra |= buffered.log_fields() | {"received_sop_instance_uid": buffered.received.sop_instance_uid}
        log.info("stored", extra=fields(**instance.log_fields(), store=destination.label, duration_ms=_ms_since(started), http_status=outcome.http_status, **extra))
        return UploadResult("stored")

    def handle_cloud_events(self, deliveries: Sequence[tuple[CloudEvent, int]]) -> list[UploadResult | Exception]:
        """Several events at once (a backlog in the local runtime's queue): what the single
        `handle_cloud_event` would do for each, in fewer requests. Returns, per event, its result
        or the exception it raised (a TransientUploadError: deliver it again later)."""
        results: list[UploadResult | Exception | None] = [None] * len(deliveries)
        batch: list[tuple[int, BufferedInstance, int]] = []
        for index, (cloud_event, attempt) in enumerate(deliveries):
            try:
                batch.append((index, buffered_instance_from_cloud_event(cloud_event), attempt))
            except MalformedEvent:
                results[index] = result_or_exception(self.handle_cloud_event, cloud_event, attempt)
        for index, result in self._upload_together(batch):
            results[index] = result
        return [result if result is not None else UploadResult("already_done") for result in results]

    def _upload_together(self, batch: list[tuple[int, BufferedInstance, int]]) -> list[tuple[int, UploadResult | Exception]]:
        """One STOW-RS request for the instances bound to the same DICOMweb store; the ones it
        does not plainly store (a conflict, a rejection, a store that lists nothing) go the
        single-instance way, which knows how to resolve each case."""
        settled: list[tuple[int, UploadResult | Exception]] = []
        groups: dict[Destination, list[tuple[int, BufferedInstance, int, BufferedObject]]] = {}
        for index, instance, attempt in batch:
            destination = self._destination(instance)
            buffered = open_buffered_object(instance.buffer_uri)
            if destination is None or destination.kind != "dicomweb" or destination.transform is not None or not buffered.exists():
                settled.append((index, result_or_exception(self.upload, instance, attempt)))
                continue
            groups.setdefault(destination, []).append((index, instance, attempt, buffered))
        for destination, members in groups.items():
            started = time.monotonic()
            parts = [(BodyPart(buffered.size(), buffered.open_chunks), instance.sop_instance_uid) for _, instance, _, buffered in members]
            outcomes = self.client_for(destination).store_instances(parts) if len(members) > 1 else [None]
            for (index, instance, attempt, buffered), outcome in zip(members, outcomes):
                if outcome is not None and outcome.verdict is StowVerdict.STORED:
                    settled.append((index, result_or_exception(self._stored, buffered, instance, destination, outcome, started, len(members))))
                elif outcome is not None and outcome.verdict is StowVerdict.TRANSIENT:
                    log.warning("store unavailable, will retry", extra=fields(**instance.log_fields(), reason=outcome.reason, delivery_attempt=attempt))
                    settled.append((index, TransientUploadError(outcome.reason)))
                else:
                    settled.append((index, result_or_exception(self.upload, instance, attempt, buffered)))
        return settled

    def _store_with_retries(self, buffered: BufferedObject, instance: BufferedInstance, destination: Destination) -> StowOutcome:
        retrying = Retrying(
            retry=retry_if_result(lambda o: o.verdict is StowVerdict.TRANSIENT),
            stop=stop_after_attempt(self.settings.attempts_per_delivery),
            wait=wait_random_exponential(
                multiplier=self.settings.min_upload_delay_ms / 1000,
                max=self.settings.max_waiting_time_between_uploads_ms / 1000,
            ),
            reraise=False,
            before_sleep=lambda state: log.warning(
                "STOW-RS attempt failed, retrying",
                extra=fields(
                    **instance.log_fields(),
                    reason=state.outcome.result().reason,
                    attempt=state.attempt_number,
                    retry_in_s=round(state.next_action.sleep, 2) if state.next_action else None,
                ),
            ),
        )
        try:
            if destination.kind == "dimse":
                # Imported here: only DIMSE destinations need pynetdicom, so a STOW-only cold start skips it.
                from .dimse_send import send_part10

                peer = Peer(destination.aet, destination.host, destination.port, destination.tls)
                with buffered.local_path() as path:
                    # An export's download can be had in another syntax (the store converts); a buffered one cannot.
                    return retrying(send_part10, path, peer, calling_aet=self.settings.calling_aet,
                                    timeout_s=self.settings.connect_timeout_s * 6, convert=getattr(buffered, "convert", None),
                                    tls=self.settings.dimse_tls)
            part = BodyPart(buffered.size(), buffered.open_chunks)
            return retrying(self.client_for(destination).store_instance, part, instance.sop_instance_uid)
        except RetryError as exc:
            return exc.last_attempt.result()

    def _resolve_existing(
        self,
        buffered: BufferedObject,
        instance: BufferedInstance,
        destination: Destination,
        outcome: StowOutcome,
        delivery_attempt: int,
        started: float,
    ) -> UploadResult:
        client = self.client_for(destination)
        try:
            theirs = client.retrieve_dataset_digest(
                instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid
            )
        except requests.RequestException as exc:
            raise TransientUploadError(f"could not compare with the stored instance: {exc}") from None
        if theirs is None:
            # The store refused the instance as existing but has none: its 409 meant something else.
            return self._dead_letter(buffered, instance, StowOutcome(
                StowVerdict.REJECTED, outcome.http_status, f"{outcome.reason}; no instance with this UID is stored",
                outcome.failure_reason, detail=outcome.detail,
            ), delivery_attempt)
        ours = DatasetDigester.of_chunks(buffered.open_chunks())
        if theirs == ours:
            self._on_stored(instance, destination)
            buffered.complete()
            log.info("identical instance already stored", extra=fields(**instance.log_fields(), duration_ms=_ms_since(started)))
            return UploadResult("duplicate")
        if not self.settings.stow_overwrite:
            conflict = StowOutcome(
                StowVerdict.REJECTED,
                outcome.http_status,
                "conflict: the store holds a different instance with this SOP Instance UID "
                "(use --stow_overwrite to replace it)",
                outcome.failure_reason,
                detail=outcome.detail,
            )
            return self._dead_letter(buffered, instance, conflict, delivery_attempt)
        try:
            client.delete_instance(instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid)
        except requests.RequestException as exc:
            raise TransientUploadError(f"could not delete the instance to overwrite it: {exc}") from None
        again = self._store_with_retries(buffered, instance, destination)
        if again.verdict is StowVerdict.STORED:
            self._on_stored(instance, destination)
            buffered.complete()
            log.warning("replaced a different stored instance (stow_overwrite)", extra=fields(**instance.log_fields(), duration_ms=_ms_since(started)))
            return UploadResult("overwritten")
        if again.verdict in (StowVerdict.TRANSIENT, StowVerdict.ALREADY_EXISTS):
            raise TransientUploadError(f"overwrite did not complete: {again.reason}")
        return self._dead_letter(buffered, instance, again, delivery_attempt)

    def _dead_letter(
        self, buffered: BufferedObject, instance: BufferedInstance, outcome: StowOutcome, delivery_attempt: int
    ) -> UploadResult:
        destination = self._destination(instance)
        store = destination.label if destination else DEFAULT_LABEL
        record: dict[str, Any] = {
            "reason": outcome.reason,
            "store_said": outcome.detail,
            "http_status": outcome.http_status,
            "failure_reason": outcome.failure_reason,
            "store": store,
            "destination": instance.destination_label or DEFAULT_LABEL,
            **({"transform": destination.transform.summary} if destination is not None and destination.transform is not None else {}),
            "delivery_attempt": delivery_attempt,
            "received_at": instance.received_at,
            "dead_lettered_at": utc_now(),
            "event": instance.log_fields() | {"buffer_uri": instance.buffer_uri},
            "redrive": redrive_command(instance),
        }
        buffered.dead_letter(record)
        log.error(
            "store rejected the instance; moved to dead letters",
            extra=fields(**instance.log_fields(), reason=outcome.reason, http_status=outcome.http_status, store=store),
        )
        return UploadResult("dead_lettered", outcome.reason)


def result_or_exception(function: Callable[..., Any], *args: Any) -> Any:
    """function(*args), or the exception it raised: for callers that settle several uploads
    one by one, where one failure must not stop the others."""
    try:
        return function(*args)
    except Exception as exc:  # handed back to the caller, which retries or dead-letters
        return exc


def store_client(settings: UploadSettings) -> DicomWebClient:
    """A client of the default store for searches and retrievals (query/retrieve, commitment)."""
    return DicomWebClient(
        DicomWebAddress(settings.dicomweb_address),
        _new_session(settings.dicomweb_address),
        retry_status_codes=settings.retry_status_codes,
        timeout=(settings.connect_timeout_s, settings.read_timeout_s),
    )


def redrive_command(instance: BufferedInstance) -> str:
    """The command that puts this instance back once the cause is fixed."""
    if instance.buffer_uri.startswith("gs://"):
        from .buffers.gcs import GcsLocation, parse_object_uri

        bucket, name, _ = parse_object_uri(instance.buffer_uri)
        prefix = name.rsplit("/", 2)[0] if name.count("/") >= 2 else ""
        where = f"--gcs_buffer {GcsLocation(bucket, prefix)} --pubsub_topic TOPIC"
    else:
        from .buffers.spool import SpoolObject

        where = f"--spool_dir {SpoolObject.from_uri(instance.buffer_uri).path.parent.parent}"
    return f"dicom-adapter redrive {where} --sop_instance_uid {instance.sop_instance_uid}"


def _new_session(address: str, auth: DestinationAuth | None = None) -> requests.Session:
    """A pooled session for one store: ADC for the Healthcare API (or where asked), else the
    destination's bearer or basic credentials, else none."""
    if (auth is None and uses_google_auth(address)) or (auth is not None and auth.kind == "adc"):
        import google.auth
        from google.auth.transport.requests import AuthorizedSession

        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        return _read_environment_once(AuthorizedSession(credentials), address)
    session = requests.Session()
    if auth is not None and auth.kind == "bearer":
        session.auth = BearerAuth(auth.secret)
    elif auth is not None and auth.kind == "basic":
        session.auth = BasicAuth(auth.username, auth.secret)
    else:
        session.auth = requests.utils.get_netrc_auth(address)  # as requests would per request
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return _read_environment_once(session, address)


def _read_environment_once(session: requests.Session, address: str) -> requests.Session:
    """Take the proxy (HTTPS_PROXY, NO_PROXY...) and CA bundle settings for the store's address
    from the environment now, and stop requests from reading them again for every request
    (trust_env): that look-up walks all of os.environ and stats ~/.netrc, ~0.1-0.2 ms of CPU
    per STOW request. A session talks to one store, so its host's answer is the answer.
    (An ADC session no longer picks up a ~/.netrc entry for the store, which used to replace
    its bearer token.)"""
    session.proxies.update(requests.utils.get_environ_proxies(address))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False
    return session


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
