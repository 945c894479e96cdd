"""Liveness and readiness over HTTP, for GKE's probes.

GET /healthz  200 while the DIMSE listener thread is alive (else the kubelet restarts the pod).
GET /readyz   200 while every dependency check passes (the GCS buffer can be listed and the
              Pub/Sub topic seen; locally, the spool is writable and the upload process runs)
              and the edge is not draining; 503 with the failing checks otherwise, so the load
              balancer stops sending associations to a pod that could only answer them with
              failures.
GET /metrics  the pipeline's counters and queue gauges in Prometheus' text format
              (pipeline_metrics.py), for GKE's managed Prometheus or any scraper.

Checks run in a background thread every `interval_s`, never inside a probe request: a probe
must answer fast even while GCS is slow.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from dicom_adapter.logs import fields
from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

Check = Callable[[], bool]


class HealthServer:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        alive: Check,
        checks: dict[str, Check],
        interval_s: float = 10.0,
        metrics: Callable[[], bytes] | None = None,
    ) -> None:
        self.alive = alive
        self.metrics = metrics
        self.checks = checks
        self.interval_s = interval_s
        self.draining = False
        self._failing: list[str] | None = None  # None until the first round of checks ran
        self._stop = threading.Event()
        try:
            self._server = ThreadingHTTPServer((host, port), self._handler_class())
        except OSError as exc:
            raise OSError(exc.errno, f"health port {port}: {exc.strerror or exc}") from None
        self._server.daemon_threads = True
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True),
            threading.Thread(target=self._check_forever, name="health-checks", daemon=True),
        ]

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop serving (also when start() was never called)."""
        self._stop.set()
        if self._threads[0].is_alive():
            self._server.shutdown()  # waits for serve_forever, so only once it runs
        self._server.server_close()

    def readiness(self) -> tuple[bool, list[str]]:
        failing = ["starting"] if self._failing is None else list(self._failing)
        if self.draining:
            failing.append("draining")
        return not failing, failing

    def _check_forever(self) -> None:
        while not self._stop.is_set():
            failing = [name for name, check in self.checks.items() if not _safe(check)]
            if failing != self._failing:
                if failing:
                    log.warning("not ready", extra=fields(failing=",".join(failing)))
                elif self._failing is not None:
                    log.info("ready again")
            self._failing = failing
            self._stop.wait(self.interval_s)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path == "/metrics" and health.metrics is not None:
                    self._answer(200, CONTENT_TYPE_LATEST, health.metrics())
                    return
                if self.path == "/healthz":
                    ok, body = _safe(health.alive), {}
                elif self.path == "/readyz":
                    ok, failing = health.readiness()
                    body = {"failing": failing}
                else:
                    self.send_error(404, "unknown path: use /healthz, /readyz or /metrics")
                    return
                self._answer(200 if ok else 503, "application/json", json.dumps({"status": "ok" if ok else "unavailable", **body}).encode())

            def _answer(self, code: int, content_type: str, payload: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass  # probes every few seconds would drown the log

        return Handler


def _safe(check: Check) -> bool:
    try:
        return bool(check())
    except Exception:
        return False
