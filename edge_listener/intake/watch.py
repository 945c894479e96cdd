"""The watched drop folder of `dicom-adapter local --watch_dir DIR`.

A file is taken only once it is complete, which a folder cannot say, so three guards:
  1. size and modification time unchanged for `settle_s` (a writer that appends in pauses
     shorter than that is waited for);
  2. no process has it open for writing (Linux: a read lease cannot be taken while one has;
     where leases are not allowed, e.g. a file of another user, this guard is skipped);
  3. a file that parses as cut short (a value or sequence runs past its end, or it is empty)
     is left alone until it has not changed for `incomplete_timeout_s`; only then rejected.
Names starting with '.' or ending in .part, .tmp or .partial are never taken: writing under
such a name and renaming when done is the way to be sure (rename is atomic).

Taken files go through the same Intake as `dicom-adapter import`, then are moved to DIR/done/
(or deleted), keeping their sub-folder; files that cannot be imported go to DIR/rejected/ with
NAME.reason.json beside them. A ZIP archive counts as done when every member was imported or
already present; otherwise it is rejected with the reason of each member that was not.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dicom_adapter.events import utc_now
from dicom_adapter.logs import fields

from .intake import Intake, Outcome
from .sources import Source, file_ref, sources_of_file
from .staging import ALREADY_PRESENT, IMPORTED, SKIPPED

log = logging.getLogger(__name__)

DONE = "done"
REJECTED = "rejected"
IGNORED_SUFFIXES = (".part", ".tmp", ".partial")
REASON_SUFFIX = ".reason.json"


@dataclass(frozen=True)
class WatchSettings:
    folder: Path
    settle_s: float = 2.0
    incomplete_timeout_s: float = 300.0
    delete_done: bool = False
    poll_s: float = 0.5


@dataclass
class _Seen:
    state: tuple[int, int]  # size, mtime_ns
    unchanged_since: float
    found_incomplete: bool = False


class WatchedFolder:
    """Polls the folder in a thread of its own (polling also works on network shares, where
    inotify does not)."""

    def __init__(self, settings: WatchSettings, intake: Intake) -> None:
        self.settings = settings
        self.folder = Path(settings.folder).resolve()
        self.intake = intake
        self._seen: dict[Path, _Seen] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for sub in (DONE, REJECTED):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="watch-dir", daemon=True)
        self._thread.start()
        log.info("watching the drop folder", extra=fields(settle_s=self.settings.settle_s))

    def stop(self, timeout: float | None = None) -> None:
        """Finish the file in progress, then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan_once()
            except Exception as exc:  # keep watching; the next scan tries again
                log.error("watched folder scan failed", extra=fields(error=type(exc).__name__))
            self._stop.wait(self.settings.poll_s)

    def scan_once(self) -> None:
        now = time.monotonic()
        present: set[Path] = set()
        for path in self._candidates():
            if self._stop.is_set():
                return
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            present.add(path)
            state = (stat.st_size, stat.st_mtime_ns)
            seen = self._seen.get(path)
            if seen is None or seen.state != state:
                self._seen[path] = _Seen(state, now)
                continue
            quiet_for = now - seen.unchanged_since
            if quiet_for < self.settings.settle_s or _open_for_writing(path):
                continue
            if seen.found_incomplete and quiet_for < self.settings.incomplete_timeout_s:
                continue
            if self._take(path, may_wait=quiet_for < self.settings.incomplete_timeout_s):
                self._seen.pop(path, None)
                present.discard(path)
            else:
                seen.found_incomplete = True
        for gone in set(self._seen) - present:
            del self._seen[gone]

    def _candidates(self) -> Iterator[Path]:
        for root, dirs, files in os.walk(self.folder):
            if Path(root) == self.folder:
                dirs[:] = [d for d in dirs if d not in (DONE, REJECTED)]
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith(".") and not name.endswith(IGNORED_SUFFIXES):
                    yield Path(root, name)

    def _take(self, path: Path, *, may_wait: bool) -> bool:
        """Import the file; False if it looks cut short and may still be growing."""
        sources: list[Source] = list(sources_of_file(path))
        outcomes: list[Outcome] = [self.intake.take(source, final=not may_wait) for source in sources]
        if may_wait and any(o.incomplete for o in outcomes):
            return False
        problems = [o for o in outcomes if o.kind not in (IMPORTED, ALREADY_PRESENT, SKIPPED)]
        ref = file_ref(str(path))
        if problems:
            self._reject(path, problems)
            log.warning("watched file rejected", extra=fields(file_ref=ref, members=len(outcomes), not_imported=len(problems)))
        else:
            self._done(path)
            log.info("watched file taken", extra=fields(file_ref=ref, instances=sum(o.kind == IMPORTED for o in outcomes)))
        return True

    def _done(self, path: Path) -> None:
        if self.settings.delete_done:
            path.unlink(missing_ok=True)
        else:
            _move(path, self._target(DONE, path))

    def _reject(self, path: Path, problems: list[Outcome]) -> None:
        target = self._target(REJECTED, path)
        record = {
            "rejected_at": utc_now(),
            "reason": problems[0].reason if len(problems) == 1 else f"{len(problems)} members not imported",
            "not_imported": [{"member": o.source.label.split("!", 1)[-1], "outcome": o.kind, "reason": o.reason} for o in problems],
        }
        # The reason first, so a rejected file is never found without it.
        target.parent.mkdir(parents=True, exist_ok=True)
        target.with_name(target.name + REASON_SUFFIX).write_text(json.dumps(record, indent=2))
        _move(path, target)

    def _target(self, sub: str, path: Path) -> Path:
        target = self.folder / sub / path.relative_to(self.folder)
        if target.exists() or target.with_name(target.name + REASON_SUFFIX).exists():
            target = target.with_name(f"{target.stem}-{secrets.token_hex(3)}{target.suffix}")
        return target


def _move(path: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)


def _open_for_writing(path: Path) -> bool:
    """True if some process holds the file open for writing (Linux read-lease probe)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return exc.errno == errno.EAGAIN  # EACCES/EPERM (not ours), EINVAL (no leases here): unknown
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)
