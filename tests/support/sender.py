"""A pynetdicom C-STORE SCU that sends Part-10 files byte-exactly.

With STORE_SEND_CHUNKED_DATASET pynetdicom sends a file's encoded data set as it lies on disk
(no decode, no re-encode), proposing the file's own transfer syntax: the reference sender for
the byte-exactness tests. DCMTK's storescu drops trailing padding and proposes only
uncompressed syntaxes unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

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
        for path in paths:
            response = assoc.send_c_store(path)
            status = int(response.Status) if "Status" in response else None
            comment = str(response.get("ErrorComment", "")) if status is not None else ""
            results.append(StoreResult(path, status, comment))
    finally:
        if assoc.is_established:
            assoc.release()
    return results
