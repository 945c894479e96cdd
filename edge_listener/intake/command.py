"""The `dicom-adapter import` command over the local spool: wiring, summary, report, exit code."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Sequence

import click
from dicom_adapter.buffers.spool import Spool

from .intake import Intake
from .ledger import Ledger
from .run import run_import, write_report
from .sink import spool_sink

EXIT_NOT_ALL_IMPORTED = 1
EXIT_INTERRUPTED = 130


def run_import_command(paths: Sequence[str], *, spool_dir: str, workers: int, report: str | None, force: bool) -> int:
    spool = Spool(spool_dir)
    wake = _UploaderWakeUp(spool)
    # Routing rules are those of `local` and not known here: imports go to its default store.
    sink = spool_sink(spool, lambda _event: wake.maybe())
    ledger = Ledger.in_spool(spool.root)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        summary = run_import(paths, Intake(sink, ledger, force=force), workers=workers, stop=stop)
    finally:
        wake.now()
        ledger.close()
        sink.close()
    report_path = Path(report) if report else spool.root / "import-reports" / f"import-{time.strftime('%Y%m%dT%H%M%S')}.json"
    write_report(report_path, summary, paths)
    click.echo(summary.text())
    if summary.problems:
        click.echo(f"{len(summary.problems)} file(s) not imported, each with the reason, in the report")
    click.echo(f"report: {report_path}")
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return 0 if summary.all_imported else EXIT_NOT_ALL_IMPORTED


class _UploaderWakeUp:
    """Tells a running `dicom-adapter local` on this spool to look at its queue now (at most once
    a second), through the same rescan marker `redrive` uses; without it, uploads would start at
    its next periodic scan."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.last = 0.0

    def maybe(self) -> None:
        if time.monotonic() - self.last >= 1.0:
            self.now()

    def now(self) -> None:
        self.last = time.monotonic()
        self.spool.rescan_marker.touch()
