"""Export on one machine: the spool's exports/ folder as the durable queue, and the workers
that run the same fan-out and delivery code as `export_fanout` and `deliver` over it.

Layout under SPOOL/exports:
  notifications/NAME.json   store notifications not yet fanned out: {"data", "attributes"}
  queue/NAME~ID.json        one export message per instance and destination (ID: routing.Destination.id)
  dead/NAME~ID.json         dead letters: the record, with the message under "export"

Every entry is written to a temporary name, fsynced and renamed, so it survives a crash or a
restart. The upload process writes a notification before the uploaded instance leaves the
buffer (Uploader's on_stored), so no stored instance misses its export. A fan-out writes its
messages before it removes the notification, under names derived from it, so a repeated
fan-out rewrites the same entries rather than adding copies. Each queue entry is retried with
backoff until its destination takes it or rejects it for good; one destination's failures
never hold up another's entries.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dicom_adapter.buffers.spool import _write_durably, fsync_directory, read_record
from dicom_adapter.events import MalformedEvent, pubsub_cloud_event, utc_now
from dicom_adapter.export import Exporter, ExportMessage
from dicom_adapter.logs import fields
from dicom_adapter.notifications import (
    LOCAL_NOTIFICATIONS_SUBSCRIPTION,
    LOCAL_NOTIFICATIONS_TOPIC,
    local_notification,
)
from dicom_adapter.routing import Destination
from dicom_adapter.upload import TransientUploadError, result_or_exception

from edge_listener import metrics
from .dispatcher import attempt_outcome

log = logging.getLogger(__name__)

EXPORTS = "exports"
NOTIFICATIONS = "notifications"
QUEUE = "queue"
DEAD = "dead"
SUFFIX = ".json"
MARK = "~"


def _sop_instance_uid_of(name: str) -> str:
    """'<ns>-<uid>[~<id>].json' → uid."""
    return name.split(MARK)[0].removesuffix(SUFFIX).partition("-")[2]


class ExportSpool:
    """The exports/ folder of a spool directory."""

    def __init__(self, spool_root: Path | str) -> None:
        self.root = Path(spool_root).resolve() / EXPORTS
        self.notifications = self.root / NOTIFICATIONS
        self.queue = self.root / QUEUE
        self.dead = self.root / DEAD
        for folder in (self.notifications, self.queue, self.dead):
            folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _listing(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX))

    def add_notification(self, store: str, study: str, series: str, sop: str) -> Path:
        """Durably queue the notification the store would send for a new instance."""
        data, attributes = local_notification(store, study, series, sop)
        path = self.notifications / f"{time.time_ns():019d}-{sop}{SUFFIX}"
        _write_durably(path, json.dumps({"data": data.decode(), "attributes": attributes}).encode())
        return path

    def notification_event(self, path: Path) -> Any:
        """The CloudEvent `export_fanout` would get for a queued notification."""
        entry = read_record(path)
        if not isinstance(entry.get("data"), str):
            raise MalformedEvent(f"unreadable notification entry {path.name}")
        return pubsub_cloud_event(entry["data"].encode(), entry.get("attributes") or {}, topic=LOCAL_NOTIFICATIONS_TOPIC,
                                  subscription=LOCAL_NOTIFICATIONS_SUBSCRIPTION, message_id=path.stem)

    def fan_out(self, notification: Path, messages: list[ExportMessage]) -> list[Path]:
        """The notification's export messages into the queue, then the notification out."""
        entries = []
        for message in messages:
            entry = self.queue / f"{notification.stem}{MARK}{message.target.id}{SUFFIX}"
            _write_durably(entry, message.to_json())
            entries.append(entry)
        notification.unlink(missing_ok=True)
        fsync_directory(self.notifications)
        return entries

    def message(self, path: Path) -> ExportMessage:
        return ExportMessage.from_json(path.read_bytes())

    def dead_letter(self, path: Path, record: dict[str, Any]) -> None:
        """Move an entry aside with the record of why it cannot be delivered."""
        _write_durably(self.dead / path.name, json.dumps(record, indent=2).encode())
        path.unlink(missing_ok=True)
        fsync_directory(path.parent)

    def dead_letters(self) -> list[tuple[Path, dict[str, Any]]]:
        return [(path, read_record(path)) for path in self._listing(self.dead)]

    def redrive(self, sop_instance_uids: set[str] | None = None, destination: str | None = None) -> list[Path]:
        """Put dead export messages (all, or these UIDs and/or this destination label) back in the
        queue; dead notifications go back to notifications/."""
        moved = []
        for path, record in self.dead_letters():
            if sop_instance_uids and _sop_instance_uid_of(path.name) not in sop_instance_uids:
                continue
            if destination and record.get("destination") != destination:
                continue
            if isinstance(record.get("export"), dict):
                target = self.queue / path.name
                _write_durably(target, json.dumps(record["export"]).encode())
            elif isinstance(record.get("notification"), dict):
                target = self.notifications / path.name
                _write_durably(target, json.dumps(record["notification"]).encode())
            else:
                continue
            path.unlink()
            moved.append(target)
        if moved:
            fsync_directory(self.dead)
        return moved

    def status(self) -> dict[str, Any]:
        by_destination: dict[str, int] = {}
        for path in self._listing(self.queue):
            try:
                label = self.message(path).target.label
            except (MalformedEvent, OSError):
                label = "unreadable"
            by_destination[label] = by_destination.get(label, 0) + 1
        return {
            "exports_pending_notifications": len(self._listing(self.notifications)),
            "exports_queued": sum(by_destination.values()),
            "exports_queued_by_destination": by_destination,
            "exports_dead_letters": len(self._listing(self.dead)),
        }


@dataclass(frozen=True)
class ExportWorkerSettings:
    workers: int = 4
    retry_min_s: float = 1.0
    retry_max_s: float = 30.0
    scan_interval_s: float = 1.0
    max_unexpected_failures: int = 5


class ExportWorker:
    """Runs queued notifications through `fan_out` and queued messages through `deliver`,
    with at-least-once delivery and jittered exponential backoff per entry."""

    def __init__(self, spool: ExportSpool, exporter: Exporter, settings: ExportWorkerSettings) -> None:
        self.spool = spool
        self.exporter = exporter
        self.settings = settings
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="export")
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._in_flight: set[str] = set()
        self._due: dict[str, float] = {}  # entry → not before (after a failure)
        self._attempts: dict[str, int] = {}
        self._unexpected: dict[str, int] = {}
        self._scanner: threading.Thread | None = None

    def notify_stored(self, store: str, study: str, series: str, sop: str) -> None:
        """The store now holds an instance: queue its notification (durably) and wake up."""
        self.spool.add_notification(store, study, series, sop)
        self._wake.set()

    def start(self) -> None:
        self._scanner = threading.Thread(target=self._scan, name="export-scanner", daemon=True)
        self._scanner.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is in flight; everything else stays queued on disk."""
        self._stopping.set()
        self._wake.set()
        if self._scanner is not None:
            self._scanner.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _scan(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.settings.scan_interval_s)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                entries = [(p, self._fan_out) for p in self.spool._listing(self.spool.notifications)]
                entries += [(p, self._deliver) for p in self.spool._listing(self.spool.queue)]
            except OSError as exc:
                log.error("export queue could not be listed", extra=fields(reason=str(exc)))
                continue
            now = time.monotonic()
            for path, step in entries:
                with self._lock:
                    if path.name in self._in_flight or self._due.get(path.name, 0.0) > now:
                        continue
                    self._in_flight.add(path.name)
                self._pool.submit(self._run, path, step)

    def _run(self, path: Path, step: Callable[[Path, int], None]) -> None:
        name = path.name
        attempt = self._attempts.get(name, 0) + 1
        try:
            if path.exists():
                step(path, attempt)
            self._settle(name)
        except Exception as exc:
            if not isinstance(exc, TransientUploadError) and self._give_up(path, exc):
                self._settle(name)
                return
            delay = min(self.settings.retry_max_s, self.settings.retry_min_s * 2 ** (attempt - 1))
            delay = random.uniform(delay / 2, delay)
            log.info("export postponed", extra=fields(entry=name, delivery_attempt=attempt, retry_in_s=round(delay, 1), reason=str(exc)[:200]))
            with self._lock:
                self._attempts[name] = attempt
                self._due[name] = time.monotonic() + delay
                self._in_flight.discard(name)

    def _settle(self, name: str) -> None:
        with self._lock:
            self._attempts.pop(name, None)
            self._due.pop(name, None)
            self._unexpected.pop(name, None)
            self._in_flight.discard(name)
        self._wake.set()  # a fan-out's messages are ready now

    def _fan_out(self, path: Path, attempt: int) -> None:
        try:
            messages = self.exporter.fan_out(self.spool.notification_event(path))
        except MalformedEvent as exc:
            log.error("notification dead-lettered", extra=fields(entry=path.name, reason=str(exc)))
            self.spool.dead_letter(path, {"reason": str(exc), "dead_lettered_at": utc_now(), "notification": read_record(path)})
            metrics.count_dead_letter("export", "notification fan-out")
            return
        self.spool.fan_out(path, messages)

    def _deliver(self, path: Path, attempt: int) -> None:
        try:
            message = self.spool.message(path)
        except MalformedEvent as exc:
            log.error("export message dead-lettered", extra=fields(entry=path.name, reason=str(exc)))
            self.spool.dead_letter(path, {"reason": str(exc), "dead_lettered_at": utc_now()})
            metrics.count_dead_letter("export", "unreadable message")
            return
        started = time.monotonic()
        result = result_or_exception(self.exporter.deliver_cloud_event, message.cloud_event(), attempt)
        metrics.count_export(message.target.label, attempt_outcome(result), time.monotonic() - started)
        if getattr(result, "transcode_skipped", ""):
            metrics.count_transcode_skipped(message.target.label)
        if isinstance(result, Exception):
            raise result
        if result.outcome == "dead_lettered":
            self.spool.dead_letter(path, result.record or {"reason": "rejected"})
        else:
            path.unlink(missing_ok=True)

    def _give_up(self, path: Path, exc: Exception) -> bool:
        """An error that is not an outage (a bug, an answer we cannot read): a few more tries,
        then a dead letter with the error, rather than a loop for ever."""
        with self._lock:
            failures = self._unexpected[path.name] = self._unexpected.get(path.name, 0) + 1
        log.exception("export step failed unexpectedly", extra=fields(entry=path.name, failures=failures))
        if failures < self.settings.max_unexpected_failures:
            return False
        record: dict[str, Any] = {"reason": f"failed {failures} times with an unexpected error: {type(exc).__name__}", "dead_lettered_at": utc_now()}
        try:
            entry = read_record(path)
            record["export" if path.parent == self.spool.queue else "notification"] = entry
            if path.parent == self.spool.queue:
                record["destination"] = Destination.from_json(entry["destination"]).label
            self.spool.dead_letter(path, record)
        except (OSError, KeyError, ValueError):
            return False
        metrics.count_dead_letter("export", record.get("destination", "notification fan-out"))
        return True


def on_stored_hook(worker: ExportWorker, default_store: str) -> Callable[[Any, Destination], None]:
    """Uploader's on_stored for the local runtime: what reaches the store (the default store,
    where the Healthcare API would notify) is queued for export."""
    store = default_store.rstrip("/")

    def on_stored(instance: Any, destination: Destination) -> None:
        if destination.kind == "dicomweb" and destination.address == store:
            worker.notify_stored(store, instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid)

    return on_stored
