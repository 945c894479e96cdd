"""The file pynetdicom streams a received C-STORE data set into, which becomes the spool entry.

pynetdicom (with STORE_RECV_CHUNKED_DATASET) creates this file with tempfile.NamedTemporaryFile
and writes to it from the association's network (DUL) thread: a 128-byte preamble, 'DICM', its
own file meta, then every PDV of the data set. ReceptionFile stands in for that file:
- it lives in the spool's incoming/ folder (the same disk as the queue, cleared at start);
- it writes the adapter's file meta instead of pynetdicom's (calling and called AE titles
  included), so after its checks the C-STORE handler only fsyncs it and renames it into the
  queue: no second file and no copy on the path to the ack;
- a write error (a full disk) is kept instead of raised inside pynetdicom, where it would abort
  the association with no answer; the handler answers it with 0xA700 "spool disk full".
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

from dicom_adapter.part10 import encode_file_meta
from pydicom.filewriter import write_file_meta_info
from pynetdicom import dimse_messages
from pynetdicom.dsutils import create_file_meta

from .high_water import HighWaterGuard, HighWaterMark

_PREAMBLE = 132  # 128 bytes and 'DICM'
_sequence = itertools.count()


class ReceptionFile:
    """Enough of NamedTemporaryFile for pynetdicom: write, file.flush, close, name."""

    def __init__(self, folder: str, name_prefix: str, high_water: HighWaterGuard | None = None, **_ignored: Any) -> None:
        self.error: OSError | None = None
        self.dataset_offset: int | None = None  # known once the file meta is written
        self._preamble_bytes = 0
        self._file: Any = None
        self.name = ""  # pynetdicom unlinks this name after the handler; "" unlinks nothing
        # pynetdicom creates the file from the association's DUL thread, which knows its association.
        assoc = getattr(threading.current_thread(), "assoc", None)
        self._assoc = assoc
        self._calling_aet = assoc.requestor.ae_title if assoc is not None else ""
        self._called_aet = assoc.acceptor.ae_title if assoc is not None else ""
        try:
            if high_water is not None:
                high_water.check()  # at the mark: write nothing, the handler answers "buffer full"
            # A plain file with a unique name: NamedTemporaryFile's wrapper costs a call per write.
            path = os.path.join(folder, f"{name_prefix}-{next(_sequence)}.part")
            self._file = open(path, "xb")
            self.name = path
            with _open_lock:
                _open_receptions.add(self)
        except OSError as exc:
            self.error = exc

    @property
    def file(self) -> "ReceptionFile":
        return self  # pynetdicom calls `.file.flush()` on what NamedTemporaryFile returns

    def write(self, data: bytes) -> int:
        if self.dataset_offset is None:
            # pynetdicom's preamble and 'DICM', before it writes the file meta through
            # write_file_meta: ours are written there instead.
            self._preamble_bytes += len(data)
            if self._preamble_bytes > _PREAMBLE and self.error is None:
                self.error = OSError(errno.EIO, "pynetdicom wrote a data set before its file meta")
            return len(data)
        self._write(data)
        return len(data)

    def write_file_meta(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> None:
        """Write the preamble and the adapter's file meta (calling and called AE titles
        included) in place of pynetdicom's."""
        meta = encode_file_meta(
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            calling_aet=self._calling_aet,
            called_aet=self._called_aet,
        )
        self.dataset_offset = len(meta)
        self._write(meta)

    def _write(self, data: bytes) -> None:
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
        """The file was renamed into the queue: nothing is left for pynetdicom to delete."""
        self.name = ""

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self._file.close()
        except OSError as exc:
            self.error = self.error or exc


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


_new_reception: Callable[[], ReceptionFile] | None = None


def receive_into(folder: Path, high_water: HighWaterMark | None = None) -> None:
    """Make pynetdicom write incoming data sets into `folder`, as ReceptionFiles (none while
    the folder's disk is at the high-water mark)."""
    guard = HighWaterGuard(high_water, str(folder)) if high_water is not None else None
    # Unique per listener process and run (processes share the folder; PIDs are reused).
    name_prefix = f"{os.getpid()}-{os.urandom(4).hex()}"
    global _new_reception
    _new_reception = partial(ReceptionFile, str(folder), name_prefix, guard)
    dimse_messages.NamedTemporaryFile = _new_reception  # type: ignore[attr-defined]
    # pynetdicom builds a pydicom file meta and encodes it for every C-STORE; the adapter
    # writes its own instead (a fixed layout, a twentieth of the CPU), so those two calls in
    # pynetdicom's receive path only pass the UIDs on.
    dimse_messages.create_file_meta = _FileMetaRequest  # type: ignore[attr-defined]
    dimse_messages.write_file_meta_info = _write_file_meta  # type: ignore[attr-defined]


@dataclass(frozen=True)
class _FileMetaRequest:
    """What pynetdicom's create_file_meta(...) is given, kept for _write_file_meta."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    implementation_uid: Any = None
    implementation_version: Any = None


def _write_file_meta(fp: Any, file_meta: Any, *args: Any, **kwargs: Any) -> None:
    if isinstance(fp, ReceptionFile) and isinstance(file_meta, _FileMetaRequest):
        fp.write_file_meta(str(file_meta.sop_class_uid), str(file_meta.sop_instance_uid), str(file_meta.transfer_syntax))
        return
    if isinstance(file_meta, _FileMetaRequest):  # not ours: what pynetdicom would have written
        file_meta = create_file_meta(
            sop_class_uid=file_meta.sop_class_uid,
            sop_instance_uid=file_meta.sop_instance_uid,
            transfer_syntax=file_meta.transfer_syntax,
        )
    write_file_meta_info(fp, file_meta, *args, **kwargs)


def reception_of(request: Any) -> ReceptionFile | None:
    """The ReceptionFile pynetdicom wrote the request's data set into (None: it wrote none)."""
    reception = getattr(request, "_dataset_file", None)
    return reception if isinstance(reception, ReceptionFile) else None


def new_reception() -> ReceptionFile:
    """A ReceptionFile in the folder `receive_into` named (for direct_store.py, which receives
    C-STOREs without pynetdicom's DIMSE layer)."""
    if _new_reception is None:
        raise RuntimeError("receive_into() was not called")
    return _new_reception()
