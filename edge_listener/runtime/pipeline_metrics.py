"""What /metrics and `dicom-adapter status` show: the counters of every process of the edge
(metrics.py) and the state of the queue they feed, read from the same place by both.

The counters come from prometheus-client's multiprocess files; the queue state (depth per
destination, bytes, oldest age, dead letters, exports) is read from the spool when asked, so
a scrape or a redraw shows the queue as it is on disk, not as some process last saw it. The
cloud edge has no queue of its own (GCS and Pub/Sub are the queue, and Cloud Monitoring has
Pub/Sub's backlog metrics): its /metrics carries the counters only.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from dicom_adapter.buffers.spool import Spool
from dicom_adapter.routing import DEFAULT_LABEL
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from edge_listener.buffer.export_queue import ExportSpool
from edge_listener.metrics import PREFIX

QueueState = dict[str, Any]
DeadLetters = list[tuple[str, dict[str, Any]]]


def spool_counters_dir(spool_dir: str | Path) -> Path:
    """Where the processes of `dicom-adapter local` over this spool count (metrics.enable)."""
    return Path(spool_dir) / "metrics"


def spool_state(spool_dir: str | Path) -> tuple[QueueState, DeadLetters]:
    """The local spool's queue and export queue, and its dead letters (entry name, record)."""
    spool = Spool(spool_dir)
    exports = ExportSpool(spool_dir)
    state = {**spool.status().__dict__, **exports.status()}
    letters = [(path.name, record) for path, record in spool.dead_letters() + exports.dead_letters()]
    return state, letters


def bucket_state(gcs_buffer: str) -> tuple[QueueState, DeadLetters]:
    """The cloud buffer's queued objects and dead letters (one listing of the bucket)."""
    from dicom_adapter.buffers.gcs import GcsBuffer, GcsLocation

    bucket = GcsBuffer(GcsLocation.parse(gcs_buffer))
    queued = list(bucket.queued())
    now = datetime.now(timezone.utc)
    letters = [(blob.name, record) for blob, record in bucket.dead_letters()]
    by_destination: dict[str, int] = {}
    for blob in queued:
        label = bucket.event_of(blob).destination_label or DEFAULT_LABEL
        by_destination[label] = by_destination.get(label, 0) + 1
    state = {
        "queued": len(queued),
        "queued_by_destination": by_destination,
        "queued_bytes": sum(int(blob.size or 0) for blob in queued),
        "dead_letters": len(letters),
        "oldest_queued_age_s": max(((now - blob.time_created).total_seconds() for blob in queued), default=None),
    }
    return state, letters


class QueueCollector:
    """The queue state as gauges, read at each scrape."""

    def __init__(self, read_state: Callable[[], QueueState]) -> None:
        self.read_state = read_state

    def collect(self) -> Iterator[Metric]:
        state = self.read_state()
        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Instances waiting for upload, per destination.", labels=["destination"])
        for label, count in sorted(state["queued_by_destination"].items()):
            depth.add_metric([label], count)
        yield depth
        yield GaugeMetricFamily(f"{PREFIX}_queue_bytes", "Bytes waiting for upload.", value=state["queued_bytes"])
        oldest = state["oldest_queued_age_s"]
        yield GaugeMetricFamily(f"{PREFIX}_queue_oldest_age_seconds", "Age of the oldest instance waiting for upload (0: none waits).", value=oldest or 0.0)
        letters = GaugeMetricFamily(f"{PREFIX}_dead_letter_entries", "Entries in dead letters now, per stage.", labels=["stage"])
        letters.add_metric(["upload"], state["dead_letters"])
        if "exports_dead_letters" in state:
            letters.add_metric(["export"], state["exports_dead_letters"])
        yield letters
        if "incoming" in state:
            yield GaugeMetricFamily(f"{PREFIX}_receptions_in_progress", "C-STORE data sets being received now.", value=state["incoming"])
        if "exports_queued_by_destination" in state:
            exports = GaugeMetricFamily(f"{PREFIX}_export_queue_depth", "Export messages waiting for delivery, per destination.", labels=["destination"])
            for label, count in sorted(state["exports_queued_by_destination"].items()):
                exports.add_metric([label], count)
            yield exports
            yield GaugeMetricFamily(
                f"{PREFIX}_export_notifications_pending", "Store notifications not yet fanned out to export destinations.", value=state["exports_pending_notifications"]
            )


def pipeline_registry(counters_dir: str | Path, read_state: Callable[[], QueueState] | None = None) -> CollectorRegistry:
    """The counters of every process counting into `counters_dir`, and the queue's gauges."""
    registry = CollectorRegistry(auto_describe=True)
    MultiProcessCollector(registry, path=str(counters_dir))
    if read_state is not None:
        registry.register(QueueCollector(read_state))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format Prometheus scrapes."""
    return generate_latest(registry)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels): what `status --watch` draws and rates from."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
    }
