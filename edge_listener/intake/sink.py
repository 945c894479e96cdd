"""Put one checked Part-10 file into the buffer: the only step of an import that knows the buffer.

`BufferSink` is the whole interface between the import (command and watched folder) and the
buffer: a staging folder on local disk for the checked copies, and `put`, which makes one
staged file a buffered instance whose event cannot be lost, and returns that event.
`SpoolSink` is the local runtime's. A GCS sink (cloud mode) implements the same two members:
stage in a local temporary folder, `put` = upload the object with if_generation_match=0, publish
the `BufferedInstance` event, remove the staged file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Protocol

from dicom_adapter.buffers.spool import Spool
from dicom_adapter.events import BufferedInstance

from .staging import StagedInstance, fsync_file

STAGING = "importing"


class BufferSink(Protocol):
    staging_dir: Path

    def put(self, staged: StagedInstance) -> BufferedInstance:
        """Make the staged file durably buffered and its event sure to arrive. The staged file
        is gone afterwards, and only then (the ledger's crash recovery relies on that)."""

    def sweep_stale(self) -> None:
        """Remove staged copies left by processes that are gone (after the ledger settled them)."""


class SpoolSink:
    """The spool: fsync the staged copy, rename it into queue/, fsync queue/ (Spool.commit).

    Staged copies live in SPOOL/importing/<pid>/, on the spool's file system so the rename is
    atomic, and apart from incoming/, which `dicom-adapter local` clears when it starts. A
    folder left by a process that is gone holds no buffered data and is removed here.
    """

    def __init__(self, spool: Spool, announce: Callable[[BufferedInstance], None] | None = None) -> None:
        self.spool = spool
        self.announce = announce
        self._root = spool.root / STAGING
        self.staging_dir = self._root / str(os.getpid())
        self.staging_dir.mkdir(parents=True, exist_ok=True)  # another sink of this process may share it

    def put(self, staged: StagedInstance) -> BufferedInstance:
        fsync_file(staged.path)
        entry = self.spool.commit(staged.path, self.spool.new_entry_name(staged.summary.sop_instance_uid))
        instance = BufferedInstance(
            buffer_uri=self.spool.uri(entry),
            sop_class_uid=staged.summary.sop_class_uid,
            sop_instance_uid=staged.summary.sop_instance_uid,
            study_instance_uid=staged.summary.study_instance_uid,
            series_instance_uid=staged.summary.series_instance_uid,
            transfer_syntax_uid=staged.transfer_syntax_uid,
            calling_aet=staged.source_aet,
            called_aet="",
            size=staged.size,
        )
        if self.announce is not None:
            self.announce(instance)
        return instance

    def sweep_stale(self) -> None:
        for leftover in self._root.iterdir():
            if leftover.name.isdigit() and not _process_alive(int(leftover.name)):
                shutil.rmtree(leftover, ignore_errors=True)

    def close(self) -> None:
        try:
            self.staging_dir.rmdir()  # only if empty: another sink of this process may still stage
        except OSError:
            pass


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
