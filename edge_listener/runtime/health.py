"""Liveness and readiness over HTTP, for GKE's probes.

GET /healthz  200 while the DIMSE listener thread is alive (else the kubelet restarts the pod).
GET /readyz   200 while every dependency check passes (the GCS buffer can be listed and the
              Pub/Sub topic seen) and the edge is not draining; 503 with the failing checks
              otherwise, so the load balancer stops sending associations to a pod that could
              only answer them with failures.

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

log = logging.getLogger(__name__)

Check = Callable[[], bool]


class HealthServer:
    def __init__(self, host: str, port: int, *, alive: Check, checks: dict[str, Check], interval_s: float = 10.0) -> None:
        self.alive = alive
        self.checks = checks
        self.interval_s = interval_s
        self.draining = False
        self._failing: list[str] | None = None  # None until the first round of checks ran
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
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
        self._stop.set()
        self._server.shutdown()
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
                if self.path == "/healthz":
                    ok, body = _safe(health.alive), {}
                elif self.path == "/readyz":
                    ok, failing = health.readiness()
                    body = {"failing": failing}
                else:
                    self.send_error(404, "unknown path: use /healthz or /readyz")
                    return
                payload = json.dumps({"status": "ok" if ok else "unavailable", **body}).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
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
