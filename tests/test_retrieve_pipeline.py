"""The retrieve pipeline (edge_listener/retrieve_fetch.py) against a fake store: every instance
asked for comes out exactly once whatever order, extras or damage the store's series answer
has; what a series answer does not deliver is fetched one by one; a failure becomes a reason;
closing early stops the fetching and leaves no staged file; large instances are staged on disk.
A series planned by its count alone is named by its answer, searched instance by instance only
when the answer comes up short. (A fake store: these are the answers a real one rarely gives.)"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from dicom_adapter.dicomweb import DicomWebError
from dicom_adapter.part10 import encode_file_meta
from dicom_adapter.qido import InstanceRef, QueryError, SeriesRef
from edge_listener.services import retrieve_fetch
from edge_listener.services.retrieve_fetch import Prefetcher

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
STUDY = "1.2.3"


def part10(sop: str, size: int = 100) -> bytes:
    meta = encode_file_meta(sop_class_uid=CT, sop_instance_uid=sop, transfer_syntax_uid=EXPLICIT, calling_aet="", called_aet="")
    return meta + bytes([len(sop) % 251]) * size


class Answer:
    """A streamed WADO-RS answer: parts of (headers, bytes), cut into small chunks; may fail
    after `fail_after` parts; counts the bytes it was read."""

    def __init__(self, parts: list[bytes], fail_after: int | None = None, pause: float = 0.0) -> None:
        self._parts, self._fail_after, self._pause = parts, fail_after, pause

    def parts(self, open_part):  # noqa: ANN001
        for number, data in enumerate(self._parts):
            if number == self._fail_after:
                raise DicomWebError("connection reset")
            write = open_part({"content-type": "application/dicom"})
            for start in range(0, len(data), 4096):
                time.sleep(self._pause)
                write(data[start : start + 4096])
        return len(self._parts)

    def copy_to(self, out) -> int:  # noqa: ANN001
        assert self.parts(lambda headers: out.write) == 1
        return len(self._parts[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class FakeStore:
    """series -> {sop: Part-10 bytes}; knobs for what the series answer does."""

    def __init__(self, series: dict[str, dict[str, bytes]]) -> None:
        self.series = series
        self.series_answer_extra: list[bytes] = []
        self.series_answer_drop: set[str] = set()
        self.series_fail_after: int | None = None
        self.broken: set[str] = set()  # instances whose single fetch fails
        self.pause = 0.0
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def retrieve_series(self, study: str, series: str, *, transfer_syntax: str = "*"):
        with self.lock:
            self.requests.append(f"series {series}")
        parts = [data for sop, data in self.series[series].items() if sop not in self.series_answer_drop]
        parts += self.series_answer_extra
        random.Random(7).shuffle(parts)
        return Answer(parts, self.series_fail_after, self.pause)

    def retrieve_instance(self, study: str, series: str, sop: str, *, transfer_syntax: str = "*"):
        with self.lock:
            self.requests.append(f"instance {sop}")
        if sop in self.broken:
            raise DicomWebError("HTTP 503 Service Unavailable", 503)
        data = self.series.get(series, {}).get(sop)
        return None if data is None else Answer([data], pause=self.pause)


def refs_of(store: FakeStore) -> list[InstanceRef]:
    return [InstanceRef(STUDY, series, sop, CT) for series, instances in store.series.items() for sop in instances]


def a_store(series: int = 2, per_series: int = 20, size: int = 100) -> FakeStore:
    return FakeStore({f"1.2.3.{s}": {f"1.2.3.{s}.{i}": part10(f"1.2.3.{s}.{i}", size) for i in range(per_series)} for s in range(series)})


def plan_of(store: FakeStore) -> list[SeriesRef]:
    return [SeriesRef(STUDY, series, len(instances)) for series, instances in store.series.items()]


def run(store: FakeStore, refs: list, staging: Path, whole_series: bool = True, series_instances=None) -> dict[str, tuple[bytes | None, str]]:  # noqa: ANN001
    got: dict[str, tuple[bytes | None, str]] = {}
    fetcher = Prefetcher(store, refs, staging, whole_series=whole_series, series_instances=series_instances)  # type: ignore[arg-type]
    try:
        for fetched in fetcher:
            uid = fetched.ref.sop_instance_uid
            assert uid not in got, "delivered twice"
            data = None
            if fetched.meta is not None:
                fetched.content.seek(0)
                data = fetched.content.read()
                assert fetched.meta.sop_instance_uid == uid
            got[uid] = (data, fetched.reason)
            fetched.discard()
    finally:
        fetcher.close()
    return got


def test_every_instance_once_in_any_order_and_extras_ignored(tmp_path: Path):
    store = a_store()
    store.series_answer_extra = [part10("9.9.9"), b"not a DICOM file at all" * 10]
    got = run(store, refs_of(store), tmp_path)
    expected = {sop: data for instances in store.series.values() for sop, data in instances.items()}
    assert {uid: data for uid, (data, _) in got.items()} == expected
    assert sorted(store.requests) == ["series 1.2.3.0", "series 1.2.3.1"], "one request per series"
    assert list(tmp_path.iterdir()) == []


def test_what_a_series_answer_lacks_is_fetched_one_by_one(tmp_path: Path):
    store = a_store()
    store.series_answer_drop = {"1.2.3.0.3", "1.2.3.1.7"}
    refs = refs_of(store) + [InstanceRef(STUDY, "1.2.3.1", "1.2.3.1.99", CT)]  # gone from the store since the QIDO search
    got = run(store, refs, tmp_path)
    assert len(got) == len(refs)
    assert got["1.2.3.0.3"][0] == store.series["1.2.3.0"]["1.2.3.0.3"]
    assert got["1.2.3.1.99"] == (None, "not in the store")
    assert "instance 1.2.3.0.3" in store.requests and "instance 1.2.3.1.7" in store.requests


def test_a_series_answer_cut_off_falls_back_and_a_failed_fetch_is_a_reason(tmp_path: Path):
    store = a_store()
    store.series_fail_after = 5
    store.series_answer_drop = store.broken = {"1.2.3.1.11"}  # so that it is fetched on its own
    got = run(store, refs_of(store), tmp_path)
    assert len(got) == 40
    failed = {uid: reason for uid, (data, reason) in got.items() if data is None}
    assert list(failed) == ["1.2.3.1.11"]
    assert "503" in failed["1.2.3.1.11"]
    assert list(tmp_path.iterdir()) == []


def test_image_level_fetches_one_by_one(tmp_path: Path):
    store = a_store(series=1, per_series=3)
    run(store, refs_of(store), tmp_path, whole_series=False)
    assert all(request.startswith("instance ") for request in store.requests)


def test_large_instances_are_staged_on_disk_and_removed(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(retrieve_fetch, "MEMORY_MAX", 1000)
    store = a_store(series=1, per_series=4, size=5000)
    fetcher = Prefetcher(store, refs_of(store), tmp_path, whole_series=True)  # type: ignore[arg-type]
    try:
        for fetched in fetcher:
            assert fetched.path is not None and fetched.path.parent == tmp_path
            assert fetched.data_set().read() == store.series["1.2.3.0"][fetched.ref.sop_instance_uid][fetched.meta.dataset_offset :]
            fetched.discard()
            assert not fetched.path.exists()
    finally:
        fetcher.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("whole_series", [True, False])
def test_closing_early_stops_the_fetching(tmp_path: Path, monkeypatch, whole_series: bool):
    monkeypatch.setattr(retrieve_fetch, "DEPTH", 2)
    monkeypatch.setattr(retrieve_fetch, "MEMORY_MAX", 1000)  # some staged on disk: they must go too
    store = a_store(series=2, per_series=50, size=5000)
    store.pause = 0.001
    fetcher = Prefetcher(store, refs_of(store), tmp_path, whole_series=whole_series)  # type: ignore[arg-type]
    taken = 0
    for fetched in fetcher:
        fetched.discard()
        taken += 1
        if taken == 3:
            break
    fetcher.close()
    requests = len(store.requests)
    time.sleep(0.2)
    assert len(store.requests) == requests, "still fetching after close"
    assert requests <= (2 if whole_series else 3 + 2 + 2)
    assert list(tmp_path.iterdir()) == []


class Searches:
    """The instance-level search of a planned series (qido.resolve_instances), recorded; the
    store's current instances, or a QueryError when `fails`."""

    def __init__(self, store: FakeStore, fails: bool = False) -> None:
        self.store, self.fails, self.asked = store, fails, []

    def __call__(self, series: SeriesRef) -> list[InstanceRef]:
        self.asked.append(series.series_instance_uid)
        if self.fails:
            raise QueryError(0xA700, "store unavailable: HTTP 503")
        return [InstanceRef(STUDY, series.series_instance_uid, sop, CT) for sop in self.store.series[series.series_instance_uid]]


def test_a_planned_series_is_named_by_its_answer_without_a_search(tmp_path: Path):
    store = a_store()
    store.series_answer_extra = [b"not a DICOM file at all" * 10]
    searches = Searches(store)
    fetcher = Prefetcher(store, plan_of(store), tmp_path, whole_series=True, series_instances=searches)  # type: ignore[arg-type]
    try:
        refs = []
        for fetched in fetcher:
            refs.append(fetched.ref)
            assert fetched.meta is not None and fetched.meta.sop_instance_uid == fetched.ref.sop_instance_uid
            fetched.discard()
    finally:
        fetcher.close()
    assert sorted(refs, key=str) == sorted(refs_of(store), key=str), "every instance once, with its series and SOP class"
    assert searches.asked == [] and sorted(store.requests) == ["series 1.2.3.0", "series 1.2.3.1"]
    assert fetcher.unnamed == 0 and list(tmp_path.iterdir()) == []


def test_a_planned_series_that_comes_up_short_is_searched_and_the_rest_fetched_one_by_one(tmp_path: Path):
    store = a_store()
    store.series_fail_after = 5  # cut off: the second series too
    store.series_answer_drop = store.broken = {"1.2.3.1.11"}
    searches = Searches(store)
    got = run(store, plan_of(store), tmp_path, series_instances=searches)
    assert len(got) == 40
    assert sorted(searches.asked) == ["1.2.3.0", "1.2.3.1"]
    failed = {uid: reason for uid, (data, reason) in got.items() if data is None}
    assert list(failed) == ["1.2.3.1.11"] and "503" in failed["1.2.3.1.11"]
    expected = {sop: data for instances in store.series.values() for sop, data in instances.items()}
    assert {uid: data for uid, (data, _) in got.items() if data is not None} == {uid: data for uid, data in expected.items() if uid != "1.2.3.1.11"}


def test_a_planned_series_the_store_cannot_name_is_counted_unnamed(tmp_path: Path):
    store = a_store(series=1)
    store.series_fail_after = 6
    searches = Searches(store, fails=True)
    fetcher = Prefetcher(store, plan_of(store), tmp_path, whole_series=True, series_instances=searches)  # type: ignore[arg-type]
    try:
        delivered = [fetched for fetched in fetcher]
        for fetched in delivered:
            fetched.discard()
    finally:
        fetcher.close()
    assert len(delivered) == 5 and fetcher.unnamed == 15  # the part under way when the answer broke is not taken


def test_what_a_consumer_stopped_before_is_named_for_the_failed_list(tmp_path: Path):
    store = a_store()
    searches = Searches(store)
    fetcher = Prefetcher(store, plan_of(store), tmp_path, whole_series=True, series_instances=searches)  # type: ignore[arg-type]
    sent = set()
    for fetched in fetcher:
        sent.add(fetched.ref)
        fetched.discard()
        if len(sent) == 7:
            break
    fetcher.close()
    unsent = fetcher.unsent(sent)
    assert len(unsent) == 33 and not sent & set(unsent)
    assert {ref.sop_instance_uid for ref in unsent} | {ref.sop_instance_uid for ref in sent} == {ref.sop_instance_uid for ref in refs_of(store)}
    assert fetcher.unnamed == 0 and list(tmp_path.iterdir()) == []
