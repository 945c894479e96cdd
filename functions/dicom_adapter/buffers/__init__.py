"""Where acknowledged instances wait for upload: a spool directory locally, GCS in the cloud.

Both backends give the upload step the same `BufferedObject`, found from the `buffer_uri` the
event carries (file:///... or gs://...), so `stow_upload` does not care which one it reads.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Iterator, Protocol


class BufferedObject(Protocol):
    """One buffered Part-10 file."""

    uri: str

    def exists(self) -> bool:
        """False once the instance was uploaded (or dead-lettered) by an earlier delivery."""

    def size(self) -> int: ...

    def open_chunks(self) -> Iterator[bytes]:
        """The whole Part-10 file, in chunks, from its start."""

    def local_path(self) -> AbstractContextManager[Path]:
        """The object as a local file for as long as the context lasts (for a C-STORE, which
        pynetdicom streams from a file)."""

    def complete(self) -> bool:
        """Remove the object: the store confirmed the instance. False if it was already gone."""

    def dead_letter(self, record: dict[str, Any]) -> None:
        """Move the object aside with the record of why it can never be uploaded as it is."""


def open_buffered_object(uri: str) -> BufferedObject:
    """The buffered object that `uri` names."""
    if uri.startswith("file://"):
        from .spool import SpoolObject

        return SpoolObject.from_uri(uri)
    if uri.startswith("gs://"):
        from .gcs import GcsObject

        return GcsObject.from_uri(uri)
    raise ValueError(f"unsupported buffer URI scheme: {uri.split(':', 1)[0]!r}")
