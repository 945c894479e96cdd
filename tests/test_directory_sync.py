"""The spool's shared directory fsync (group commit): fewer fsyncs, never a weaker promise."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest
from dicom_adapter.buffers import spool as spool_module
from dicom_adapter.buffers.spool import DirectorySync


class RecordedFsyncs:
    """Stands in for fsync_directory; records when each call began and ended on one clock."""

    def __init__(self, clock: itertools.count, seconds: float = 0.002, fail_first: int = 0) -> None:
        self.clock = clock
        self.seconds = seconds
        self.fail_first = fail_first
        self.calls: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __call__(self, path: Path) -> None:
        began = next(self.clock)
        time.sleep(self.seconds)
        with self._lock:
            if self.fail_first:
                self.fail_first -= 1
                raise OSError(5, "Input/output error")
            self.calls.append((began, next(self.clock)))


def test_concurrent_commits_share_fsyncs_and_each_waits_for_one_that_began_after_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    clock = itertools.count()
    fsyncs = RecordedFsyncs(clock)
    monkeypatch.setattr(spool_module, "fsync_directory", fsyncs)
    sync = DirectorySync(tmp_path)
    violations: list[str] = []

    def commit_many() -> None:
        for _ in range(40):
            renamed = next(clock)  # the caller's rename is done
            sync.sync()
            returned = next(clock)
            if not any(renamed < began and ended < returned for began, ended in fsyncs.calls):
                violations.append(f"returned at {returned} without an fsync begun after {renamed}")

    threads = [threading.Thread(target=commit_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not violations
    assert 0 < len(fsyncs.calls) < 8 * 40 // 2  # shared: far fewer than one per commit


def test_a_lone_caller_gets_its_own_fsync_every_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fsyncs = RecordedFsyncs(itertools.count(), seconds=0)
    monkeypatch.setattr(spool_module, "fsync_directory", fsyncs)
    sync = DirectorySync(tmp_path)
    for _ in range(5):
        sync.sync()
    assert len(fsyncs.calls) == 5


def test_a_failed_fsync_fails_its_caller_and_the_next_call_tries_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fsyncs = RecordedFsyncs(itertools.count(), seconds=0, fail_first=1)
    monkeypatch.setattr(spool_module, "fsync_directory", fsyncs)
    sync = DirectorySync(tmp_path)
    with pytest.raises(OSError, match="Input/output error"):
        sync.sync()
    sync.sync()
    assert len(fsyncs.calls) == 1

