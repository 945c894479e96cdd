"""The cloud buffer: acknowledged instances as objects in a GCS bucket, until uploaded.

Layout under gs://BUCKET/PREFIX:
  queue/NAME.dcm   acknowledged instances waiting for upload (NAME as in the spool: it sorts
                   by arrival and carries the SOP Instance UID)
  dead/NAME.dcm    instances that can never be uploaded as they are, with their metadata
                   `reason`, and dead/NAME.json holding the whole dead-letter record

An object is written once, create-only (`if_generation_match=0`), with the instance's UIDs, AE
titles, transfer syntax, size and CRC32C in its metadata, so `sweep` and `redrive` can rebuild
its event without reading it. Events name an object with its generation (`gs://b/o#gen`, the
gsutil notation), so a delivery never acts on a different object of the same name.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import google_crc32c
from google.api_core import exceptions as api_exceptions

from ..events import BufferedInstance, utc_now
from ..logs import fields
from ..routing import DEFAULT_LABEL, Destination
from .spool import RECORD_SUFFIX, SUFFIX, Spool, sop_instance_uid_of

log = logging.getLogger(__name__)

QUEUE = "queue"
DEAD = "dead"
CHUNK = 8 << 20  # resumable-upload and ranged-download chunk: the memory one transfer holds
CONTENT_TYPE = "application/dicom"

# Object metadata keys (GCS custom metadata is string to string).
_INSTANCE_KEYS = (
    "sop_class_uid",
    "sop_instance_uid",
    "study_instance_uid",
    "series_instance_uid",
    "transfer_syntax_uid",
    "calling_aet",
    "called_aet",
    "size",
    "received_at",
)


class BufferWriteFailed(RuntimeError):
    """The instance could not be made durable in the bucket."""


@dataclass(frozen=True)
class GcsLocation:
    """gs://BUCKET/PREFIX: where a deployment keeps its buffer."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, uri: str) -> "GcsLocation":
        if not uri.startswith("gs://") or len(uri) <= 5:
            raise ValueError(f"GCS buffer must look like gs://BUCKET[/PREFIX], not {uri!r}")
        bucket, _, prefix = uri[5:].partition("/")
        return cls(bucket, prefix.strip("/"))

    def object_name(self, folder: str, name: str) -> str:
        return "/".join(part for part in (self.prefix, folder, name) if part)

    def folder(self, folder: str) -> str:
        return self.object_name(folder, "")

    def __str__(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}" if self.prefix else f"gs://{self.bucket}"


def storage_client() -> Any:
    """A google-cloud-storage client (ADC; STORAGE_EMULATOR_HOST points it at an emulator)."""
    from google.cloud import storage

    return storage.Client()


def object_uri(bucket: str, name: str, generation: int | None) -> str:
    return f"gs://{bucket}/{name}" + (f"#{generation}" if generation else "")


def parse_object_uri(uri: str) -> tuple[str, str, int | None]:
    """gs://BUCKET/NAME[#GENERATION] → (bucket, name, generation)."""
    if not uri.startswith("gs://"):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    rest, _, generation = uri[5:].partition("#")
    bucket, _, name = rest.partition("/")
    if not bucket or not name:
        raise ValueError(f"gs:// URI names no object: {uri!r}")
    return bucket, name, int(generation) if generation else None


def crc32c_of_file(path: Path) -> str:
    """Base64 CRC32C, as GCS reports it."""
    checksum = google_crc32c.Checksum()
    with open(path, "rb") as fp:
        while chunk := fp.read(CHUNK):
            checksum.update(chunk)
    return base64.b64encode(checksum.digest()).decode("ascii")


def instance_metadata(instance: BufferedInstance, crc32c: str) -> dict[str, str]:
    metadata = {key: str(getattr(instance, key)) for key in _INSTANCE_KEYS}
    metadata["crc32c"] = crc32c
    if instance.destination:
        metadata["destination"] = json.dumps(instance.destination, separators=(",", ":"))
    return metadata


def instance_from_metadata(uri: str, metadata: dict[str, str] | None) -> BufferedInstance:
    """Rebuild an object's event from its metadata (KeyError/ValueError if it has none)."""
    metadata = metadata or {}
    values: dict[str, Any] = {key: metadata[key] for key in _INSTANCE_KEYS}
    values["size"] = int(values["size"])
    if metadata.get("destination"):
        values["destination"] = json.loads(metadata["destination"])
    return BufferedInstance(buffer_uri=uri, **values)


class GcsBuffer:
    """The bucket side of the buffer: the edge writes into it, sweep and redrive act on it."""

    def __init__(self, location: GcsLocation, client: Any = None, *, chunk_size: int = CHUNK) -> None:
        if chunk_size <= 0 or chunk_size % (256 << 10):
            raise ValueError("the upload chunk size must be a positive multiple of 256 KiB")
        self.location = location
        self.chunk_size = chunk_size
        self.client = client or storage_client()
        self.bucket = self.client.bucket(location.bucket)

    # --- the edge's side -------------------------------------------------------------------

    def put_file(
        self, path: Path, name: str, instance: BufferedInstance, destinations: Sequence[Destination | None] = (None,)
    ) -> list[BufferedInstance]:
        """Upload a complete Part-10 file create-only, one object per destination (server-side
        copies after the first); return their events. Nothing is left behind on failure."""
        crc32c = crc32c_of_file(path)
        events: list[BufferedInstance] = []
        try:
            for destination in destinations:
                event = dataclasses.replace(instance, destination=destination.to_json() if destination else None)
                object_name = self.location.object_name(QUEUE, Spool.for_destination(name, destination))
                if not events:
                    generation = self._upload(path, object_name, event, crc32c)
                else:
                    generation = self._copy(events[0], object_name, event, crc32c)
                events.append(dataclasses.replace(event, buffer_uri=object_uri(self.location.bucket, object_name, generation)))
        except BufferWriteFailed:
            for created in events:
                self.discard(created)
            raise
        return events

    def _upload(self, path: Path, object_name: str, instance: BufferedInstance, crc32c: str) -> int:
        """Files up to one chunk go in one multipart request; larger ones by resumable upload in
        chunks, so memory stays bounded (one chunk) whatever the instance's size."""
        blob = self.bucket.blob(object_name, chunk_size=self.chunk_size if instance.size > self.chunk_size else None)
        blob.metadata = instance_metadata(instance, crc32c)
        try:
            blob.upload_from_filename(
                str(path),
                content_type=CONTENT_TYPE,
                if_generation_match=0,
                checksum="crc32c",
                crc32c_checksum_value=crc32c,
            )
        except api_exceptions.PreconditionFailed:
            # A retried request whose first attempt had succeeded: ours if the content matches.
            existing = self.bucket.get_blob(object_name)
            if existing is None or existing.crc32c != crc32c:
                raise BufferWriteFailed("buffer object name already taken") from None
            blob = existing
        except (api_exceptions.GoogleAPIError, OSError, ValueError) as exc:
            raise BufferWriteFailed(f"buffer upload failed: {_brief(exc)}") from None
        return blob.generation

    def _copy(self, source: BufferedInstance, object_name: str, instance: BufferedInstance, crc32c: str) -> int:
        _, source_name, generation = parse_object_uri(source.buffer_uri)
        try:
            copy = self.bucket.copy_blob(
                self.bucket.blob(source_name, generation=generation), self.bucket, object_name, if_generation_match=0
            )
            copy.metadata = instance_metadata(instance, crc32c)
            copy.patch()
        except (api_exceptions.GoogleAPIError, OSError, ValueError) as exc:
            raise BufferWriteFailed(f"buffer copy failed: {_brief(exc)}") from None
        return copy.generation

    def discard(self, instance: BufferedInstance) -> bool:
        """Delete an object whose event could not be published (the sender hears a failure)."""
        return GcsObject.from_uri(instance.buffer_uri, self.client).complete()

    def reachable(self) -> bool:
        """For readiness: can we list the buffer right now?"""
        try:
            list(self.client.list_blobs(self.location.bucket, prefix=self.location.folder(QUEUE), max_results=1, timeout=5))
            return True
        except Exception as exc:  # any failure means "not ready"
            log.warning("GCS buffer not reachable", extra=fields(buffer=str(self.location), reason=type(exc).__name__))
            return False

    # --- sweep, status and redrive ---------------------------------------------------------

    def queued(self, older_than_s: float = 0.0) -> Iterator[Any]:
        """Queue objects created more than `older_than_s` ago."""
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=older_than_s)
        for blob in self.client.list_blobs(self.location.bucket, prefix=self.location.folder(QUEUE)):
            if blob.name.endswith(SUFFIX) and blob.time_created is not None and blob.time_created <= cutoff:
                yield blob

    def event_of(self, blob: Any) -> BufferedInstance:
        return instance_from_metadata(object_uri(blob.bucket.name, blob.name, blob.generation), blob.metadata)

    def dead_letters(self) -> list[tuple[Any, dict[str, Any]]]:
        letters = []
        for blob in self.client.list_blobs(self.location.bucket, prefix=self.location.folder(DEAD)):
            if blob.name.endswith(SUFFIX):
                letters.append((blob, self._record_of(blob)))
        return letters

    def _record_of(self, dead: Any) -> dict[str, Any]:
        record_blob = self.bucket.get_blob(dead.name[: -len(SUFFIX)] + RECORD_SUFFIX)
        if record_blob is None:
            return {"reason": (dead.metadata or {}).get("reason", "")}
        try:
            return json.loads(record_blob.download_as_bytes())
        except ValueError:
            return {"reason": (dead.metadata or {}).get("reason", "")}

    def redrive(self, sop_instance_uids: set[str] | None = None, destination: str | None = None) -> list[BufferedInstance]:
        """Move dead letters (all, or those with these UIDs and/or for this destination label)
        back into the queue; return their events, which the caller publishes."""
        events = []
        for dead, record in self.dead_letters():
            name = dead.name.rsplit("/", 1)[-1]
            if sop_instance_uids and sop_instance_uid_of(name) not in sop_instance_uids:
                continue
            if destination and record.get("destination", DEFAULT_LABEL) != destination:
                continue
            target_name = self.location.object_name(QUEUE, name)
            metadata = {k: v for k, v in (dead.metadata or {}).items() if k in _INSTANCE_KEYS or k in ("crc32c", "destination")}
            queued = self.bucket.copy_blob(dead, self.bucket, target_name)
            queued.metadata = metadata
            queued.patch()
            # The record goes first, as in the spool: a dead object without it would be a mystery.
            self.bucket.delete_blob(dead.name[: -len(SUFFIX)] + RECORD_SUFFIX)
            dead.delete()
            events.append(self.event_of(queued))
        return events


class GcsObject:
    """A buffered object as `stow_upload` sees it (the bucket's `BufferedObject`)."""

    def __init__(self, bucket: Any, name: str, generation: int | None) -> None:
        self.bucket = bucket
        self.name = name
        self.generation = generation
        self.uri = object_uri(bucket.name, name, generation)
        self._blob = bucket.blob(name, generation=generation)

    @classmethod
    def from_uri(cls, uri: str, client: Any = None) -> "GcsObject":
        bucket, name, generation = parse_object_uri(uri)
        return cls((client or _shared_client()).bucket(bucket), name, generation)

    def exists(self) -> bool:
        return self._blob.exists()

    def size(self) -> int:
        self._blob.reload()
        return int(self._blob.size)

    def open_chunks(self) -> Iterator[bytes]:
        # Ranged reads of one chunk each, pinned to the generation the event names.
        with self._blob.open("rb", chunk_size=CHUNK) as reader:
            while chunk := reader.read(CHUNK):
                yield chunk

    @contextmanager
    def local_path(self) -> Iterator[Path]:
        """Download to a temporary file, chunk by chunk (in Cloud Functions /tmp is memory:
        size the function for the largest instance sent to DIMSE destinations)."""
        with tempfile.NamedTemporaryFile(suffix=SUFFIX) as local:
            for chunk in self.open_chunks():
                local.write(chunk)
            local.flush()
            yield Path(local.name)

    def complete(self) -> bool:
        """Delete the object; False if an earlier delivery already did."""
        try:
            self.bucket.delete_blob(self.name, if_generation_match=self.generation)
            return True
        except (api_exceptions.NotFound, api_exceptions.PreconditionFailed):
            return False

    def dead_letter(self, record: dict[str, Any]) -> None:
        """Copy the object under dead/ with the reason in its metadata and the record beside it,
        then delete the original."""
        dead_folder = self.name.rsplit("/", 2)[0] + "/" + DEAD if self.name.count("/") >= 2 else DEAD
        leaf = self.name.rsplit("/", 1)[-1]
        dead_name = f"{dead_folder}/{leaf}"
        record_blob = self.bucket.blob(dead_name[: -len(SUFFIX)] + RECORD_SUFFIX)
        record_blob.upload_from_string(json.dumps(record, indent=2), content_type="application/json")
        dead = self.bucket.copy_blob(self._blob, self.bucket, dead_name)
        self._blob.reload()
        dead.metadata = {
            **(self._blob.metadata or {}),
            "reason": str(record.get("reason", ""))[:1024],
            "dead_lettered_at": str(record.get("dead_lettered_at") or utc_now()),
        }
        dead.patch()
        self.complete()


_client: Any = None


def _shared_client() -> Any:
    """One storage client per process (it holds a connection pool)."""
    global _client
    if _client is None:
        _client = storage_client()
    return _client


def _brief(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:120]
