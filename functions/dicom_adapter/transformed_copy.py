"""The copy of a buffered instance that a destination with a transform receives.

upload.py stores a buffered object as it is; for a destination whose routing entry (or, for the
default store, Google's redact/compress flags) names a transform, it stores this instead: the
instance de-identified and/or transcoded (transforms/) into a temporary file, made after the
ack, in the upload step, never on the C-STORE path. It reads like the buffered object it came
from (size, chunks, a local path), and what happens to it happens to the original: completing it
takes the original out of the buffer, and dead-lettering it keeps the ORIGINAL bytes, with a
record saying that a transformed copy was refused and how. The transform is deterministic
(keyed UIDs), so a redelivery makes the same bytes and the upload stays idempotent.

Memory: the source is a local file (the spool's, or GCS's downloaded in chunks), the copy is
written with its large values streamed from it (transforms/streaming.py) and read back in CHUNK
pieces for the STOW; only a transcode holds pixel data, up to the transform's max_pixel_bytes.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .buffers import BufferedObject
from .credentials import resolve_secret
from .events import BufferedInstance
from .logs import fields

if TYPE_CHECKING:  # (imported where a copy is made: numpy and the codecs stay out of other processes)
    from .transforms import Transform, TransformResult

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class TransformFailed(Exception):
    """The copy cannot be made (the reason names no value of the instance)."""


@dataclass
class TransformedCopy:
    """A transformed copy in a temporary file, standing for its buffered original."""

    original: BufferedObject
    path: Path
    result: TransformResult
    transform: Transform
    received: BufferedInstance  # the original's event: dead letters and redrive name it
    redrive: str  # the command that redrives the original

    @property
    def uri(self) -> str:
        return self.original.uri

    def exists(self) -> bool:
        return self.original.exists()

    def size(self) -> int:
        return self.result.size

    def open_chunks(self) -> Iterator[bytes]:
        with open(self.path, "rb") as copy:
            while chunk := copy.read(CHUNK):
                yield chunk

    @contextmanager
    def local_path(self) -> Iterator[Path]:
        yield self.path

    def complete(self) -> bool:
        return self.original.complete()

    def dead_letter(self, record: dict[str, Any]) -> None:
        """Keep the original (its bytes as received), saying which copy was refused."""
        received = self.received.log_fields() | {"buffer_uri": self.received.buffer_uri}
        self.original.dead_letter({**record, "event": received, "redrive": self.redrive, "transformed": self.log_fields()})

    def log_fields(self) -> dict[str, Any]:
        """What the copy is: the transform and the copy's own UIDs (UIDs only: no PHI)."""
        return {
            "transform": self.transform.summary,
            "copy_sop_instance_uid": self.result.sop_instance_uid,
            "copy_transfer_syntax_uid": self.result.transfer_syntax,
            **({"transcode_skipped": self.result.skipped.reason} if self.result.skipped else {}),
        }


@contextmanager
def transformed(
    buffered: BufferedObject, instance: BufferedInstance, transform: Transform, key_secret: str, redrive: str
) -> Iterator[tuple[BufferedObject, BufferedInstance, TransformResult]]:
    """The object and event to store for a destination with `transform`: the copy and its
    UIDs (the original when the transform leaves it as received), with what the transform did;
    the temporary file removed afterwards. Raises TransformFailed."""
    from .transforms import apply_transform

    key = _key(key_secret) if transform.deidentify is not None else b""
    try:
        with buffered.local_path() as source:
            result = apply_transform(source, transform, key)
    except Exception as exc:  # pydicom and the codecs raise many types; the reason must carry no value
        raise TransformFailed(f"{transform.summary} failed: {type(exc).__name__}") from None
    if result.skipped is not None:
        log.warning("transcode skipped: the copy keeps its transfer syntax", extra=fields(**instance.log_fields(), reason=result.skipped.reason))
    if result.output is None:
        yield buffered, instance, result
        return
    copy = TransformedCopy(buffered, result.output, result, transform, instance, redrive)
    try:
        yield copy, replace(
            instance,
            sop_instance_uid=result.sop_instance_uid,
            study_instance_uid=result.study_instance_uid or instance.study_instance_uid,
            series_instance_uid=result.series_instance_uid or instance.series_instance_uid,
            transfer_syntax_uid=result.transfer_syntax,
            size=result.size,
        ), result
    finally:
        result.output.unlink(missing_ok=True)


def _key(reference: str) -> bytes:
    if not reference:
        raise TransformFailed("de-identification needs a key: set --deidentify_key_secret (env DICOM_ADAPTER_DEIDENTIFY_KEY_SECRET)")
    try:
        return resolve_secret(reference).encode()
    except LookupError as exc:
        raise TransformFailed(f"de-identification key unavailable: {exc}") from None
