"""The `dicom-adapter import` command over the local spool: wiring, summary, report, exit code."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import click
from dicom_adapter.buffers.spool import Spool
from dicom_adapter.routing import RoutingTable

from edge_listener.stop_signals import stop_on_signals

from .intake import Intake
from .ledger import Ledger
from .run import run_import, write_report
from .sink import InstanceBufferSink, spool_sink

EXIT_NOT_ALL_IMPORTED = 1
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class CloudTarget:
    """Import into the cloud buffer: GCS objects with Pub/Sub events, as the cloud edge writes."""

    gcs_buffer: str
    pubsub_topic: str
    work_dir: Path  # the ledger, staged copies and reports live here


def run_import_command(
    paths: Sequence[str],
    *,
    spool_dir: str | None,
    workers: int,
    report: str | None,
    force: bool,
    routing: RoutingTable | None = None,
    cloud: CloudTarget | None = None,
) -> int:
    rules = routing if routing and routing.rules else None  # without rules: the default store
    if cloud is not None:
        sink, root, wake = _cloud_sink(cloud, rules), cloud.work_dir, None
    else:
        spool = Spool(spool_dir or ".")
        wake = _UploaderWakeUp(spool)
        if rules is not None:
            spool.register_destinations(rules.destinations)
        sink, root = spool_sink(spool, lambda _event: wake.maybe(), rules), spool.root
    ledger = Ledger.in_spool(root)
    stop = stop_on_signals()
    try:
        summary = run_import(paths, Intake(sink, ledger, force=force), workers=workers, stop=stop)
    finally:
        if wake is not None:
            wake.now()
        ledger.close()
        sink.close()
    report_path = Path(report) if report else root / "import-reports" / f"import-{time.strftime('%Y%m%dT%H%M%S')}.json"
    write_report(report_path, summary, paths)
    click.echo(summary.text())
    if summary.problems:
        click.echo(f"{len(summary.problems)} file(s) not imported, each with the reason, in the report")
    click.echo(f"report: {report_path}")
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return 0 if summary.all_imported else EXIT_NOT_ALL_IMPORTED


def _cloud_sink(cloud: CloudTarget, routing: RoutingTable | None) -> InstanceBufferSink:
    from dicom_adapter.buffers.gcs import GcsBuffer, GcsLocation
    from dicom_adapter.pubsub import EventPublisher

    from edge_listener.buffer.buffering import CloudBuffer

    cloud.work_dir.mkdir(parents=True, exist_ok=True)
    buffer = CloudBuffer(GcsBuffer(GcsLocation.parse(cloud.gcs_buffer)), EventPublisher(cloud.pubsub_topic), cloud.work_dir / "incoming")
    return InstanceBufferSink(buffer, cloud.work_dir, routing)


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
        self.spool.request_rescan()
