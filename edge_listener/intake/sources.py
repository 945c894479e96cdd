"""What an import reads: files, folders (recursively), ZIP members and the files a DICOMDIR lists.

Each is a `Source`: a label for the report, a size for the progress bar, a fingerprint that
says whether it changed since an earlier run, and a way to open it as a stream. Nothing is
read into memory whole: ZIP members are decompressed as they are read, and the ZIP stays open
only as long as some of its members still wait to be read.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, ContextManager, Iterable, Iterator

from .staging import MEDIA_STORAGE_DIRECTORY, ZIP_MAGIC


@dataclass(frozen=True)
class Source:
    label: str  # the path, or ARCHIVE.zip!MEMBER; goes into the report, never into logs
    size: int
    fingerprint: str | None  # None: cannot tell whether it changed, always read
    open: Callable[[], ContextManager[BinaryIO]]
    problem: str = ""  # set when the source cannot be read at all (e.g. a DICOMDIR lists a missing file)
    incomplete: bool = False  # the problem may be a file still being written

    @property
    def ref(self) -> str:
        return file_ref(self.label)


def file_ref(label: str) -> str:
    """A short name for log lines: a file name may hold patient names, this hash does not."""
    return hashlib.sha256(label.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def iter_sources(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Source]:
    """Every source under `paths`, in a stable order (folders sorted by name)."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from _walk(path)
        else:
            yield from sources_of_file(path, top_level=True)


def _walk(folder: Path) -> Iterator[Source]:
    for root, dirs, files in os.walk(folder, onerror=None):
        dirs.sort()
        for name in sorted(files):
            yield from sources_of_file(Path(root, name))


def sources_of_file(path: Path, *, top_level: bool = False) -> Iterator[Source]:
    """The file itself, or the members of a ZIP, or (top level only) the files a DICOMDIR lists."""
    try:
        stat = path.stat()
        with open(path, "rb") as fp:
            head = fp.read(132)
    except OSError as exc:
        yield Source(str(path), 0, None, _unreadable(exc), problem=f"cannot read: {exc.strerror or type(exc).__name__}")
        return
    if head.startswith(ZIP_MAGIC) and head[128:132] != b"DICM":
        if zipfile.is_zipfile(path):
            yield from _zip_members(path, stat)
        else:
            problem = "ZIP archive without its central directory (cut short, or still being written)"
            yield Source(str(path), stat.st_size, None, _unreadable(None), problem=problem, incomplete=True)
    elif top_level and _is_dicomdir(path, head):
        # Named on the command line: the media's files are what it lists. (Met while walking
        # a folder, the walk finds those files itself and the DICOMDIR is reported as skipped.)
        yield from _dicomdir_files(path)
    else:
        yield _file_source(path, stat)


def _file_source(path: Path, stat: os.stat_result) -> Source:
    fingerprint = _fingerprint("file", str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    return Source(str(path), stat.st_size, fingerprint, lambda: open(path, "rb"))


def _zip_members(path: Path, stat: os.stat_result) -> Iterator[Source]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        yield Source(str(path), stat.st_size, None, _unreadable(exc), problem=f"unreadable ZIP archive: {type(exc).__name__}")
        return
    archive_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    for info in archive.infolist():
        if info.is_dir():
            continue
        label = f"{path}!{info.filename}"
        if info.flag_bits & 0x1:
            yield Source(label, info.file_size, None, _unreadable(None), problem="encrypted ZIP member")
            continue
        fingerprint = _fingerprint("zip", *archive_key, info.filename, info.CRC, info.file_size)
        # The member keeps the ZipFile alive (and open) until every member source is dropped.
        yield Source(label, info.file_size, fingerprint, _member_opener(archive, info))


def _member_opener(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], ContextManager[BinaryIO]]:
    return lambda: archive.open(info)  # type: ignore[return-value]


def _is_dicomdir(path: Path, head: bytes) -> bool:
    if head[128:132] != b"DICM":
        return False
    from dicom_adapter.part10 import MalformedDataset, read_file_meta

    try:
        with open(path, "rb") as fp:
            return read_file_meta(fp).sop_class_uid == MEDIA_STORAGE_DIRECTORY
    except (MalformedDataset, OSError):
        return False


def _dicomdir_files(dicomdir: Path) -> Iterator[Source]:
    """The files a DICOMDIR's directory records reference (ReferencedFileID), in record order."""
    import pydicom

    try:
        directory = pydicom.dcmread(dicomdir, stop_before_pixels=True)
        records = directory.DirectoryRecordSequence
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken files
        yield Source(str(dicomdir), 0, None, _unreadable(None), problem=f"unreadable DICOMDIR: {type(exc).__name__}")
        return
    media_root = dicomdir.parent
    seen: set[Path] = set()
    for record in records:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        path = _find_on_media(media_root, parts)
        if path is None:
            label = str(media_root.joinpath(*parts))
            yield Source(label, 0, None, _unreadable(None), problem="listed in the DICOMDIR but missing on the media")
            continue
        if path in seen:
            continue
        seen.add(path)
        try:
            yield _file_source(path, path.stat())
        except OSError as exc:
            yield Source(str(path), 0, None, _unreadable(exc), problem=f"cannot read: {exc.strerror or type(exc).__name__}")


def _find_on_media(root: Path, parts: list[str]) -> Path | None:
    """ReferencedFileID components are upper case; mounted media may show them in lower case."""
    path = root
    for part in parts:
        for candidate in (part, part.lower()):
            if (path / candidate).exists():
                path = path / candidate
                break
        else:
            return None
    return path if path.is_file() else None


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256("\x00".join(map(str, parts)).encode("utf-8", "surrogateescape")).hexdigest()


def _unreadable(exc: OSError | None) -> Callable[[], ContextManager[BinaryIO]]:
    @contextmanager
    def fail() -> Iterator[BinaryIO]:
        raise exc or OSError("unreadable source")
        yield  # pragma: no cover

    return fail


def count_sources(paths: Iterable[str | os.PathLike[str]]) -> tuple[int, int]:
    """How many sources and bytes `iter_sources` will yield (for the progress bar's total)."""
    files = size = 0
    for source in iter_sources(paths):
        files += 1
        size += source.size
    return files, size
