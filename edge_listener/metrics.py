"""The pipeline's counters, shared by every process of one edge (Prometheus client, multiprocess).

The edge is several processes (listeners, the upload process), and one /metrics must show
their sum, across restarts of a child too. prometheus-client does that with its multiprocess
mode: each process writes its values to memory-mapped files in one directory, and the process
serving /metrics (runtime/pipeline_metrics.py) adds them up. `enable(directory)` chooses that
directory; the children inherit it through PROMETHEUS_MULTIPROC_DIR, the variable the library
reads. Where it is not enabled (tests of one piece, `dicom-adapter import`) every count_* is a
no-op.

Labels carry only what an operator filters on and what stays few: a destination's label
(routing.py; never a URL's credentials), an outcome, a DIMSE status. Never a UID or a name.

May import: prometheus_client only.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own name for it
PREFIX = "dicom_adapter"
# Upload and export latencies: from a fast local store to a slow outage's retries.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class PipelineCounters:
    """One family per stage of the pipeline picture (docs/architecture.md)."""

    received: Counter
    rejected: Counter
    buffered: Counter
    buffered_bytes: Counter
    uploads: Counter
    upload_seconds: Histogram
    dead_lettered: Counter
    transcodes_skipped: Counter
    exports: Counter
    export_seconds: Histogram


_counters: PipelineCounters | None = None
_lock = threading.Lock()


def enable(directory: str | os.PathLike[str], *, clear: bool = True) -> None:
    """Count into `directory` from now on, in this process and in the children it starts.

    `clear` removes an earlier run's files (prometheus-client asks for that at each start:
    the counters of a new run begin at zero, which Prometheus' rate() reads as a restart)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if clear:
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
    os.environ[DIRECTORY_VARIABLE] = str(path)
    global _counters
    with _lock:
        _counters = None  # rebuilt, writing into the new directory
    start_counting()


def start_counting() -> None:
    """Build this process's counters now, where it starts (importing prometheus-client takes
    ~0.2 s), so its first C-STORE does not wait for that. A no-op where counting is not enabled."""
    _get()


def directory() -> Path | None:
    """The directory this process counts into, or None."""
    value = os.environ.get(DIRECTORY_VARIABLE)
    return Path(value) if value else None


def _get() -> PipelineCounters | None:
    global _counters
    if _counters is not None or directory() is None:
        return _counters
    with _lock:
        if _counters is None:
            _counters = _build()
    return _counters


def _build() -> PipelineCounters:
    from prometheus_client import Counter, Histogram, values

    # The library picks its value class when first imported; enable() may come later.
    values.ValueClass = values.get_value_class()
    destination = ("destination",)
    return PipelineCounters(
        received=Counter(f"{PREFIX}_instances_received", "C-STORE requests answered, buffered or refused.", registry=None),
        rejected=Counter(f"{PREFIX}_instances_rejected", "C-STOREs answered with a failure status, by status.", ("status",), registry=None),
        buffered=Counter(f"{PREFIX}_instances_buffered", "Instances durably buffered (acknowledged), per destination.", destination, registry=None),
        buffered_bytes=Counter(f"{PREFIX}_buffered_bytes", "Bytes of the instances buffered (once per instance, whatever its destinations).", registry=None),
        uploads=Counter(
            f"{PREFIX}_uploads",
            "Upload attempts by outcome: stored, duplicate, overwritten, already_done, dead_lettered, malformed_event, retried (store unavailable), error (unexpected).",
            ("destination", "outcome"),
            registry=None,
        ),
        upload_seconds=Histogram(f"{PREFIX}_upload_seconds", "Time of one upload attempt (a batch's time is each of its instances').", destination, buckets=LATENCY_BUCKETS, registry=None),
        dead_lettered=Counter(f"{PREFIX}_dead_letters", "Entries moved to dead letters, per stage (upload, export) and destination.", ("stage", "destination"), registry=None),
        transcodes_skipped=Counter(
            f"{PREFIX}_transcodes_skipped", "Transformed copies stored in their received transfer syntax (could not be transcoded: see the WARNING).", destination, registry=None
        ),
        exports=Counter(f"{PREFIX}_exports", "Export delivery attempts by outcome (as uploads), per export destination.", ("destination", "outcome"), registry=None),
        export_seconds=Histogram(f"{PREFIX}_export_seconds", "Time of one export delivery attempt.", destination, buckets=LATENCY_BUCKETS, registry=None),
    )


def count_rejected(status: int) -> None:
    """A C-STORE answered with a failure status."""
    if counters := _get():
        counters.received.inc()
        counters.rejected.labels(f"0x{status:04X}").inc()


def count_buffered(size: int, destinations: list[str]) -> None:
    """A C-STORE acknowledged: one instance of `size` bytes buffered for each destination."""
    if counters := _get():
        counters.received.inc()
        counters.buffered_bytes.inc(size)
        for destination in destinations:
            counters.buffered.labels(destination).inc()


def count_upload(destination: str, outcome: str, seconds: float) -> None:
    """One upload attempt of one instance (an outcome "dead_lettered" is a dead letter too)."""
    if counters := _get():
        counters.uploads.labels(destination, outcome).inc()
        counters.upload_seconds.labels(destination).observe(seconds)
        if outcome == "dead_lettered":
            counters.dead_lettered.labels("upload", destination).inc()


def count_export(destination: str, outcome: str, seconds: float) -> None:
    """One export delivery attempt (as count_upload)."""
    if counters := _get():
        counters.exports.labels(destination, outcome).inc()
        counters.export_seconds.labels(destination).observe(seconds)
        if outcome == "dead_lettered":
            counters.dead_lettered.labels("export", destination).inc()


def count_transcode_skipped(destination: str) -> None:
    if counters := _get():
        counters.transcodes_skipped.labels(destination).inc()


def count_dead_letter(stage: str, destination: str) -> None:
    """An entry given up after repeated unexpected errors (its attempts counted as "error")."""
    if counters := _get():
        counters.dead_lettered.labels(stage, destination).inc()

