"""Publishing buffered-instance events to Pub/Sub (the edge, `sweep` and `redrive` do it), and
export messages and dead letters (`export_fanout`, `deliver`).

A C-STORE is acknowledged only after its event's publish future resolved (DESIGN invariant 1),
so a publish must end, one way or the other, within a bound the sender can wait for: the
client's own retry is kept but given a deadline, and the future is awaited with the same one.
"""

from __future__ import annotations

import logging
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Mapping

from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry

from .events import BufferedInstance
from .logs import fields

log = logging.getLogger(__name__)

# Errors worth a retry inside one publish (the client's default set).
_RETRYABLE = (
    api_exceptions.Aborted,
    api_exceptions.Cancelled,
    api_exceptions.DeadlineExceeded,
    api_exceptions.InternalServerError,
    api_exceptions.ResourceExhausted,
    api_exceptions.ServiceUnavailable,
    api_exceptions.Unknown,
)


def check_topic_name(topic: str) -> str:
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != "topics" or not parts[1] or not parts[3]:
        raise ValueError(f"Pub/Sub topic must be projects/PROJECT/topics/TOPIC, not {topic!r}")
    return topic


class PublishFailed(RuntimeError):
    """The event could not be published within the deadline; the instance must not be acked."""


class EventPublisher:
    """Publishes `BufferedInstance` events to one topic and waits for each to be accepted."""

    def __init__(self, topic: str, *, timeout_s: float = 20.0) -> None:
        from google.cloud import pubsub_v1

        self.topic = check_topic_name(topic)
        self.timeout_s = timeout_s
        # Small batches, short latency: each publish holds a C-STORE response.
        self._client = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(max_messages=100, max_latency=0.005)
        )
        self._retry = api_retry.Retry(
            predicate=api_retry.if_exception_type(*_RETRYABLE), initial=0.1, maximum=2.0, timeout=timeout_s
        )

    def publish(self, instance: BufferedInstance) -> str:
        """Publish the event; return its message ID once Pub/Sub has it, or raise PublishFailed."""
        return self.publish_data(instance.to_json(), instance.pubsub_attributes())

    def publish_data(self, data: bytes, attributes: Mapping[str, str]) -> str:
        """Publish any message (export messages, dead letters) the same way."""
        try:
            future = self._client.publish(self.topic, data, retry=self._retry, timeout=self.timeout_s, **attributes)
            return future.result(timeout=self.timeout_s + 5)
        except FutureTimeout:
            raise PublishFailed(f"publish not confirmed within {self.timeout_s:.0f} s") from None
        except api_exceptions.GoogleAPICallError as exc:
            raise PublishFailed(f"publish failed: {exc.__class__.__name__}") from None
        except Exception as exc:  # the client wraps transport errors in many shapes
            raise PublishFailed(f"publish failed: {exc.__class__.__name__}: {exc}") from None

    def topic_reachable(self, timeout_s: float = 5.0) -> bool:
        """For readiness: can we see the topic right now?"""
        try:
            self._client.get_topic(topic=self.topic, timeout=timeout_s, retry=None)
            return True
        except Exception as exc:  # any failure means "not ready"; the reason goes to the log
            log.warning("Pub/Sub topic not reachable", extra=fields(topic=self.topic, reason=type(exc).__name__))
            return False

    def close(self) -> None:
        self._client.stop()
