"""The file a received C-STORE data set is written into, which becomes the spool entry.

A ReceptionFile lives in the spool's incoming/ folder (the same disk as the queue, cleared at
start) and starts with the adapter's file meta (calling and called AE titles included), so
after its checks the C-STORE handler only fsyncs it and renames it into the queue. The fast
path (front/fastpath/direct_store.py) streams each PDV of the data set into it as it arrives;
on plain pynetdicom, which writes the data set into a file of its own first, the handler copies
that file's data set into one (copy_dataset). A write error (a full disk) is kept instead of
raised where it would abort the association with no answer; the handler answers it with 0xA700
"spool disk full".
"""

from __future__ import annotations

import errno
import itertools
import os
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Callable

from dicom_adapter.part10 import encode_file_meta

from .high_water import HighWaterGuard, HighWaterMark
from .process_folders import process_alive

_sequence = itertools.count()


class ReceptionFile:
    """A data set being received: the adapter's file meta, then the data set's bytes."""

    def __init__(self, folder: str, name_prefix: str, high_water: HighWaterGuard | None, assoc: Any) -> None:
        self.error: OSError | None = None
        self.dataset_offset: int | None = None  # known once the file meta is written
        self._file: Any = None
        self.name = ""  # "" once the buffer took it (nothing to delete)
        self._assoc = assoc  # its association: while that lives, the file is not an orphan
        try:
            if high_water is not None:
                high_water.check()  # at the mark: write nothing, the handler answers "buffer full"
            path = os.path.join(folder, f"{name_prefix}-{next(_sequence)}.part")
            self._file = open(path, "xb")
            self.name = path
            with _open_lock:
                _open_receptions.add(self)
        except OSError as exc:
            self.error = exc

    def write(self, data: bytes | memoryview) -> int:
        """Data set bytes, after write_file_meta."""
        if self.dataset_offset is None and self.error is None:
            self.error = OSError(errno.EIO, "data set written before its file meta")
        self._write(data)
        return len(data)

    def write_file_meta(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> None:
        """Write the preamble and the adapter's file meta (calling and called AE titles included)."""
        meta = encode_file_meta(
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            calling_aet=self._assoc.requestor.ae_title if self._assoc is not None else "",
            called_aet=self._assoc.acceptor.ae_title if self._assoc is not None else "",
        )
        self.dataset_offset = len(meta)
        self._write(meta)

    def copy_dataset(self, source: BinaryIO) -> None:
        """Copy a data set from `source` (positioned at its start) to its end, in blocks."""
        while block := source.read(COPY_BLOCK):
            self.write(block)
            if self.error is not None:
                return

    def _write(self, data: bytes | memoryview) -> None:
        if self.error is None and self._file is not None:
            try:
                self._file.write(data)
            except (OSError, ValueError) as exc:  # ValueError: closed by a connection close meanwhile
                self.error = exc if isinstance(exc, OSError) else OSError(errno.EBADF, "reception closed")

    def flush(self) -> None:
        if self.error is None and self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                self.error = exc

    def sync(self) -> None:
        """Flush and fsync: the bytes are on disk when this returns."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def moved(self) -> None:
        """The file was renamed into the queue: nothing is left to delete."""
        self.name = ""

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self._file.close()
        except OSError as exc:
            self.error = self.error or exc

    def remove(self) -> None:
        """Close the file and delete it unless the buffer took it."""
        self.close()
        if self.name:
            try:
                os.unlink(self.name)
            except OSError:
                pass


COPY_BLOCK = 1 << 20
# pynetdicom's own reception files: NamedTemporaryFile(suffix=".dcm") in tempfile's folder,
# named with tempfile's prefix; receive_into makes those the spool's incoming/ and this prefix.
_PYNETDICOM_PREFIX = "pynetdicom-"
_PYNETDICOM_SUFFIX = ".dcm"

# Receptions whose file may still be on disk, so that one whose association died without a
# clean close (pynetdicom's network thread can end on an exception and skip its close event)
# is still removed: see discard_orphans.
_open_receptions: set[ReceptionFile] = set()
_open_lock = threading.Lock()


def discard_orphans() -> int:
    """Delete the files of receptions whose association has ended without handing them to the
    buffer (nobody was acknowledged for them); return how many were removed."""
    removed = 0
    with _open_lock:
        candidates = list(_open_receptions)
    for reception in candidates:
        assoc = reception._assoc
        finished = not reception.name or not os.path.exists(reception.name)
        if not finished and assoc is not None and assoc.is_alive():
            continue
        with _open_lock:
            _open_receptions.discard(reception)
        if not finished:
            reception.close()
            try:
                os.unlink(reception.name)
                removed += 1
            except OSError:
                pass
    return removed


def discard_stale_files(folder: Path, idle_s: float, *, process_idle: bool) -> int:
    """Delete pynetdicom's own reception files in `folder` (plain pynetdicom, or a C-STORE the
    fast path left to it) that no association is writing, and return how many: those of a
    listener process that is gone, this process's own when it serves no association
    (`process_idle`), and any nobody has written to for `idle_s` (its association would have
    timed out). pynetdicom keeps the file of a data set cut off by an abort."""
    removed = 0
    deadline = time.time() - idle_s
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(_PYNETDICOM_PREFIX) or not entry.name.endswith(_PYNETDICOM_SUFFIX):
            continue
        pid = entry.name[len(_PYNETDICOM_PREFIX):].split("-", 1)[0]
        try:
            owner_gone = not pid.isdigit() or not process_alive(int(pid))
            if owner_gone or (process_idle and int(pid) == os.getpid()) or entry.stat().st_mtime < deadline:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            pass
    return removed


_new_reception: Callable[[Any], ReceptionFile] | None = None


def receive_into(folder: Path, high_water: HighWaterMark | None = None) -> None:
    """Receive data sets into `folder` (none while its disk is at the high-water mark).

    pynetdicom writes the data sets it receives itself (plain pynetdicom, with
    STORE_RECV_CHUNKED_DATASET) into tempfile's folder, named with tempfile's prefix: made
    `folder` and "pynetdicom-<pid>-" here, so that a large instance goes to the spool's disk,
    not to /tmp, is cleared with it at start, and can be told from the others (the listener
    processes share the folder) when its association ends (discard_stale_files)."""
    guard = HighWaterGuard(high_water, str(folder)) if high_water is not None else None
    # Unique per listener process and run (processes share the folder; PIDs are reused).
    name_prefix = f"{os.getpid()}-{os.urandom(4).hex()}"
    global _new_reception
    _new_reception = partial(ReceptionFile, str(folder), name_prefix, guard)
    tempfile.tempdir = str(folder)
    tempfile.template = f"{_PYNETDICOM_PREFIX}{os.getpid()}-"


def new_reception(assoc: Any) -> ReceptionFile:
    """A ReceptionFile for a data set arriving on `assoc`, in the folder `receive_into` named."""
    if _new_reception is None:
        raise RuntimeError("receive_into() was not called")
    return _new_reception(assoc)
