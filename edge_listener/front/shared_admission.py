"""Association counts shared by the listener processes of one port (`--dimse_processes`).

`--max_associations` and `--max_associations_per_aet` are limits for the adapter, not for
each process: the kernel spreads connections over the processes unevenly, so splitting the
limits would reject a sender while another process has room, or let one calling AE open more
associations than it may. Each process publishes the calling AE titles of the associations it
has admitted in a small file of its own, and admits a new one under an exclusive lock after
adding up everyone's files. A process that died is not counted (its PID is gone) and its file
is removed by the next admission; the folder is cleared when the runtime starts.

Cost: a lock and a few small reads and one small write per association, never per message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from edge_listener.buffer.process_folders import process_alive


class SharedAssociationCounts:
    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._own = self.folder / f"{os.getpid()}.json"
        self._lock_path = self.folder / "admission.lock"

    @staticmethod
    def reset(folder: str | os.PathLike[str]) -> None:
        """Forget every process's counts (at start, before any listener runs)."""
        shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across the processes: count and admit in one step."""
        fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def others(self) -> list[str]:
        """Calling AE titles of the associations the other live processes have admitted (call
        under `locked`)."""
        aets: list[str] = []
        for path in self.folder.glob("*.json"):
            if path == self._own:
                continue
            if not process_alive(int(path.stem)):
                path.unlink(missing_ok=True)
                continue
            try:
                aets.extend(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # removed meanwhile, or (impossible under the lock) half written
        return aets

    def publish(self, aets: list[str]) -> None:
        """This process's admitted calling AE titles (call under `locked`)."""
        temporary = self._own.with_suffix(".tmp")
        temporary.write_text(json.dumps(aets))
        os.replace(temporary, self._own)

