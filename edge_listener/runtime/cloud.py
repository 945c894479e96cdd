"""The cloud edge (`dicom-adapter edge`): the DIMSE listener with a GCS + Pub/Sub buffer.

It only receives and buffers: each acknowledged instance is a GCS object whose event is on
Pub/Sub, and the `stow_upload` Cloud Function does the rest. GKE scales it by replicas behind
an internal load balancer, asks health.py whether a pod is alive and ready, and scrapes the
pod's counters from the same port's /metrics.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from dicom_adapter.buffers.gcs import GcsBuffer, GcsLocation
from dicom_adapter.logs import fields
from dicom_adapter.pubsub import EventPublisher
from dicom_adapter.routing import RoutingTable

from edge_listener import metrics
from edge_listener.buffer.buffering import CloudBuffer
from .health import HealthServer
from .pipeline_metrics import exposition, pipeline_registry
from edge_listener.front.server import Listener, ListenerSettings
from .assembly import QueryRetrieveSettings, build_services
from edge_listener.services.store import StoreService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CloudSettings:
    gcs_buffer: str
    pubsub_topic: str
    work_dir: str
    health_host: str = "0.0.0.0"
    health_port: int = 8080
    publish_timeout_s: float = 20.0
    check_interval_s: float = 10.0
    gcs_chunk_size: int = 8 << 20


class CloudRuntime:
    """Listener + health endpoints; drained on stop (nothing is queued locally to keep)."""

    def __init__(
        self,
        listener_settings: ListenerSettings,
        settings: CloudSettings,
        *,
        drain_timeout_s: float = 30.0,
        routing: RoutingTable = RoutingTable(()),
        query_retrieve: QueryRetrieveSettings | None = None,
    ) -> None:
        self.drain_timeout_s = drain_timeout_s
        incoming = Path(settings.work_dir) / "incoming"
        # Leftovers of an earlier run are receptions nobody was acked for.
        shutil.rmtree(incoming, ignore_errors=True)
        counters_dir = Path(settings.work_dir) / "metrics"
        metrics.enable(counters_dir)
        registry = pipeline_registry(counters_dir)
        self.bucket = GcsBuffer(GcsLocation.parse(settings.gcs_buffer), chunk_size=settings.gcs_chunk_size)
        self.publisher = EventPublisher(settings.pubsub_topic, timeout_s=settings.publish_timeout_s)
        self.listener = Listener(
            listener_settings,
            StoreService(CloudBuffer(self.bucket, self.publisher, incoming), routing),
            build_services(query_retrieve),
        )
        self.health = HealthServer(
            settings.health_host,
            settings.health_port,
            alive=self.listener.is_serving,
            checks={"gcs_buffer": self.bucket.reachable, "pubsub_topic": self.publisher.topic_reachable},
            interval_s=settings.check_interval_s,
            metrics=lambda: exposition(registry),
        )

    def start(self) -> None:
        self.health.start()
        self.listener.start()

    def supervise(self) -> None:
        """Nothing to restart here: a dead listener fails /healthz and the kubelet restarts us."""

    def drain(self) -> None:
        self.health.draining = True
        self.listener.drain(self.drain_timeout_s)
        self.publisher.close()
        self.health.stop()
        log.info("stopped", extra=fields(buffer=str(self.bucket.location)))
