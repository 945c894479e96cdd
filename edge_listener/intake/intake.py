"""Take one source into the buffer, or say why not: the step `import` and the watched folder share.

  source ──stage (copy, check, re-wrap if needed)──► ledger: seen this content? ──no──► sink.put
                                                                              └─yes─► already present
Nothing about the buffer is known here beyond `BufferSink`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from dicom_adapter.logs import fields

from edge_listener.buffer.buffering import BufferRefused
from .ledger import Ledger
from .sink import BufferSink, NotRoutable
from .sources import Source
from .staging import ALREADY_PRESENT, FAILED, IMPORTED, SKIPPED, NotAnInstance, stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    source: Source
    kind: str  # staging.IMPORTED | ALREADY_PRESENT | NOT_DICOM | FAILED | SKIPPED
    reason: str = ""
    sop_instance_uid: str = ""
    rewrapped: str = ""
    incomplete: bool = False
    log_reason: str = ""  # when `reason` may quote a file name, this is what the log says

    def report_entry(self) -> dict[str, str]:
        entry = {"source": self.source.label, "file_ref": self.source.ref, "outcome": self.kind, "reason": self.reason}
        if self.sop_instance_uid:
            entry["sop_instance_uid"] = self.sop_instance_uid
        return entry


class Intake:
    """Stages, de-duplicates and buffers sources; safe to call from many threads."""

    def __init__(self, sink: BufferSink, ledger: Ledger, *, use_fingerprints: bool = True, force: bool = False) -> None:
        self.sink = sink
        self.ledger = ledger
        self.use_fingerprints = use_fingerprints and not force
        self.force = force
        self._lock = threading.Lock()
        self._in_flight: set[tuple[str, str]] = set()
        settled = ledger.settle_pending()  # before the sweep: it looks for the staged copies
        if settled:
            log.info("an interrupted import had buffered more than its ledger said", extra=fields(count=settled))
        sink.sweep_stale()

    def take(self, source: Source, *, final: bool = True) -> Outcome:
        """Never raises: whatever goes wrong becomes the source's outcome (no silent drop).

        final=False: the caller will try again if the file turns out cut short (the watched
        folder, while a writer may still be at it), so that is not logged as a failure."""
        try:
            outcome = self._take(source)
        except Exception as exc:  # a bug, not a bad file; its message may quote a path: type only
            log.error("import failed unexpectedly", extra=fields(file_ref=source.ref, error=type(exc).__name__))
            return Outcome(source, FAILED, f"adapter error: {_describe(exc)}")
        if outcome.kind in (IMPORTED, ALREADY_PRESENT):
            return outcome
        if outcome.incomplete and not final:
            log.info("file looks cut short; waiting for the rest", extra=fields(file_ref=source.ref))
        else:
            # Our reasons name offsets and tags, never values; the file is named by its hash only.
            level = logging.INFO if outcome.kind == SKIPPED else logging.WARNING
            log.log(level, "file not imported", extra=fields(file_ref=source.ref, outcome=outcome.kind, reason=outcome.log_reason or outcome.reason))
        return outcome

    def _take(self, source: Source) -> Outcome:
        if source.problem:
            return self._refused(source, NotAnInstance(FAILED, source.problem, incomplete=source.incomplete))
        fingerprint = source.fingerprint if self.use_fingerprints else None
        if fingerprint is not None and self.ledger.has_source(fingerprint):
            return Outcome(source, ALREADY_PRESENT, "unchanged since an earlier import")
        try:
            with source.open() as stream:
                staged = stage(stream, self.sink.staging_dir)
        except NotAnInstance as refusal:
            return self._refused(source, refusal)
        except (OSError, EOFError, RuntimeError, NotImplementedError, ValueError) as exc:
            # zipfile raises these for a bad CRC, an unsupported compression, a cut archive;
            # their messages may quote member names, which stay out of the log.
            return self._refused(source, NotAnInstance(FAILED, f"cannot read: {_describe(exc)}"), log_reason=f"cannot read: {_safe(exc)}")
        uid, digest = staged.summary.sop_instance_uid, staged.dataset_sha256
        key = (uid, digest)
        with self._lock:
            duplicate = key in self._in_flight or (not self.force and self.ledger.has_instance(uid, digest))
            if not duplicate:
                self._in_flight.add(key)
        if duplicate:
            staged.discard()
            self.ledger.record(uid, digest, entry=None, fingerprint=fingerprint)
            return Outcome(source, ALREADY_PRESENT, "this instance (same UID and data set) was imported before", uid)
        try:
            self.ledger.begin(uid, digest, staged.path)
            events = self.sink.put(staged)
        except (OSError, BufferRefused, NotRoutable) as exc:
            staged.discard()
            self.ledger.abandon(uid, digest)
            reason = _safe(exc) if isinstance(exc, OSError) else str(exc)
            return self._refused(source, NotAnInstance(FAILED, f"not buffered: {reason}"), uid)
        finally:
            with self._lock:
                self._in_flight.discard(key)
        entry = events[0].buffer_uri.rsplit("/", 1)[-1]
        self.ledger.record(uid, digest, entry=entry, fingerprint=fingerprint)
        log.debug("imported", extra=fields(**events[0].log_fields(), file_ref=source.ref, copies=len(events), rewrapped=staged.rewrapped or None))
        return Outcome(source, IMPORTED, sop_instance_uid=uid, rewrapped=staged.rewrapped)

    def _refused(self, source: Source, refusal: NotAnInstance, uid: str = "", *, log_reason: str = "") -> Outcome:
        return Outcome(source, refusal.outcome, refusal.reason, uid, incomplete=refusal.incomplete, log_reason=log_reason)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _safe(exc: BaseException) -> str:
    """`_describe` without the message when it could name a file."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
