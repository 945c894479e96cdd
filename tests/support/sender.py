"""A pynetdicom C-STORE SCU that sends Part-10 files byte-exactly.

With STORE_SEND_CHUNKED_DATASET pynetdicom sends a file's encoded data set as it lies on disk
(no decode, no re-encode), proposing the file's own transfer syntax: the reference sender for
the byte-exactness tests. DCMTK's storescu drops trailing padding and proposes only
uncompressed syntaxes unless told otherwise.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config

_config.STORE_SEND_CHUNKED_DATASET = True


@dataclass(frozen=True)
class StoreResult:
    path: Path
    status: int | None  # None: no response (association lost)
    error_comment: str = ""


def send_files(
    paths: Iterable[Path],
    port: int,
    *,
    called_aet: str = "ADAPTER",
    calling_aet: str = "PYSCU",
    host: str = "127.0.0.1",
    timeout: float = 120,
) -> list[StoreResult]:
    """Send every file on one association; one result per file, in order."""
    paths = [Path(p) for p in paths]
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    proposed: dict[tuple[str, str], None] = {}
    for path in paths:
        meta = read_file_meta_info(path)
        proposed[(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))] = None
    by_class: dict[str, list[str]] = {}
    for sop_class, syntax in proposed:
        by_class.setdefault(sop_class, []).append(syntax)
    for sop_class, syntaxes in by_class.items():
        # One context per (class, syntax) so each file is sent in its own transfer syntax.
        for syntax in syntaxes:
            ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        raise ConnectionError(f"association with {called_aet}@{host}:{port} was not established")
    results = []
    try:
        with _reactor_held(assoc):
            for path in paths:
                response = assoc.send_c_store(path)
                status = int(response.Status) if "Status" in response else None
                comment = str(response.get("ErrorComment", "")) if status is not None else ""
                results.append(StoreResult(path, status, comment))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


class _NeverResumes(threading.Event):
    """Stands in for the association's reactor checkpoint while we send: its set() is a no-op."""

    def set(self) -> None:
        pass


@contextmanager
def _reactor_held(assoc: Any) -> Iterator[None]:
    """Keep the requestor's reactor thread paused for the whole exchange.

    pynetdicom pauses that thread around each send_c_store with a handshake that races: the
    reactor can pass its checkpoint just before the pause and then take a fast C-STORE response
    off the queue as if it were a request ("Received unexpected C-STORE service message"), and
    send_c_store waits for it until the DIMSE timeout. The adapter answers fast enough to hit
    that now and then; a sender that only sends needs no reactor meanwhile."""
    checkpoint = assoc._reactor_checkpoint
    checkpoint.clear()
    paused_since = None
    while paused_since is None or time.monotonic() - paused_since < 0.005:  # paused, and staying so
        if assoc._is_paused:
            paused_since = paused_since or time.monotonic()
        else:
            paused_since = None
        time.sleep(0.0002)
    assoc._reactor_checkpoint = _NeverResumes()
    try:
        yield
    finally:
        assoc._reactor_checkpoint = checkpoint
        checkpoint.set()
