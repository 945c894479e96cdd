"""QIDO-RS requests made in parallel: in_order keeps the order and stops early; a whole study
is resolved one series per search (two at once), with every instance once; a small first page
(C-FIND's first Pending sooner) and full pages after it return every match once."""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse

import pytest
import requests
from pydicom.dataset import Dataset

from dicom_adapter import qido
from dicom_adapter.dicomweb import DicomWebAddress, DicomWebClient, first_page_limits, in_order
from dicom_adapter.qido import InstanceRef


def test_in_order_keeps_the_order_and_runs_calls_at_once():
    running, most = 0, 0
    lock = threading.Lock()

    def slow(n: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02 if n % 2 == 0 else 0.005)
        with lock:
            running -= 1
        return n * n

    assert list(in_order(slow, range(8), 2)) == [n * n for n in range(8)]
    assert most == 2


def test_in_order_stops_asking_when_the_consumer_stops():
    asked: list[int] = []
    results = in_order(lambda n: asked.append(n) or n, iter(range(100)), 3)
    assert [next(results), next(results)] == [0, 1]
    results.close()
    time.sleep(0.05)
    assert len(asked) <= 5


class FakeStore:
    def __init__(self, series: dict[str, list[str]]) -> None:
        self.series = series
        self.searches: list[tuple[str, str | None, str | None]] = []

    def search_for_series(self, study, params=None, *, page_size=500):  # noqa: ANN001
        self.searches.append(("series", study, None))
        return iter([{"0020000E": {"vr": "UI", "Value": [uid]}} for uid in self.series])

    def search_for_instances(self, study=None, series=None, params=None, *, page_size=500):  # noqa: ANN001
        self.searches.append(("instances", study, series))
        chosen = [series] if series else list(self.series)
        return iter(
            [{"00080018": {"vr": "UI", "Value": [sop]}, "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
              **({} if series else {"0020000E": {"vr": "UI", "Value": [uid]}})}
             for uid in chosen for sop in self.series[uid]]
        )


def _move(**keys: str) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_a_study_is_resolved_series_by_series():
    store = FakeStore({"1.1": ["1.1.1", "1.1.2"], "1.2": ["1.2.1"], "1.3": ["1.3.1", "1.3.2"]})
    refs = list(qido.resolve_instances(store, _move(QueryRetrieveLevel="STUDY", StudyInstanceUID="9.9"), qido.STUDY_ROOT))  # type: ignore[arg-type]
    assert refs == [InstanceRef("9.9", series, sop, "1.2.840.10008.5.1.4.1.1.2") for series, sops in store.series.items() for sop in sops]
    assert store.searches[0] == ("series", "9.9", None)
    assert sorted(store.searches[1:]) == [("instances", "9.9", "1.1"), ("instances", "9.9", "1.2"), ("instances", "9.9", "1.3")]


def test_a_one_series_study_and_a_series_take_one_instance_search():
    store = FakeStore({"1.1": ["1.1.1", "1.1.2"]})
    assert len(list(qido.resolve_instances(store, _move(QueryRetrieveLevel="STUDY", StudyInstanceUID="9.9"), qido.STUDY_ROOT))) == 2  # type: ignore[arg-type]
    assert store.searches == [("series", "9.9", None), ("instances", "9.9", None)]
    store.searches.clear()
    move = _move(QueryRetrieveLevel="SERIES", StudyInstanceUID="9.9", SeriesInstanceUID="1.1")
    assert len(list(qido.resolve_instances(store, move, qido.STUDY_ROOT))) == 2  # type: ignore[arg-type]
    assert store.searches == [("instances", "9.9", "1.1")]


def test_a_plan_without_counts_from_the_store_names_the_instances():
    """A store whose series answers lack NumberOfSeriesRelatedInstances: the plan falls back to
    naming every instance, so the remaining counts are still known before the first C-STORE."""
    store = FakeStore({"1.1": ["1.1.1", "1.1.2"], "1.2": ["1.2.1"]})
    plan = list(qido.plan_retrieval(store, _move(QueryRetrieveLevel="STUDY", StudyInstanceUID="9.9"), qido.STUDY_ROOT))  # type: ignore[arg-type]
    assert plan == list(qido.resolve_instances(store, _move(QueryRetrieveLevel="STUDY", StudyInstanceUID="9.9"), qido.STUDY_ROOT))  # type: ignore[arg-type]
    assert len(plan) == 3 and all(isinstance(item, InstanceRef) for item in plan)


class _PagedStudies(http.server.BaseHTTPRequestHandler):
    """A QIDO-RS /studies that answers limit/offset windows of `total` studies over HTTP and
    records the windows asked for."""

    total = 0
    asked: list[tuple[int, int]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        limit, offset = int(query["limit"][0]), int(query["offset"][0])
        type(self).asked.append((offset, limit))
        page = [{"0020000D": {"vr": "UI", "Value": [f"1.2.{n}"]}} for n in range(offset, min(offset + limit, self.total))]
        if not page:
            self.send_response(204)
            self.end_headers()
            return
        body = json.dumps(page).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("total", [0, 3, 25, 26, 124, 125, 524, 525, 1024, 1025, 2600])
def test_growing_pages_then_full_pages_in_parallel_return_every_match_once(total: int):
    _PagedStudies.total, _PagedStudies.asked = total, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PagedStudies)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = DicomWebClient(DicomWebAddress(f"http://127.0.0.1:{server.server_port}/dicom-web"), requests.Session(),
                                retry_status_codes=frozenset(), pages_in_flight=2, first_page_size=25)
        uids = [item["0020000D"]["Value"][0] for item in client.search_for_studies(page_size=500)]
    finally:
        server.shutdown()
        server.server_close()
    assert uids == [f"1.2.{n}" for n in range(total)]
    asked = _PagedStudies.asked
    ramp = [(0, 25), (25, 100), (125, 400), (525, 500)]  # each alone
    assert first_page_limits(25, 500) == [25, 100, 400, 500]
    if total < 1025:  # the answer ends within the pages asked for alone: not one page too many
        assert asked == [window for window in ramp if window[0] <= total]
        return
    assert asked[:4] == ramp
    later = sorted(asked[4:])  # then two at a time: at most one more than needed
    assert later[0] == (1025, 500) and all(limit == 500 for _, limit in later)
    assert [offset for offset, _ in later] == list(range(1025, 1025 + 500 * len(later), 500))
    needed = (total - 1025) // 500 + 1
    assert needed <= len(later) <= needed + 1
