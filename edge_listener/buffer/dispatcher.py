"""The local stand-in for Pub/Sub: delivers spool queue entries to the upload code.

It hands each entry to the `stow_upload` code as the CloudEvent Pub/Sub would deliver, with
at-least-once delivery and jittered exponential backoff between deliveries that fail
transiently. Entries are announced as they arrive; entries left from an earlier run or put
back by `redrive` are found by scanning the queue folder. At most `max_pending` entries wait
in memory; the rest wait on disk for a later scan, so a huge backlog costs no memory.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import unquote

from cloudevents.http import CloudEvent
from dicom_adapter.buffers import open_buffered_object
from dicom_adapter.buffers.spool import Spool, SpoolObject
from dicom_adapter.events import (
    BufferedInstance,
    buffered_instance_cloud_event,
    utc_now,
)
from dicom_adapter.logs import fields
from dicom_adapter.part10 import MalformedDataset
from dicom_adapter.routing import DEFAULT_LABEL
from dicom_adapter.upload import TransientUploadError, redrive_command, result_or_exception

from edge_listener import metrics

log = logging.getLogger(__name__)

EventHandler = Callable[[CloudEvent, int], Any]
# Several deliveries at once; per delivery, its result or the exception it ended with.
BatchHandler = Callable[[list[tuple[CloudEvent, int]]], list[Any]]


@dataclass(frozen=True)
class DispatchSettings:
    workers: int = 4
    retry_min_s: float = 1.0
    retry_max_s: float = 30.0
    scan_interval_s: float = 10.0
    # How many entries may wait in memory; the rest wait on disk for the next scan.
    max_pending: int = 2000
    # Errors that are not store outages (bugs, unreadable answers) before an entry is dead-lettered.
    max_unexpected_failures: int = 5
    # A worker that finds a backlog takes up to this many due entries of one destination at
    # once (where a batch handler is given), as long as they add up to at most batch_max_bytes.
    batch_max: int = 16
    batch_max_bytes: int = 8 << 20
    batch_linger_s: float = 0.05


class Dispatcher:
    """Delivers spool entries to `handle(cloud_event, delivery_attempt)` with worker threads."""

    def __init__(
        self, spool: Spool, handle: EventHandler, settings: DispatchSettings, handle_batch: BatchHandler | None = None
    ) -> None:
        self.spool = spool
        self.handle = handle
        self.handle_batch = handle_batch
        self.settings = settings
        # One lock, three kinds of waiter, each woken only when it has something to do: with
        # one condition for all, every new entry woke every thread (measured: ~80 futex calls
        # and most of the upload process's system time per instance).
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)  # idle workers
        self._batch_grew = threading.Condition(self._lock)  # the worker gathering a batch
        self._scanner_wake = threading.Condition(self._lock)  # the periodic scanner
        # What the gathering worker still has room for: entries, and bytes (it is woken once
        # new entries would fill either).
        self._gather_need = 0
        self._gather_room = 0
        self._due: list[tuple[float, int, BufferedInstance]] = []  # heap by due time
        self._sequence = itertools.count()
        self._known: set[str] = set()  # entry names waiting in _due or being uploaded
        self._attempts: dict[str, int] = {}
        self._in_flight = 0
        self._gathering = False  # a worker is gathering a batch
        self._stopping = False
        self._overflowed = False
        self._unexpected: dict[str, int] = {}
        self._threads: list[threading.Thread] = []

    # --- feeding -------------------------------------------------------------------------

    def _push(self, instance: BufferedInstance, due: float) -> None:
        name = _entry_name(instance)
        if name in self._known:
            return
        self._known.add(name)
        heapq.heappush(self._due, (due, next(self._sequence), instance))
        if not self._gathering:
            self._work_ready.notify()
            return
        self._gather_room -= instance.size
        if len(self._due) >= self._gather_need or self._gather_room < 0:
            self._batch_grew.notify()  # enough to fill the batch; otherwise it waits for its linger

    def announce(self, instance: BufferedInstance) -> None:
        """A new entry is in the queue folder (the edge's notice, sent after the fsync)."""
        with self._lock:
            if len(self._due) >= self.settings.max_pending:
                self._overflowed = True  # it is safe on disk; a scan will find it
                return
            self._push(instance, time.monotonic())

    def _describe(self, name: str) -> BufferedInstance | None:
        path = self.spool.queue / name
        try:
            return self.spool.describe(path)
        except FileNotFoundError:
            return None  # uploaded meanwhile
        except MalformedDataset as exc:  # never uploadable as it is: aside, with the reason
            SpoolObject(path).dead_letter({"reason": f"unreadable spool entry: {exc}", "dead_lettered_at": utc_now()})
            log.error("unreadable spool entry moved to dead letters", extra=fields(entry=name, reason=str(exc)))
            metrics.count_dead_letter("upload", "unreadable entry")
            return None
        except OSError as exc:
            log.error("spool entry could not be read; will try again", extra=fields(entry=name, reason=str(exc)))
            return None

    def scan(self) -> int:
        """Queue every entry on disk that is not already waiting or in flight."""
        found = 0
        for path in self.spool.queued():
            with self._lock:
                if self._stopping or len(self._due) >= self.settings.max_pending:
                    self._overflowed = self._overflowed or not self._stopping
                    break
                if path.name in self._known:
                    continue
            instance = self._describe(path.name)
            if instance is not None:
                with self._lock:
                    self._push(instance, time.monotonic())
                found += 1
        return found

    # --- running -------------------------------------------------------------------------

    def start(self) -> None:
        recovered = self.scan()
        if recovered:
            log.info("recovered queued instances from the spool", extra=fields(count=recovered))
        for index in range(self.settings.workers):
            thread = threading.Thread(target=self._work, name=f"upload-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        scanner = threading.Thread(target=self._scan_periodically, name="spool-scanner", daemon=True)
        scanner.start()
        self._threads.append(scanner)

    def stop(self, timeout: float | None = None) -> None:
        """Let uploads in progress finish; leave everything not yet started in the spool."""
        with self._lock:
            self._stopping = True
            for condition in (self._work_ready, self._batch_grew, self._scanner_wake):
                condition.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _scan_periodically(self) -> None:
        last = time.monotonic()
        while True:
            with self._lock:
                if self._stopping:
                    return
                self._scanner_wake.wait(timeout=1.0)
                if self._stopping:
                    return
                overflow_drained = self._overflowed and len(self._due) < self.settings.max_pending // 2
            due = time.monotonic() - last >= self.settings.scan_interval_s
            if self.spool.take_rescan_request() or overflow_drained or due:
                with self._lock:
                    self._overflowed = False
                self.scan()
                last = time.monotonic()

    def _next(self) -> list[BufferedInstance]:
        """The next due entry, with the due entries behind it that can share its request;
        empty when stopping."""
        with self._lock:
            while not self._stopping:
                if self._due and not self._gathering:
                    wait = self._due[0][0] - time.monotonic()
                    if wait <= 0:
                        batch = self._gather([heapq.heappop(self._due)[2]])
                        self._in_flight += len(batch)
                        return batch
                    self._work_ready.wait(timeout=wait)
                else:
                    self._work_ready.wait()
            return []

    def _gather(self, batch: list[BufferedInstance]) -> list[BufferedInstance]:
        """Add the due entries that may share the first one's request. While other uploads are
        in flight, wait up to batch_linger_s for more to arrive (instances keep coming during a
        transfer): fewer, fuller requests cost the store and us less CPU per instance. With
        nothing in flight the entry goes at once, so a lone instance is never held back."""
        if self.handle_batch is None:
            return batch
        deadline = time.monotonic() + (self.settings.batch_linger_s if self._in_flight else 0.0)
        self._gathering = True  # idle workers leave new entries to this batch meanwhile
        try:
            while True:
                while (candidate := self._due_for(batch)) is not None and self._fits(batch, candidate):
                    batch.append(heapq.heappop(self._due)[2])
                remaining = deadline - time.monotonic()
                # A due entry of this destination that did not fit: the batch is as full as it gets.
                if candidate is not None or len(batch) >= self.settings.batch_max or self._stopping or remaining <= 0:
                    return batch
                self._gather_need = self.settings.batch_max - len(batch)
                self._gather_room = self.settings.batch_max_bytes - sum(instance.size for instance in batch)
                self._batch_grew.wait(timeout=remaining)
        finally:
            self._gathering = False
            if self._due:
                self._work_ready.notify()

    def _due_for(self, batch: list[BufferedInstance]) -> BufferedInstance | None:
        """The first waiting entry, if it is due and bound to the same destination as `batch`."""
        if not self._due:
            return None
        due, _, candidate = self._due[0]
        return candidate if due <= time.monotonic() and candidate.destination == batch[0].destination else None

    def _fits(self, batch: list[BufferedInstance], candidate: BufferedInstance) -> bool:
        """Whether `candidate` may join `batch` within the batch's count and byte limits."""
        return (
            len(batch) < self.settings.batch_max
            and sum(instance.size for instance in batch) + candidate.size <= self.settings.batch_max_bytes
        )

    def _work(self) -> None:
        while batch := self._next():
            attempts = [self._attempts.get(_entry_name(instance), 0) + 1 for instance in batch]
            started = time.monotonic()
            if len(batch) == 1:
                results: list[Any] = [result_or_exception(self.handle, buffered_instance_cloud_event(batch[0]), attempts[0])]
            else:
                assert self.handle_batch is not None
                events = [(buffered_instance_cloud_event(instance), attempt) for instance, attempt in zip(batch, attempts)]
                results = result_or_exception(self.handle_batch, events)
                if isinstance(results, Exception):  # the batch as a whole failed: each is retried
                    results = [results] * len(batch)
            seconds = time.monotonic() - started
            for instance, attempt, result in zip(batch, attempts, results):
                label = instance.destination_label or DEFAULT_LABEL
                metrics.count_upload(label, attempt_outcome(result), seconds)
                if getattr(result, "transcode_skipped", ""):
                    metrics.count_transcode_skipped(label)
                self._settle(instance, attempt, result)

    def _settle(self, instance: BufferedInstance, attempt: int, result: Any) -> None:
        """Done, or due again after a backoff, or (after repeated unexpected errors) dead-lettered."""
        name = _entry_name(instance)
        if not isinstance(result, Exception):
            self._finish(name)
            return
        if not isinstance(result, TransientUploadError) and self._give_up(name, instance, result):
            self._finish(name)
            return
        delay = self._backoff(attempt)
        log.info("upload postponed", extra=fields(sop_instance_uid=instance.sop_instance_uid, delivery_attempt=attempt, retry_in_s=round(delay, 1)))
        with self._lock:
            self._attempts[name] = attempt
            self._in_flight -= 1
            self._known.discard(name)
            self._push(instance, time.monotonic() + delay)

    def _finish(self, name: str) -> None:
        with self._lock:
            self._attempts.pop(name, None)
            self._unexpected.pop(name, None)
            self._known.discard(name)
            self._in_flight -= 1

    def _give_up(self, name: str, instance: BufferedInstance, exc: Exception) -> bool:
        """An error that is not a store outage (a bug, an answer we cannot read): retry a few
        times, then dead-letter the entry with the error rather than loop for ever."""
        with self._lock:
            failures = self._unexpected[name] = self._unexpected.get(name, 0) + 1
        log.error("upload failed unexpectedly", exc_info=exc, extra=fields(**instance.log_fields(), failures=failures))
        if failures < self.settings.max_unexpected_failures:
            return False
        record = {
            "reason": f"upload failed {failures} times with an unexpected error: {type(exc).__name__}",
            "store_said": str(exc)[:1000],
            "dead_lettered_at": utc_now(),
            "event": instance.log_fields() | {"buffer_uri": instance.buffer_uri},
            "redrive": redrive_command(instance),
        }
        try:
            open_buffered_object(instance.buffer_uri).dead_letter(record)
        except OSError:
            return False  # keep it queued; it is still safe on disk
        log.error("gave up on an upload; moved to dead letters", extra=fields(**instance.log_fields()))
        metrics.count_dead_letter("upload", instance.destination_label or DEFAULT_LABEL)
        return True

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.settings.retry_max_s, self.settings.retry_min_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


def attempt_outcome(result: Any) -> str:
    """The outcome label of an upload or export attempt: its result's, or what the exception
    it ended with means (a store outage is retried; anything else is an error)."""
    if isinstance(result, Exception):
        return "retried" if isinstance(result, TransientUploadError) else "error"
    return str(getattr(result, "outcome", "done"))


def _entry_name(instance: BufferedInstance) -> str:
    """The queue file's name: the same key whether the entry was announced or found by a scan."""
    return unquote(instance.buffer_uri.rpartition("/")[2])  # file:// and gs:// alike; no query parts

