"""`dicom-adapter import`: every source under the given paths through the Intake, in parallel.

Sources are enumerated lazily and handed to `workers` threads with at most twice that many
waiting, so a folder of a million files costs no memory for the list (a first, cheap pass only
counts them for the progress bar). Copying, fsync and hashing release the interpreter lock,
which is what the threads are for. Ctrl-C / SIGTERM stop handing out sources; what is in
progress finishes, the report says the run was interrupted, and a re-run resumes.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dicom_adapter.events import utc_now

from .intake import Intake, Outcome
from .progress import Progress
from .sources import count_sources, iter_sources
from .staging import ALREADY_PRESENT, FAILED, IMPORTED, NOT_DICOM, SKIPPED

OUTCOMES = (IMPORTED, ALREADY_PRESENT, NOT_DICOM, FAILED, SKIPPED)


@dataclass
class ImportSummary:
    counts: Counter[str] = field(default_factory=Counter)
    imported_bytes: int = 0
    rewrapped: int = 0
    problems: list[dict[str, str]] = field(default_factory=list)  # every source not imported, with why
    interrupted: bool = False
    started_at: str = field(default_factory=utc_now)
    duration_s: float = 0.0

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome.kind] += 1
        if outcome.kind == IMPORTED:
            self.imported_bytes += outcome.source.size
            self.rewrapped += bool(outcome.rewrapped)
        elif outcome.kind != ALREADY_PRESENT:
            self.problems.append(outcome.report_entry())

    @property
    def all_imported(self) -> bool:
        return not (self.counts[NOT_DICOM] or self.counts[FAILED] or self.interrupted)

    def as_json(self, paths: Sequence[str]) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 3),
            "interrupted": self.interrupted,
            "paths": list(paths),
            "summary": {kind: self.counts[kind] for kind in OUTCOMES}
            | {"imported_bytes": self.imported_bytes, "rewrapped": self.rewrapped},
            "not_imported": self.problems,
        }

    def text(self) -> str:
        lines = [
            f"imported:        {self.counts[IMPORTED]} ({self.imported_bytes} bytes"
            + (f"; {self.rewrapped} with a new file meta)" if self.rewrapped else ")"),
            f"already present: {self.counts[ALREADY_PRESENT]}",
            f"not DICOM:       {self.counts[NOT_DICOM]}",
            f"failed:          {self.counts[FAILED]}",
        ]
        if self.counts[SKIPPED]:
            lines.append(f"skipped:         {self.counts[SKIPPED]} (DICOMDIR)")
        if self.interrupted:
            lines.append("interrupted: run the same command again to finish")
        return "\n".join(lines)


def run_import(
    paths: Sequence[str],
    intake: Intake,
    *,
    workers: int = 4,
    stop: threading.Event | None = None,
    progress_interval_s: float = 10.0,
) -> ImportSummary:
    """Import everything under `paths`."""
    stop = stop or threading.Event()
    summary = ImportSummary()
    started = time.monotonic()
    total_files, total_bytes = count_sources(paths)
    progress = Progress(total_files, total_bytes, interval_s=progress_interval_s)
    slots = threading.BoundedSemaphore(workers * 2)
    done: list[Outcome] = []
    done_lock = threading.Condition()

    def finished(future: Future[Outcome]) -> None:
        slots.release()
        with done_lock:
            done.append(future.result())
            done_lock.notify()

    def drain_done() -> None:
        with done_lock:
            batch, done[:] = list(done), []
        for outcome in batch:
            summary.add(outcome)
            progress.advance(outcome.source.size)

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="import") as pool:
            for source in iter_sources(paths):
                while not slots.acquire(timeout=0.2):
                    drain_done()
                    if stop.is_set():
                        break
                if stop.is_set():
                    summary.interrupted = True
                    break
                pool.submit(intake.take, source).add_done_callback(finished)
                drain_done()
            # Leaving the with-block waits for the sources in progress.
        drain_done()
    finally:
        progress.close()
    summary.duration_s = time.monotonic() - started
    if not summary.interrupted:
        progress.log_line()
    return summary


def write_report(path: Path, summary: ImportSummary, paths: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary.as_json(paths), indent=2))
    os.replace(tmp, path)
