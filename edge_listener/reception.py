"""The file pynetdicom streams a received C-STORE data set into.

pynetdicom (with STORE_RECV_CHUNKED_DATASET) creates it with tempfile.NamedTemporaryFile in the
system temp folder and writes every PDV to it from its network thread, where a full disk would
raise inside pynetdicom and abort the association with no answer. Here the file is created in
the spool's incoming/ folder (same disk as the queue, cleared at start), and a write error is
kept instead of raised, so the C-STORE handler can answer it with 0xA700 and an Error Comment
("spool disk full") while the association carries on.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from pynetdicom import dimse_messages


class ReceptionFile:
    """Enough of NamedTemporaryFile for pynetdicom: write, file.flush, close, name."""

    def __init__(self, folder: str, **_ignored: Any) -> None:
        self.error: OSError | None = None
        self._file: Any = None
        self.name = ""  # pynetdicom unlinks this name after the handler; "" unlinks nothing
        try:
            self._file = tempfile.NamedTemporaryFile(delete=False, mode="wb", suffix=".part", dir=folder)
            self.name = self._file.name
        except OSError as exc:
            self.error = exc

    @property
    def file(self) -> "ReceptionFile":
        return self  # pynetdicom calls `.file.flush()` on what NamedTemporaryFile returns

    def write(self, data: bytes) -> int:
        if self.error is None and self._file is not None:
            try:
                self._file.write(data)
            except OSError as exc:
                self.error = exc
        return len(data)

    def flush(self) -> None:
        if self.error is None and self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self._file.close()
        except OSError as exc:
            self.error = self.error or exc


def receive_into(folder: Path) -> None:
    """Make pynetdicom write incoming data sets into `folder`, as ReceptionFiles."""
    dimse_messages.NamedTemporaryFile = partial(ReceptionFile, str(folder))  # type: ignore[attr-defined]


def reception_error(request: Any) -> OSError | None:
    """The write error of the request's reception file, if writing it failed."""
    reception = getattr(request, "_dataset_file", None)
    return getattr(reception, "error", None)
