"""One file in, one checked Part-10 file out: copy, check and (only if needed) re-wrap.

Every source (a file, a ZIP member, a file a DICOMDIR names) is first copied into a staging
folder next to the buffer, so what is checked is exactly what will be buffered, whatever the
source does meanwhile. The copy is then read like a received C-STORE: file meta, then the data
set walked element by element (part10.summarize_dataset), never loaded whole.

What gets buffered (DESIGN invariant 2, "bytes untouched"):
  * a Part-10 file whose file meta is valid is buffered as it is, every byte;
  * otherwise the data set bytes are kept exactly and put behind the adapter's own file meta
    (part10.encode_file_meta): for a bare data set without any meta (the encoding is then
    recognised as implicit or explicit VR little endian), a meta without a correct (0002,0000)
    group length, or a meta whose SOP Class/Instance UIDs are not the data set's.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dicom_adapter.part10 import (
    IMPLICIT_VR_LITTLE_ENDIAN,
    DatasetSummary,
    FileMeta,
    MalformedDataset,
    TruncatedDataset,
    encode_file_meta,
    is_valid_uid,
    read_file_meta,
    summarize_dataset,
)

CHUNK = 1 << 20
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # the SOP class of a DICOMDIR
ZIP_MAGIC = b"PK\x03\x04"

# Outcomes of one source; the report and the summary count these.
IMPORTED = "imported"
ALREADY_PRESENT = "already_present"
NOT_DICOM = "not_dicom"
FAILED = "failed"
SKIPPED = "skipped"


class NotAnInstance(Exception):
    """The source cannot be buffered; `outcome` is NOT_DICOM, FAILED or SKIPPED, `reason` why.

    `incomplete` marks a file that stops early: broken, or still being written (the watched
    folder waits before it rejects one of those)."""

    def __init__(self, outcome: str, reason: str, *, incomplete: bool = False) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason
        self.incomplete = incomplete


@dataclass(frozen=True)
class StagedInstance:
    """A complete, checked Part-10 file in the staging folder, not yet fsynced or buffered."""

    path: Path
    size: int
    summary: DatasetSummary
    transfer_syntax_uid: str
    dataset_sha256: str  # of the data set bytes after the file meta: the identity of the content
    source_aet: str  # the SourceApplicationEntityTitle of the file meta, if any
    rewrapped: str  # "" when buffered as it is, else why the file meta was replaced

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def stage(source: BinaryIO, staging_dir: Path) -> StagedInstance:
    """Copy `source` into `staging_dir` and check it; raise NotAnInstance if it is not one."""
    copy = staging_dir / f"{secrets.token_hex(8)}.part"
    try:
        with open(copy, "wb") as out:
            while chunk := source.read(CHUNK):
                out.write(chunk)
        return _inspect(copy)
    except BaseException:
        copy.unlink(missing_ok=True)
        raise


def _inspect(path: Path) -> StagedInstance:
    size = path.stat().st_size
    with open(path, "rb") as fp:
        head = fp.read(132)
        fp.seek(0)
        if len(head) == 132 and head[128:132] == b"DICM":
            meta = _read_meta(fp)
            offset, syntax = meta.dataset_offset, meta.transfer_syntax_uid
        elif head.startswith(ZIP_MAGIC):
            raise NotAnInstance(NOT_DICOM, "a ZIP archive inside a ZIP archive (not opened: extract it first)")
        else:
            meta, offset, syntax = None, 0, _bare_dataset_syntax(head, size)
        summary = _summarize(fp, offset, size, syntax, bare=meta is None)
        rewrap = _why_rewrap(fp, meta, summary)
        if not rewrap:
            return StagedInstance(path, size, summary, syntax, _sha256_from(fp, offset), meta.source_aet if meta else "", "")
        source_aet = meta.source_aet if meta else ""
        rewrapped = path.with_name(path.name[: -len(".part")] + ".rewrapped.part")
        try:
            with open(rewrapped, "wb") as out:
                out.write(
                    encode_file_meta(
                        sop_class_uid=summary.sop_class_uid,
                        sop_instance_uid=summary.sop_instance_uid,
                        transfer_syntax_uid=syntax,
                        calling_aet=source_aet,
                        called_aet="",
                    )
                )
                digest = _sha256_from(fp, offset, copy_to=out)
        except BaseException:
            rewrapped.unlink(missing_ok=True)
            raise
    path.unlink()
    return StagedInstance(rewrapped, rewrapped.stat().st_size, summary, syntax, digest, source_aet, rewrap)


def _read_meta(fp: BinaryIO) -> FileMeta:
    try:
        meta = read_file_meta(fp)
    except MalformedDataset as exc:
        raise NotAnInstance(FAILED, f"unreadable file meta: {exc}", incomplete=isinstance(exc, TruncatedDataset)) from None
    if meta.sop_class_uid == MEDIA_STORAGE_DIRECTORY:
        raise NotAnInstance(SKIPPED, "DICOMDIR: a media directory, not an instance (the files it lists are imported)")
    return meta


def _bare_dataset_syntax(head: bytes, size: int) -> str:
    """The encoding of a data set written without file meta, told by its first element header.

    Only data sets that start with group 0008 qualify: every instance has (0008,0016) and
    (0008,0018), and elements come in tag order; anything else is not taken for DICOM."""
    if size < 132 and not head.strip(b"\x00"):
        raise NotAnInstance(NOT_DICOM, "empty, or a preamble without 'DICM': cut short", incomplete=True)
    if size < 8 or head[:2] != b"\x08\x00":
        raise NotAnInstance(NOT_DICOM, "no DICOM file header ('DICM' at byte 128) and not a bare data set")
    vr = head[4:6]
    return EXPLICIT_VR_LITTLE_ENDIAN if vr.isalpha() and vr.isupper() else IMPLICIT_VR_LITTLE_ENDIAN


def _summarize(fp: BinaryIO, offset: int, size: int, syntax: str, *, bare: bool) -> DatasetSummary:
    try:
        summary = summarize_dataset(fp, offset, size, syntax)
    except MalformedDataset as exc:
        if bare:
            raise NotAnInstance(NOT_DICOM, "no DICOM file header ('DICM' at byte 128) and not a bare data set") from None
        raise NotAnInstance(FAILED, f"malformed data set: {exc}", incomplete=isinstance(exc, TruncatedDataset)) from None
    if offset == size:
        raise NotAnInstance(FAILED, "file meta but no data set", incomplete=True)
    missing = [
        name
        for name, value in (
            ("SOP Class UID (0008,0016)", summary.sop_class_uid),
            ("SOP Instance UID (0008,0018)", summary.sop_instance_uid),
            ("Study Instance UID (0020,000D)", summary.study_instance_uid),
            ("Series Instance UID (0020,000E)", summary.series_instance_uid),
        )
        if not value
    ]
    if missing:
        kind = NOT_DICOM if bare else FAILED
        raise NotAnInstance(kind, f"data set has no {', '.join(missing)}")
    if not is_valid_uid(summary.sop_instance_uid):
        raise NotAnInstance(FAILED, "SOP Instance UID is not a valid UID")
    return summary


def _why_rewrap(fp: BinaryIO, meta: FileMeta | None, summary: DatasetSummary) -> str:
    if meta is None:
        return "no file meta"
    fp.seek(132)
    group_length = fp.read(12)
    if group_length[:6] != b"\x02\x00\x00\x00UL" or 144 + struct.unpack("<L", group_length[8:12])[0] != meta.dataset_offset:
        return "file meta group length (0002,0000) missing or wrong"
    if meta.sop_instance_uid != summary.sop_instance_uid or meta.sop_class_uid != summary.sop_class_uid:
        return "file meta SOP Class/Instance UIDs differ from the data set's"
    return ""


def _sha256_from(fp: BinaryIO, offset: int, copy_to: BinaryIO | None = None) -> str:
    """SHA-256 of the bytes from `offset` to the end, optionally copying them on the way."""
    fp.seek(offset)
    digest = hashlib.sha256()
    while chunk := fp.read(CHUNK):
        digest.update(chunk)
        if copy_to is not None:
            copy_to.write(chunk)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
