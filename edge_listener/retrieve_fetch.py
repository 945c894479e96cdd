"""Fetching the instances of a C-MOVE/C-GET from the store ahead of their C-STOREs.

A thread of its own fetches while the handler sends, so the store's latency and the
destination's overlap instead of adding up. When whole series are wanted (any level above
IMAGE) each series comes in ONE WADO-RS response (multipart/related, a part per instance, split
as it streams): against Orthanc 500 instances of 70 KB took 0.07 s that way and 0.8 s one
request each. Whatever a series response did not deliver (an instance added or removed since
the QIDO search, a part that is not a valid Part-10 file, a response cut off or refused) is
then asked for one instance at a time, so that each instance gets its own verdict.

Bounded memory: at most DEPTH fetched instances wait for their C-STORE; an instance is held in
memory up to MEMORY_MAX bytes and staged on disk beyond that. Instances come in the store's
order, not the QIDO order; each ref is delivered exactly once.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO, Iterator

from dicom_adapter.dicomweb import ANY_TRANSFER_SYNTAX, DicomWebClient, DicomWebError
from dicom_adapter.logs import fields
from dicom_adapter.part10 import FileMeta, MalformedDataset, read_file_meta
from dicom_adapter.qido import InstanceRef

log = logging.getLogger(__name__)

MEMORY_MAX = 1 << 20  # an instance up to this size is kept in memory, a larger one on disk
DEPTH = 16  # fetched instances waiting for their C-STORE, at most


class _Stopped(Exception):
    """The retrieval was cancelled or is over: stop reading the store's response."""


@dataclass
class Fetched:
    """One instance for its C-STORE: the Part-10 bytes and their file meta, or why not."""

    ref: InstanceRef
    meta: FileMeta | None = None
    content: BinaryIO | None = None  # the Part-10 file: in memory, or the staged file
    path: Path | None = None  # the staged file, if on disk
    reason: str = ""  # why it could not be fetched; "" when it was

    def data_set(self) -> BinaryIO:
        """The content positioned at the data set (after the file meta)."""
        assert self.content is not None and self.meta is not None
        self.content.seek(self.meta.dataset_offset)
        return self.content

    def discard(self) -> None:
        if self.content is not None:
            self.content.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class _Sink:
    """One instance's bytes as they arrive: in memory up to MEMORY_MAX, then in a staged file."""

    def __init__(self, staging_dir: Path, stop: threading.Event) -> None:
        self._staging_dir = staging_dir
        self._stop = stop
        self.content: BinaryIO = BytesIO()
        self.path: Path | None = None

    def write(self, data: bytes) -> None:
        if self._stop.is_set():
            raise _Stopped()
        if self.path is None and self.content.tell() + len(data) > MEMORY_MAX:
            self.path = self._staging_dir / f"{uuid.uuid4().hex}.dcm"
            staged = open(self.path, "w+b")
            staged.write(self.content.getvalue())  # type: ignore[attr-defined]
            self.content = staged
        self.content.write(data)

    def finish(self, ref: InstanceRef | None) -> Fetched:
        """The instance, its file meta read; `ref` None: the caller matches it by its UID."""
        fetched = Fetched(ref, content=self.content, path=self.path)  # type: ignore[arg-type]
        try:
            self.content.seek(0)
            fetched.meta = read_file_meta(self.content)
        except (MalformedDataset, OSError) as exc:
            fetched.discard()
            fetched.content = fetched.meta = None
            fetched.reason = f"fetch failed: {getattr(exc, 'reason', None) or type(exc).__name__}"
        return fetched

    def abandon(self) -> None:
        self.content.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def fetch_instance(
    client: DicomWebClient, ref: InstanceRef, staging_dir: Path, transfer_syntax: str = ANY_TRANSFER_SYNTAX,
    stop: threading.Event | None = None,
) -> Fetched:
    """WADO-RS one instance (as stored, or converted to `transfer_syntax`)."""
    sink = _Sink(staging_dir, stop or threading.Event())
    try:
        retrieved = client.retrieve_instance(
            ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid, transfer_syntax=transfer_syntax
        )
        if retrieved is None:
            sink.abandon()
            return Fetched(ref, reason="not in the store")
        with retrieved:
            retrieved.copy_to(sink)
    except (DicomWebError, OSError, ValueError) as exc:
        sink.abandon()
        return Fetched(ref, reason=f"fetch failed: {getattr(exc, 'reason', None) or type(exc).__name__}")
    return sink.finish(ref)


class Prefetcher:
    """The instances of `refs`, fetched by a thread ahead of the consumer; iterate once, then
    `close()` (also early: it stops the fetching and removes what was fetched and not taken)."""

    def __init__(self, client: DicomWebClient, refs: list[InstanceRef], staging_dir: Path, *, whole_series: bool) -> None:
        self._client = client
        self._refs = refs
        self._staging_dir = staging_dir
        self._whole_series = whole_series
        self._queue: queue.Queue[Fetched | None] = queue.Queue(maxsize=DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retrieve-fetch", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[Fetched]:
        given: set[str] = set()
        while len(given) < len(self._refs):
            fetched = self._queue.get()
            if fetched is None:  # the fetcher ended early (it should not): the rest failed
                for ref in self._refs:
                    if ref.sop_instance_uid not in given:
                        given.add(ref.sop_instance_uid)
                        yield Fetched(ref, reason="fetch stopped")
                return
            given.add(fetched.ref.sop_instance_uid)
            yield fetched

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive() or not self._queue.empty():
            try:
                fetched = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if fetched is not None:
                fetched.discard()
        self._thread.join()

    # -- the fetching thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            for group in self._groups():
                delivered = self._series(group) if len(group) > 1 else set()
                for ref in group:
                    if ref.sop_instance_uid not in delivered:
                        self._put(fetch_instance(self._client, ref, self._staging_dir, stop=self._stop))
        except _Stopped:
            pass
        except Exception as exc:  # a bug must not leave the sender waiting
            log.error("retrieve fetcher failed", extra=fields(error=type(exc).__name__))
        finally:
            self._put_end()

    def _groups(self) -> list[list[InstanceRef]]:
        """Per series when whole series are wanted, else one instance each."""
        if not self._whole_series:
            return [[ref] for ref in self._refs]
        series: dict[tuple[str, str], list[InstanceRef]] = defaultdict(list)
        for ref in self._refs:
            series[(ref.study_instance_uid, ref.series_instance_uid)].append(ref)
        return list(series.values())

    def _series(self, group: list[InstanceRef]) -> set[str]:
        """Fetch a series in one response; the SOP Instance UIDs delivered from it."""
        wanted = {ref.sop_instance_uid: ref for ref in group}
        delivered: set[str] = set()
        sink: _Sink | None = None

        def deliver() -> None:
            nonlocal sink
            if sink is None:
                return
            fetched, sink = sink.finish(None), None
            uid = fetched.meta.sop_instance_uid if fetched.meta is not None else None
            if uid in wanted and uid not in delivered:
                fetched.ref = wanted[uid]
                delivered.add(uid)
                self._put(fetched)
            else:  # not asked for, a repeat, or not Part-10: the one-by-one pass decides
                fetched.discard()

        def open_part(headers: dict[str, str]):  # type: ignore[no-untyped-def]
            nonlocal sink
            deliver()
            sink = _Sink(self._staging_dir, self._stop)
            return sink.write

        first = group[0]
        try:
            retrieved = self._client.retrieve_series(first.study_instance_uid, first.series_instance_uid)
            if retrieved is None:
                return delivered
            with retrieved:
                retrieved.parts(open_part)
            deliver()
        except (DicomWebError, OSError, ValueError) as exc:
            if sink is not None:
                sink.abandon()
            log.warning(
                "series retrieval failed; fetching its instances one by one",
                extra=fields(series_instance_uid=first.series_instance_uid, reason=getattr(exc, "reason", None) or type(exc).__name__),
            )
        except _Stopped:
            if sink is not None:
                sink.abandon()
            raise
        return delivered

    def _put(self, fetched: Fetched | None) -> None:
        """Hand an instance (None: the end) to the consumer; _Stopped once it is gone."""
        while not self._stop.is_set():
            try:
                self._queue.put(fetched, timeout=0.05)
                return
            except queue.Full:
                continue
        if fetched is not None:
            fetched.discard()
        raise _Stopped()

    def _put_end(self) -> None:
        try:
            self._put(None)
        except _Stopped:
            pass
