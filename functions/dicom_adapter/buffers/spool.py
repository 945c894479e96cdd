"""The spool directory: the local runtime's durable buffer and queue.

Layout under the spool root:
  incoming/      files being received or written (never uploaded; cleared at start)
  queue/         acknowledged instances waiting for upload, one Part-10 file per destination
  dead/          instances a destination rejected for good: NAME.dcm with NAME.json saying why
  destinations/  ID.json: the destination each ID in an entry name stands for
  associations/  PID.json: what each listener process has admitted (edge_listener/shared_admission.py)

An entry reaches queue/ only by rename after its bytes and its directory were fsynced, so a
file in queue/ is always complete, and one that is acknowledged is always in queue/ (or
uploaded). Entry names sort by arrival time and carry the SOP Instance UID and, where routing
sent the instance to several places, a destination ID: `<ns>-<uid>-<random>~<id>.dcm`. The
entries of one instance for several destinations are hard links of one file, so each is
uploaded, retried, dead-lettered and removed on its own, and the bytes go when the last does.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence
from urllib.parse import quote, unquote, urlparse

from ..events import BufferedInstance
from ..part10 import read_file_meta, summarize_dataset
from ..routing import DEFAULT_LABEL, Destination

INCOMING = "incoming"
QUEUE = "queue"
DEAD = "dead"
DESTINATIONS = "destinations"
SUFFIX = ".dcm"
RECORD_SUFFIX = ".json"
DESTINATION_MARK = "~"


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectorySync:
    """fsync of one directory, shared by the threads that rename files into it (group commit).

    A caller's rename is durable once an fsync of the directory that began after the rename
    has succeeded. Callers that arrive while an fsync runs wait for it to end and then share
    the next one, so N associations committing at once cost about two fsyncs, not N; alone,
    a caller pays one fsync as before. A failed fsync fails only its own caller; the others
    try again with their own.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._requested = 0  # tickets handed out, one per sync() call
        self._synced = 0  # every ticket up to this one is durable
        self._running = False

    def sync(self) -> None:
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while self._synced < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                covers = self._requested  # every rename before this point
                self._cond.release()
                try:
                    fsync_directory(self.path)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                self._synced = max(self._synced, covers)


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fp:
        fp.write(data)
        fp.flush()
        os.fsync(fp.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)


def sop_instance_uid_of(name: str) -> str:
    """The SOP Instance UID part of an entry name '<ns>-<uid>-<random>[~<id>].dcm'."""
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    parts = stem.split(DESTINATION_MARK)[0].split("-")
    return "-".join(parts[1:-1]) if len(parts) >= 3 else ""


def destination_id_of(name: str) -> str:
    """The destination ID of an entry name ('' for the default store)."""
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    return stem.partition(DESTINATION_MARK)[2]


@dataclass(frozen=True)
class SpoolStatus:
    queued: int
    queued_bytes: int
    dead_letters: int
    oldest_queued_age_s: float | None
    incoming: int
    queued_by_destination: dict[str, int]


class Spool:
    """A spool directory; safe for many threads of one process and for several processes."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.incoming = self.root / INCOMING
        self.queue = self.root / QUEUE
        self.dead = self.root / DEAD
        for folder in (self.incoming, self.queue, self.dead):
            folder.mkdir(parents=True, exist_ok=True)
        self._queue_sync = DirectorySync(self.queue)
        # For commit, which runs for every C-STORE: strings, since pathlib's parsing showed in
        # the listener's per-instance profile.
        self._queue_dir = str(self.queue)
        self._queue_uri = self.queue.as_uri() + "/"

    # --- the edge's side -------------------------------------------------------------------

    @staticmethod
    def new_entry_name(sop_instance_uid: str) -> str:
        return f"{time.time_ns():019d}-{sop_instance_uid}-{secrets.token_hex(4)}{SUFFIX}"

    @staticmethod
    def for_destination(name: str, destination: Destination | None) -> str:
        """The entry name of `name`'s copy for one destination (None: the default store)."""
        if destination is None:
            return name
        return f"{name[: -len(SUFFIX)]}{DESTINATION_MARK}{destination.id}{SUFFIX}"

    def commit(self, partial: str, name: str, destinations: Sequence[Destination | None] = (None,)) -> list[str]:
        """Make a fully written and fsynced file in incoming/ one queue entry per destination
        (hard links of one file), durably; nothing is left in the queue if that fails.
        Returns the entries' names, in the order of `destinations`."""
        names = [self.for_destination(name, destination) for destination in destinations]
        finals = [os.path.join(self._queue_dir, entry) for entry in names]
        os.rename(partial, finals[0])
        try:
            for extra in finals[1:]:
                os.link(finals[0], extra)
            self._queue_sync.sync()
        except OSError:
            # Not durable, so the sender will hear a failure: no entry may be uploaded.
            for final in finals:
                try:
                    os.unlink(final)
                except FileNotFoundError:
                    pass
            raise
        return names

    def entry_uri(self, name: str) -> str:
        """file:// URI of the queue entry `name` (what `uri` gives for its path)."""
        return self._queue_uri + quote(name)

    # --- destinations ----------------------------------------------------------------------

    def register_destinations(self, destinations: Iterable[Destination]) -> None:
        """Record what each destination ID stands for, so that entries can be described after
        a restart even if the routing configuration changed meanwhile."""
        folder = self.root / DESTINATIONS
        folder.mkdir(exist_ok=True)
        for destination in destinations:
            path = folder / f"{destination.id}{RECORD_SUFFIX}"
            if not path.exists():
                _write_durably(path, json.dumps(destination.to_json()).encode())

    def destination_of(self, name: str) -> dict[str, Any] | None:
        """The destination of an entry (None: the default store)."""
        destination_id = destination_id_of(name)
        if not destination_id:
            return None
        record = read_record(self.root / DESTINATIONS / f"{destination_id}{RECORD_SUFFIX}")
        if not record:
            raise ValueError(f"entry {name} names an unknown destination {destination_id}")
        return record

    def clear_incoming(self) -> int:
        """Remove leftovers of receptions that never completed (no sender got an ack for them)."""
        removed = 0
        for path in self.incoming.iterdir():
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    # --- the queue -------------------------------------------------------------------------

    def queued(self) -> list[Path]:
        """Queue entries, oldest first."""
        # Sorted by name string: comparing Path objects costs ~30x more on a large backlog.
        names = sorted(entry.name for entry in os.scandir(self.queue) if entry.name.endswith(SUFFIX))
        return [self.queue / name for name in names]

    def uri(self, path: Path) -> str:
        """file:// URI of an entry (the root is resolved once, so no path lookups here)."""
        return (path if path.is_absolute() else self.root / path).as_uri()

    def describe(self, path: Path) -> BufferedInstance:
        """Rebuild the event of a queue entry from the file itself (after a restart or redrive)."""
        size = path.stat().st_size
        with open(path, "rb") as fp:
            meta = read_file_meta(fp)
            summary = summarize_dataset(fp, meta.dataset_offset, size, meta.transfer_syntax_uid)
        return BufferedInstance(
            buffer_uri=self.uri(path),
            sop_class_uid=summary.sop_class_uid or meta.sop_class_uid,
            sop_instance_uid=summary.sop_instance_uid or meta.sop_instance_uid,
            study_instance_uid=summary.study_instance_uid,
            series_instance_uid=summary.series_instance_uid,
            transfer_syntax_uid=meta.transfer_syntax_uid,
            calling_aet=meta.sending_aet or meta.source_aet,
            called_aet=meta.receiving_aet,
            size=size,
            received_at=datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            destination=self.destination_of(path.name),
        )

    # --- dead letters ----------------------------------------------------------------------

    def dead_letters(self) -> list[tuple[Path, dict[str, Any]]]:
        letters = []
        for path in sorted(self.dead.iterdir()):
            if not path.name.endswith(SUFFIX):
                continue
            letters.append((path, read_record(path.with_suffix(RECORD_SUFFIX))))
        return letters

    def redrive(self, sop_instance_uids: set[str] | None = None, destination: str | None = None) -> list[Path]:
        """Move dead letters (all, or those with these UIDs and/or for this destination label)
        back into the queue."""
        moved = []
        for path, record in self.dead_letters():
            if sop_instance_uids and sop_instance_uid_of(path.name) not in sop_instance_uids:
                continue
            if destination and record.get("destination", DEFAULT_LABEL) != destination:
                continue
            target = self.queue / path.name
            # The record goes first: once the entry is back in the queue it may be dead-lettered
            # again at once, with a new record that must not be deleted here.
            path.with_suffix(RECORD_SUFFIX).unlink(missing_ok=True)
            os.rename(path, target)
            fsync_directory(self.queue)
            moved.append(target)
        if moved:
            fsync_directory(self.dead)
            self.request_rescan()
        return moved

    @property
    def rescan_marker(self) -> Path:
        """Touched (request_rescan) so a running dispatcher scans the queue now, not at its next tick."""
        return self.root / "rescan.requested"

    def request_rescan(self) -> None:
        """Ask a running dispatcher to scan the queue now."""
        self.rescan_marker.touch()

    def take_rescan_request(self) -> bool:
        try:
            self.rescan_marker.unlink()
        except FileNotFoundError:
            return False
        return True

    def status(self) -> SpoolStatus:
        queued = self.queued()
        sizes = 0
        oldest: float | None = None
        now = time.time()
        by_destination: dict[str, int] = {}
        for path in queued:
            label = self._destination_label(path.name)
            by_destination[label] = by_destination.get(label, 0) + 1
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            sizes += stat.st_size
            age = now - stat.st_mtime
            oldest = age if oldest is None else max(oldest, age)
        return SpoolStatus(
            queued=len(queued),
            queued_bytes=sizes,
            dead_letters=len(self.dead_letters()),
            oldest_queued_age_s=oldest,
            incoming=sum(1 for _ in self.incoming.iterdir()),
            queued_by_destination=by_destination,
        )

    def _destination_label(self, name: str) -> str:
        try:
            record = self.destination_of(name)
        except ValueError:
            return f"unknown destination {destination_id_of(name)}"
        return Destination.from_json(record).label if record else DEFAULT_LABEL


def read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class SpoolObject:
    """A queue entry as the upload step sees it (the spool's `BufferedObject`)."""

    def __init__(self, path: Path, uri: str | None = None) -> None:
        self.path = path
        self.uri = uri or path.as_uri()

    @classmethod
    def from_uri(cls, uri: str) -> "SpoolObject":
        return cls(Path(unquote(urlparse(uri).path)), uri)

    def exists(self) -> bool:
        return self.path.exists()

    def size(self) -> int:
        return self.path.stat().st_size

    def open_chunks(self) -> Iterator[bytes]:
        # Unbuffered, each read no larger than what is left: a fixed 1 MiB read allocated (and
        # freed) a 1 MiB buffer for every ~70 KB instance.
        with open(self.path, "rb", buffering=0) as fp:
            left = os.fstat(fp.fileno()).st_size
            while chunk := fp.read(min(left, 1 << 20) or 1):
                left = max(0, left - len(chunk))
                yield chunk

    @contextmanager
    def local_path(self) -> Iterator[Path]:
        yield self.path

    def complete(self) -> bool:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True

    def dead_letter(self, record: dict[str, Any]) -> None:
        dead = self.path.parent.parent / DEAD
        target = dead / self.path.name
        # The record first: a dead letter without its reason would be a mystery to the operator.
        _write_durably(target.with_suffix(RECORD_SUFFIX), json.dumps(record, indent=2).encode())
        os.rename(self.path, target)
        fsync_directory(dead)
        fsync_directory(self.path.parent)
