"""Fetching the instances of a C-MOVE/C-GET from the store ahead of their C-STOREs.

A thread of its own fetches while the handler sends, so the store's latency and the
destination's overlap instead of adding up. When whole series are wanted (any level above
IMAGE) each series comes in ONE WADO-RS response (multipart/related, a part per instance, split
as it streams): against Orthanc 500 instances of 70 KB took 0.07 s that way and 0.8 s one
request each. Whatever a series response did not deliver (an instance added or removed since
the QIDO search, a part that is not a valid Part-10 file, a response cut off or refused) is
then asked for one instance at a time, so that each instance gets its own verdict.

A series planned by its count alone (qido.SeriesRef: its instances not searched for) takes
every instance its answer holds, each named by its own file meta; only when the answer brings
fewer than the count (cut off, damaged, an instance deleted since) is the series searched
instance by instance, and what is missing fetched one by one as above. So every instance still
gets its own verdict, and a failure its SOP Instance UID, without a search per instance first.

Bounded memory: at most DEPTH fetched instances wait for their C-STORE; an instance is held in
memory up to MEMORY_MAX bytes and staged on disk beyond that. Instances come in the store's
order, not the QIDO order; each instance is delivered exactly once.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

from dicom_adapter.dicomweb import ANY_TRANSFER_SYNTAX, DicomWebClient, DicomWebError
from dicom_adapter.logs import fields
from dicom_adapter.part10 import FileMeta, MalformedDataset, read_file_meta
from dicom_adapter.qido import InstanceRef, QueryError, SeriesRef

log = logging.getLogger(__name__)

MEMORY_MAX = 1 << 20  # an instance up to this size is kept in memory, a larger one on disk
DEPTH = 16  # fetched instances waiting for their C-STORE, at most

# The instances of a planned series, by an instance-level search (qido.resolve_instances).
SeriesResolver = Callable[[SeriesRef], list[InstanceRef]]


@dataclass
class _Group:
    """What one request to the store may deliver: the instances of one series (`refs`, or
    those the store counts in `series` when only that is known), or one instance."""

    refs: list[InstanceRef]
    series: SeriesRef | None = None


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

    @property
    def size(self) -> int:
        """Bytes of the Part-10 file (0 if it was not fetched)."""
        if self.content is None:
            return 0
        position = self.content.tell()
        size = self.content.seek(0, 2)
        self.content.seek(position)
        return size

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
    """The instances of a retrieval plan (InstanceRefs, and SeriesRefs whose instances are
    named as they arrive), fetched by a thread ahead of the consumer; iterate once, then
    `close()` (also early: it stops the fetching and removes what was fetched and not taken).
    `unnamed` then counts instances a series was counted with that could not even be named;
    `broken` says the fetching stopped on an unexpected error (see `unsent`)."""

    def __init__(
        self,
        client: DicomWebClient,
        plan: Sequence[InstanceRef | SeriesRef],
        staging_dir: Path,
        *,
        whole_series: bool,
        series_instances: SeriesResolver | None = None,
    ) -> None:
        self._client = client
        self._groups = _groups(plan, whole_series)
        self._staging_dir = staging_dir
        self._series_instances = series_instances
        self.unnamed = 0
        self.broken = False
        self._queue: queue.Queue[Fetched | None] = queue.Queue(maxsize=DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retrieve-fetch", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[Fetched]:
        while (fetched := self._queue.get()) is not None:
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

    def unsent(self, sent: set[InstanceRef]) -> list[InstanceRef]:
        """After `close()`, when the fetching did not run to its end (`broken`, or the consumer
        stopped): the plan's instances not in `sent`, planned series searched instance by
        instance; what a series was counted with and could not be named adds to `unnamed`."""
        missing: list[InstanceRef] = []
        sent_uids = {ref.sop_instance_uid for ref in sent}
        for group in self._groups:
            refs: list[InstanceRef] | None = group.refs
            if group.series is not None:
                refs = self._named(group.series)
                if refs is None:
                    uid = group.series.series_instance_uid
                    self.unnamed += max(0, group.series.instances - sum(1 for ref in sent if ref.series_instance_uid == uid))
                    continue
            missing.extend(ref for ref in refs if ref.sop_instance_uid not in sent_uids)
        return missing

    # -- the fetching thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            for group in self._groups:
                self._fetch_group(group)
        except _Stopped:
            pass
        except Exception as exc:  # a bug must not leave the sender waiting; the caller counts the rest
            self.broken = True
            log.error("retrieve fetcher failed", extra=fields(error=type(exc).__name__))
        finally:
            self._put_end()

    def _fetch_group(self, group: _Group) -> None:
        if group.series is None:
            delivered = self._series(group.refs[0], {ref.sop_instance_uid: ref for ref in group.refs}) if len(group.refs) > 1 else set()
            rest: list[InstanceRef] | None = group.refs
        else:
            delivered = self._series(group.series, None)
            if len(delivered) >= group.series.instances:
                return
            rest = self._named(group.series)
            if self._stop.is_set():
                raise _Stopped()
            if rest is None:  # the store cannot say which: counted as failed without a UID
                self.unnamed += group.series.instances - len(delivered)
                return
        for ref in rest:
            if ref.sop_instance_uid not in delivered:
                self._put(fetch_instance(self._client, ref, self._staging_dir, stop=self._stop))

    def _named(self, series: SeriesRef) -> list[InstanceRef] | None:
        """A planned series' instances by an instance-level search; None if the store fails."""
        if self._series_instances is None:
            return None
        try:
            return self._series_instances(series)
        except QueryError as exc:
            log.warning("series search failed", extra=fields(series_instance_uid=series.series_instance_uid, reason=exc.comment))
            return None

    def _series(self, series: InstanceRef | SeriesRef, wanted: dict[str, InstanceRef] | None) -> set[str]:
        """Fetch a series in one response; the SOP Instance UIDs delivered from it. `wanted`:
        the instances to take (others are ignored); None: every one, named by its file meta."""
        delivered: set[str] = set()
        sink: _Sink | None = None

        def deliver() -> None:
            nonlocal sink
            if sink is None:
                return
            fetched, sink = sink.finish(None), None
            meta = fetched.meta
            uid = meta.sop_instance_uid if meta is not None else None
            if wanted is None and meta is not None and uid and uid not in delivered:
                fetched.ref = InstanceRef(series.study_instance_uid, series.series_instance_uid, uid, meta.sop_class_uid)
                delivered.add(uid)
                self._put(fetched)
            elif wanted is not None and uid in wanted and uid not in delivered:
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

        first = series
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


def _groups(plan: Sequence[InstanceRef | SeriesRef], whole_series: bool) -> list[_Group]:
    """A group per planned series; the named instances per series when whole series are
    wanted, else one each."""
    groups: list[_Group] = []
    series: dict[tuple[str, str], _Group] = {}
    for item in plan:
        if isinstance(item, SeriesRef):
            groups.append(_Group([], item))
        elif not whole_series:
            groups.append(_Group([item]))
        else:
            key = (item.study_instance_uid, item.series_instance_uid)
            if key not in series:
                series[key] = _Group([])
                groups.append(series[key])
            series[key].refs.append(item)
    return groups
