"""A small Pub/Sub server for machines without Google's emulator (a plain Debian).

It speaks the real gRPC wire protocol of google.pubsub.v1 to the real google-cloud-pubsub
client: the request and response messages are the client's own `google.pubsub_v1.types`, and
the method paths are those of the client's transport method table. It serves what the
adapter and the tests use: topics (create, get, publish) and push subscriptions (create, get)
that POST each message to the endpoint in Pub/Sub's push format, redeliver with the retry
policy's backoff until a 2xx answer, and after `max_delivery_attempts` forward the message to
the dead-letter topic (with CloudPubSubDeadLetterSourceDeliveryCount), as Pub/Sub does.
Pull subscriptions are not served (UNIMPLEMENTED).

Run as a process: python -m support.pubsub_fake --port PORT
"""

from __future__ import annotations

import argparse
import base64
import json
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import grpc
import requests
from google.pubsub_v1 import types


@dataclass
class Subscription:
    proto: types.Subscription
    queue: list[tuple[float, types.PubsubMessage, int]] = field(default_factory=list)  # (due, message, attempts so far)


class PubSubFake:
    def __init__(self) -> None:
        self.topics: dict[str, types.Topic] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.lock = threading.Condition()
        self.session = requests.Session()

    # --- Publisher ---------------------------------------------------------------------------

    def create_topic(self, request: types.Topic, context: grpc.ServicerContext) -> types.Topic:
        with self.lock:
            if request.name in self.topics:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"Topic already exists: {request.name}")
            self.topics[request.name] = request
        return request

    def get_topic(self, request: types.GetTopicRequest, context: grpc.ServicerContext) -> types.Topic:
        with self.lock:
            topic = self.topics.get(request.topic)
        if topic is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Topic not found: {request.topic}")
        return topic

    def publish(self, request: types.PublishRequest, context: grpc.ServicerContext) -> types.PublishResponse:
        with self.lock:
            if request.topic not in self.topics:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Topic not found: {request.topic}")
            ids = [self._enqueue(request.topic, message) for message in request.messages]
        return types.PublishResponse(message_ids=ids)

    def _enqueue(self, topic: str, message: types.PubsubMessage, attributes: dict[str, str] | None = None) -> str:
        stamped = types.PubsubMessage(
            data=message.data,
            attributes={**dict(message.attributes), **(attributes or {})},
            message_id=uuid.uuid4().hex[:16],
            publish_time=datetime.now(timezone.utc),
        )
        for subscription in self.subscriptions.values():
            if subscription.proto.topic == topic:
                subscription.queue.append((time.monotonic(), stamped, 0))
        self.lock.notify_all()
        return stamped.message_id

    # --- Subscriber --------------------------------------------------------------------------

    def create_subscription(self, request: types.Subscription, context: grpc.ServicerContext) -> types.Subscription:
        with self.lock:
            if request.name in self.subscriptions:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"Subscription already exists: {request.name}")
            if request.topic not in self.topics:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Topic not found: {request.topic}")
            self.subscriptions[request.name] = Subscription(request)
        return request

    def get_subscription(self, request: types.GetSubscriptionRequest, context: grpc.ServicerContext) -> types.Subscription:
        with self.lock:
            subscription = self.subscriptions.get(request.subscription)
        if subscription is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Subscription not found: {request.subscription}")
        return subscription.proto

    # --- push delivery -----------------------------------------------------------------------

    def deliver_forever(self) -> None:
        while True:
            with self.lock:
                due = self._next_due()
                if due is None:
                    self.lock.wait(0.5)
                    continue
                subscription, message, attempts = due
            self._push(subscription, message, attempts + 1)

    def _next_due(self) -> tuple[Subscription, types.PubsubMessage, int] | None:
        now = time.monotonic()
        for subscription in self.subscriptions.values():
            if not subscription.proto.push_config.push_endpoint:
                continue
            for index, (due, message, attempts) in enumerate(subscription.queue):
                if due <= now:
                    del subscription.queue[index]
                    return subscription, message, attempts
        return None

    def _push(self, subscription: Subscription, message: types.PubsubMessage, attempt: int) -> None:
        proto = subscription.proto
        body: dict[str, Any] = {
            "message": {
                "data": base64.b64encode(message.data).decode(),
                "attributes": dict(message.attributes),
                "messageId": message.message_id,
                "publishTime": message.publish_time.isoformat().replace("+00:00", "Z"),
            },
            "subscription": proto.name,
        }
        if proto.dead_letter_policy.dead_letter_topic:
            body["deliveryAttempt"] = attempt
        try:
            ok = self.session.post(proto.push_config.push_endpoint, json=body, timeout=proto.ack_deadline_seconds or 10).ok
        except requests.RequestException:
            ok = False
        if ok:
            return
        with self.lock:
            policy = proto.dead_letter_policy
            if policy.dead_letter_topic and attempt >= (policy.max_delivery_attempts or 5):
                if policy.dead_letter_topic in self.topics:
                    self._enqueue(policy.dead_letter_topic, message, {"CloudPubSubDeadLetterSourceDeliveryCount": str(attempt)})
                return
            backoff = _backoff(proto.retry_policy, attempt)
            subscription.queue.append((time.monotonic() + backoff, message, attempt))


def _backoff(policy: types.RetryPolicy, attempt: int) -> float:
    low = policy.minimum_backoff.total_seconds() if policy.minimum_backoff else 10.0
    high = policy.maximum_backoff.total_seconds() if policy.maximum_backoff else 600.0
    return min(high, low * 2 ** (attempt - 1))


def _unary(handler: Callable, request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(handler, request_deserializer=request_type.deserialize, response_serializer=response_type.serialize)


def serve(port: int) -> None:
    fake = PubSubFake()
    publisher = {
        "CreateTopic": _unary(fake.create_topic, types.Topic, types.Topic),
        "GetTopic": _unary(fake.get_topic, types.GetTopicRequest, types.Topic),
        "Publish": _unary(fake.publish, types.PublishRequest, types.PublishResponse),
    }
    subscriber = {
        "CreateSubscription": _unary(fake.create_subscription, types.Subscription, types.Subscription),
        "GetSubscription": _unary(fake.get_subscription, types.GetSubscriptionRequest, types.Subscription),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("google.pubsub.v1.Publisher", publisher),
        grpc.method_handlers_generic_handler("google.pubsub.v1.Subscriber", subscriber),
    ))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    threading.Thread(target=fake.deliver_forever, name="push", daemon=True).start()
    print(json.dumps({"serving": port}), flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    serve(parser.parse_args().port)
