"""Put one checked Part-10 file into the buffer: the only step of an import that knows the buffer.

`BufferSink` is the whole interface between the import (command and watched folder) and the
buffer: a staging folder on local disk for the checked copies, and `put`, which makes one
staged file buffered instance(s) whose events cannot be lost. `InstanceBufferSink` implements
it over the C-STORE handler's own `InstanceBuffer` (buffering.py), so an imported file takes
exactly the path of a received one: `SpoolBuffer` locally (fsync, rename into queue/, fsync the
folder, announce), `CloudBuffer` in cloud mode (create-only GCS object, then the Pub/Sub event).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, Sequence

from dicom_adapter.buffers.spool import Spool
from dicom_adapter.events import BufferedInstance
from dicom_adapter.routing import Destination, RoutingTable, read_routing_header

from edge_listener.buffer.buffering import InstanceBuffer, SpoolBuffer
from edge_listener.buffer.process_folders import process_folder, remove_folders_of_gone_processes
from .staging import StagedInstance, fsync_file

STAGING = "importing"
DEFAULT_STORE_ONLY: tuple[Destination | None, ...] = (None,)


class BufferSink(Protocol):
    staging_dir: Path

    def put(self, staged: StagedInstance) -> list[BufferedInstance]:
        """Make the staged file durably buffered (once per destination) and its events sure to
        arrive. The staged file is gone afterwards, and only then (the ledger's crash recovery
        relies on that). Raises OSError or buffering.BufferRefused: nothing buffered."""

    def sweep_stale(self) -> None:
        """Remove staged copies left by processes that are gone (after the ledger settled them)."""


class NotRoutable(Exception):
    """No routing rule matches the instance (and there is no default store), or its header
    cannot be read for the rules."""


class InstanceBufferSink:
    """A `BufferSink` over an `InstanceBuffer`, staging in ROOT/importing/<pid>/.

    The staging folder must be on the buffer's file system for the spool (the rename is
    atomic), and apart from incoming/, which `dicom-adapter local` clears when it starts.
    """

    def __init__(self, buffer: InstanceBuffer, staging_root: Path, routing: RoutingTable | None = None) -> None:
        self.buffer = buffer
        self.routing = routing
        self._root = staging_root / STAGING
        self.staging_dir = process_folder(self._root)  # another sink of this process may share it

    def put(self, staged: StagedInstance) -> list[BufferedInstance]:
        instance = BufferedInstance(
            buffer_uri="",
            sop_class_uid=staged.summary.sop_class_uid,
            sop_instance_uid=staged.summary.sop_instance_uid,
            study_instance_uid=staged.summary.study_instance_uid,
            series_instance_uid=staged.summary.series_instance_uid,
            transfer_syntax_uid=staged.transfer_syntax_uid,
            calling_aet=staged.source_aet,
            called_aet="",
            size=staged.size,
        )
        events = self.buffer.put(_StagedReception(staged.path), instance, self._route(staged))
        staged.discard()  # the spool renamed it already; a cloud buffer uploaded a copy
        return events

    def _route(self, staged: StagedInstance) -> Sequence[Destination | None]:
        """The routing rules of C-STORE, with the file meta's source AE as the calling AE."""
        if self.routing is None:
            return DEFAULT_STORE_ONLY
        header = None
        if self.routing.needs_dataset:
            try:
                header = read_routing_header(staged.path, self.routing.tags)
            except Exception as exc:  # pydicom raises many types on odd encodings
                raise NotRoutable(f"header unreadable for routing: {type(exc).__name__}") from None
        destinations = self.routing.route(staged.source_aet, "", header)
        if not destinations:
            raise NotRoutable("no routing rule matches and there is no default store")
        return destinations

    def sweep_stale(self) -> None:
        remove_folders_of_gone_processes(self._root)

    def close(self) -> None:
        try:
            self.staging_dir.rmdir()  # only if empty: another sink of this process may still stage
        except OSError:
            pass


def spool_sink(spool: Spool, announce: Callable[[BufferedInstance], None], routing: RoutingTable | None = None) -> InstanceBufferSink:
    """The local runtime's sink: the spool, staging inside it."""
    return InstanceBufferSink(SpoolBuffer(spool, announce), spool.root, routing)


class _StagedReception:
    """A staged copy in the shape `InstanceBuffer.put` takes a C-STORE reception file in."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)

    def sync(self) -> None:
        fsync_file(Path(self.name))

    def moved(self) -> None:
        pass

    def close(self) -> None:
        pass
