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
import io
import os
import tempfile
import threading
from functools import partial
from pathlib import Path
from typing import Any

from dicom_adapter.part10 import MalformedDataset, encode_file_meta, read_file_meta
from pynetdicom import dimse_messages

from .high_water import HighWaterGuard, HighWaterMark

_META_START = 144  # preamble (128) + 'DICM' (4) + the (0002,0000) element (12)


class ReceptionFile:
    """Enough of NamedTemporaryFile for pynetdicom: write, file.flush, close, name."""

    def __init__(self, folder: str, high_water: HighWaterGuard | None = None, **_ignored: Any) -> None:
        self.error: OSError | None = None
        self.dataset_offset: int | None = None  # known once the file meta is written
        self._head = bytearray()
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
            self._file = tempfile.NamedTemporaryFile(delete=False, mode="wb", suffix=".part", dir=folder)
            self.name = self._file.name
            with _open_lock:
                _open_receptions.add(self)
        except OSError as exc:
            self.error = exc

    @property
    def file(self) -> "ReceptionFile":
        return self  # pynetdicom calls `.file.flush()` on what NamedTemporaryFile returns

    def write(self, data: bytes) -> int:
        if self.error is None and self._file is not None:
            try:
                out = data if self.dataset_offset is not None else self._replace_file_meta(data)
                if out:
                    self._file.write(out)
            except OSError as exc:
                self.error = exc
        return len(data)

    def _replace_file_meta(self, data: bytes) -> bytes:
        """Collect pynetdicom's preamble and file meta; once whole, return ours instead."""
        self._head += data
        if len(self._head) < _META_START:
            return b""
        end = _META_START + int.from_bytes(self._head[140:144], "little")
        if len(self._head) < end:
            return b""
        try:
            theirs = read_file_meta(io.BytesIO(bytes(self._head[:end])))
        except MalformedDataset as exc:
            raise OSError(errno.EIO, f"unexpected file meta from pynetdicom: {exc}") from None
        ours = encode_file_meta(
            sop_class_uid=theirs.sop_class_uid,
            sop_instance_uid=theirs.sop_instance_uid,
            transfer_syntax_uid=theirs.transfer_syntax_uid,
            calling_aet=self._calling_aet,
            called_aet=self._called_aet,
        )
        self.dataset_offset = len(ours)
        rest = bytes(self._head[end:])
        self._head = bytearray()
        return ours + rest

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


def receive_into(folder: Path, high_water: HighWaterMark | None = None) -> None:
    """Make pynetdicom write incoming data sets into `folder`, as ReceptionFiles (none while
    the folder's disk is at the high-water mark)."""
    guard = HighWaterGuard(high_water, str(folder)) if high_water is not None else None
    dimse_messages.NamedTemporaryFile = partial(ReceptionFile, str(folder), guard)  # type: ignore[attr-defined]


def reception_of(request: Any) -> ReceptionFile:
    """The ReceptionFile pynetdicom wrote the request's data set into."""
    reception = getattr(request, "_dataset_file", None)
    if not isinstance(reception, ReceptionFile):
        raise TypeError("the C-STORE data set was not received into a ReceptionFile")
    return reception
