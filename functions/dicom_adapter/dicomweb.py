"""A small DICOMweb client: STOW-RS of Part-10 files, WADO-RS digests, instance deletion,
QIDO-RS searches (paged), WADO-RS retrieval (streamed) and metadata.

Modelled on dicomweb-client's verb-noun methods, but streaming: `store_instance` sends the file
as it lies in the buffer (byte-exact, bounded memory) and reports what the store said about it
in a `StowOutcome`; nothing here retries or decides, `upload.py` does.
"""

from __future__ import annotations

import enum
import itertools
import json
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar
from urllib.parse import quote, urlencode

import requests

from .multipart import BodyPart, MultipartRelatedBody, boundary_of, split_parts
from .part10 import DatasetDigester

# DICOM JSON tags of the STOW-RS response (PS3.18 10.5.3).
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
# Failure reasons that mean "an instance with this UID is already there". The Healthcare API
# answers 200 for an identical re-upload and 409 with failure reason 0x0110 for different
# content, so for it a 409 without another reason decides; 45070 (0xB00E) is what Azure's DICOM
# service gives for any existing instance; 0x0111 is DIMSE's "duplicate SOP instance", which
# some gateways pass through in STOW answers.
DUPLICATE_FAILURE_REASONS = frozenset({0x0111, 45070})
PROCESSING_FAILURE = 0x0110
# Ask for an instance exactly as stored, never transcoded (PS3.18 8.7.3.5.2).
ANY_TRANSFER_SYNTAX = "*"


class StowVerdict(enum.Enum):
    STORED = "stored"
    ALREADY_EXISTS = "already_exists"  # the store holds an instance with this UID: compare it
    TRANSIENT = "transient"
    REJECTED = "rejected"


@dataclass(frozen=True)
class StowOutcome:
    """What the store said about one instance.

    `reason` is safe for log lines (statuses and codes only); `detail` is the store's own text,
    which may quote the data, so it goes only into the dead-letter record.
    """

    verdict: StowVerdict
    http_status: int | None
    reason: str
    failure_reason: int | None = None
    warning_reason: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class DicomWebAddress:
    """A DICOMweb service root such as http://host:8042/dicom-web (no trailing slash)."""

    url: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.rstrip("/"))

    def series_url(self, study: str, series: str) -> str:
        return "{}/studies/{}/series/{}".format(self.url, *(quote(uid, safe="") for uid in (study, series)))

    def instance_url(self, study: str, series: str, sop_instance: str) -> str:
        return f"{self.series_url(study, series)}/instances/{quote(sop_instance, safe='')}"


class DicomWebClient:
    def __init__(
        self,
        address: DicomWebAddress,
        session: requests.Session,
        *,
        retry_status_codes: frozenset[int],
        timeout: tuple[float, float] = (10.0, 300.0),
        pages_in_flight: int = 1,
        first_page_size: int | None = None,
    ) -> None:
        self.address = address
        self.session = session
        self.retry_status_codes = retry_status_codes
        self.timeout = timeout
        self.pages_in_flight = pages_in_flight  # QIDO-RS pages asked for at once (see _search_pages)
        self.first_page_size = first_page_size  # a smaller first page: the first match sooner (C-FIND)

    def store_instance(self, part10: BodyPart, sop_instance_uid: str) -> StowOutcome:
        """STOW-RS one Part-10 file and say what became of `sop_instance_uid`."""
        return self.store_instances([(part10, sop_instance_uid)])[0]

    def store_instances(self, instances: Sequence[tuple[BodyPart, str]]) -> list[StowOutcome]:
        """STOW-RS Part-10 files in one request; say what became of each SOP Instance UID.

        One request for several instances saves the store and us the per-request work (HTTP,
        and the store's own overhead); the answer is judged for each instance on its own.
        """
        body = MultipartRelatedBody([part for part, _ in instances])
        try:
            response = self.session.post(
                f"{self.address.url}/studies",
                data=body,
                headers={"Content-Type": body.content_type, "Accept": "application/dicom+json"},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            failed = StowOutcome(StowVerdict.TRANSIENT, None, f"{type(exc).__name__}: {_short(str(exc))}")
            return [failed for _ in instances]
        with response:
            answer = StowAnswer(response, _json_body(response))
            return [self._judge_stow(answer, uid) for _, uid in instances]

    def _judge_stow(self, answer: "StowAnswer", sop_instance_uid: str) -> StowOutcome:
        response, body = answer.response, answer.body
        status = response.status_code
        failure = answer.failures.reason_for(sop_instance_uid)
        warning = answer.references.reason_for(sop_instance_uid)
        reason = _summary(response, body, failure)

        def outcome(verdict: StowVerdict, why: str = reason) -> StowOutcome:
            detail = "" if verdict is StowVerdict.STORED else _store_detail(response, body)
            return StowOutcome(verdict, status, why, failure, warning, detail)

        if status in self.retry_status_codes:
            return outcome(StowVerdict.TRANSIENT)
        if failure is not None and failure & 0xFF00 == 0xA700:  # out of resources: later, maybe
            return outcome(StowVerdict.TRANSIENT)
        if failure in DUPLICATE_FAILURE_REASONS or (status == 409 and failure in (None, PROCESSING_FAILURE)):
            return outcome(StowVerdict.ALREADY_EXISTS)
        if failure is not None or not 200 <= status < 300:
            return outcome(StowVerdict.REJECTED)
        referenced = answer.references.uids
        if referenced is not None and sop_instance_uid not in referenced:
            return outcome(StowVerdict.REJECTED, f"{reason}: the store's answer does not list the instance as stored")
        return outcome(StowVerdict.STORED)

    def retrieve_dataset_digest(self, study: str, series: str, sop_instance: str) -> str | None:
        """SHA-256 of the stored instance's data set after its file meta; None if not found.

        Streams the WADO-RS response; the store may rewrite the file meta, so only the data set
        is compared.
        """
        response = self.session.get(
            self.address.instance_url(study, series, sop_instance),
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            stream=True,
            timeout=self.timeout,
        )
        with response:
            if response.status_code == 404:
                return None
            response.raise_for_status()
            digester = DatasetDigester()
            split_parts(
                response.iter_content(1 << 16),
                boundary_of(response.headers.get("Content-Type", "")),
                lambda headers: digester.feed,
            )
            return digester.hexdigest()

    def delete_instance(self, study: str, series: str, sop_instance: str) -> None:
        response = self.session.delete(self.address.instance_url(study, series, sop_instance), timeout=self.timeout)
        if response.status_code not in (200, 202, 204, 404):
            response.raise_for_status()

    # -- search and retrieve (QIDO-RS, WADO-RS) ------------------------------------------

    def search_for_studies(self, search_filters: dict[str, Any] | None = None, *, page_size: int = 500) -> Iterator[dict[str, Any]]:
        """QIDO-RS /studies: DICOM JSON objects, paged (limit/offset) as they are consumed."""
        return self._search("studies", None, None, search_filters, page_size)

    def search_for_series(
        self, study_instance_uid: str | None = None, search_filters: dict[str, Any] | None = None, *, page_size: int = 500
    ) -> Iterator[dict[str, Any]]:
        """QIDO-RS /series or /studies/{study}/series, paged."""
        return self._search("series", study_instance_uid, None, search_filters, page_size)

    def search_for_instances(
        self,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        search_filters: dict[str, Any] | None = None,
        *,
        page_size: int = 500,
    ) -> Iterator[dict[str, Any]]:
        """QIDO-RS /instances, /studies/{study}/instances or .../series/{series}/instances, paged."""
        return self._search("instances", study_instance_uid, series_instance_uid, search_filters, page_size)

    def _search(
        self, level: str, study: str | None, series: str | None, search_filters: dict[str, Any] | None, page_size: int
    ) -> Iterator[dict[str, Any]]:
        return _search_pages(self, _search_path(self.address, level, study, series), dict(search_filters or {}), page_size)

    def retrieve_instance(
        self, study: str, series: str, sop_instance: str, *, transfer_syntax: str = ANY_TRANSFER_SYNTAX
    ) -> "RetrievedInstance | None":
        """WADO-RS one instance, streamed; None if the store does not have it.

        `transfer_syntax="*"` asks for the bytes as stored; a UID asks the store to transcode.
        """
        return self._retrieve(self.address.instance_url(study, series, sop_instance), transfer_syntax)

    def retrieve_series(self, study: str, series: str, *, transfer_syntax: str = ANY_TRANSFER_SYNTAX) -> "RetrievedInstance | None":
        """WADO-RS a whole series in one streamed response (a part per instance; see
        RetrievedInstance.parts); None if the store does not have it."""
        return self._retrieve(self.address.series_url(study, series), transfer_syntax)

    def _retrieve(self, url: str, transfer_syntax: str) -> "RetrievedInstance | None":
        accept = f'multipart/related; type="application/dicom"; transfer-syntax={transfer_syntax}'
        try:
            response = self.session.get(url, headers={"Accept": accept}, stream=True, timeout=self.timeout)
        except requests.RequestException as exc:
            raise DicomWebError(f"{type(exc).__name__}: {_short(str(exc))}") from None
        if response.status_code == 404:
            response.close()
            return None
        if not 200 <= response.status_code < 300:
            reason = f"HTTP {response.status_code} {response.reason or ''}".strip()
            response.close()
            raise DicomWebError(reason, response.status_code)
        return RetrievedInstance(response)

    def retrieve_instance_metadata(self, study: str, series: str, sop_instance: str) -> dict[str, Any] | None:
        """WADO-RS .../metadata: the instance's DICOM JSON (bulk data by URI); None if not found."""
        status, body = _get_dicom_json(self, self.address.instance_url(study, series, sop_instance) + "/metadata", absent=404)
        if status == 404:
            return None
        if isinstance(body, list) and body and isinstance(body[0], dict):
            return body[0]
        raise DicomWebError("WADO-RS metadata is not a DICOM JSON list", status)


def _json_body(response: requests.Response) -> Any:
    """The JSON body, judged by content: Orthanc sends DICOM JSON errors with no Content-Type."""
    text = _text(response)
    if not text.lstrip().startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _text(response: requests.Response) -> str:
    """The body as text. DICOM JSON is UTF-8 (PS3.18 F.2); requests' `.text` would guess the
    charset of a body without one by statistics, which costs more than the whole upload."""
    return response.content.decode(response.encoding or "utf-8", errors="replace")


def _items(body: Any, sequence_tag: str) -> list[dict[str, Any]] | None:
    """Items of a DICOM JSON sequence in the response, or None if the response has none."""
    if not isinstance(body, dict) or not isinstance(body.get(sequence_tag), dict):
        return None
    items = body[sequence_tag].get("Value") or []
    return [item for item in items if isinstance(item, dict)]


def _first_value(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if values else None


class _SopSequence:
    """The items of a Failed or Referenced SOP Sequence, read once per STOW answer: each of a
    batch's instances looks its reason up here (reading the sequence again for every instance
    cost time quadratic in the batch size)."""

    def __init__(self, body: Any, sequence_tag: str, reason_tag: str, missing: int | None) -> None:
        items = _items(body, sequence_tag)
        self.uids: set[str] | None = None if items is None else set()
        self._by_uid: dict[str, tuple[int, int | None]] = {}  # first item naming the UID
        self._unnamed: tuple[int, int | None] | None = None  # first item naming no UID
        for index, item in enumerate(items or []):
            uid = _first_value(item, REFERENCED_SOP_INSTANCE_UID)
            entry = (index, _reason_code(_first_value(item, reason_tag), missing))
            if self.uids is not None:
                self.uids.add(str(uid))
            if uid is None:
                self._unnamed = self._unnamed or entry
            elif isinstance(uid, str):  # a UID that is not a string names no instance we sent
                self._by_uid.setdefault(uid, entry)

    def reason_for(self, sop_instance_uid: str) -> int | None:
        """The reason code of the first item that names this instance or no instance at all."""
        found = [entry for entry in (self._by_uid.get(sop_instance_uid), self._unnamed) if entry is not None]
        return min(found)[1] if found else None


def _reason_code(code: Any, missing: int | None) -> int | None:
    if code is None:
        return missing
    try:
        return int(code)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON 1e999
        try:
            return int(str(code), 16)  # some stores write codes as hex strings
        except ValueError:
            return 0xC000


class StowAnswer:
    """A STOW-RS response and what its body says, per instance."""

    def __init__(self, response: requests.Response, body: Any) -> None:
        self.response = response
        self.body = body
        self.failures = _SopSequence(body, FAILED_SOP_SEQUENCE, FAILURE_REASON, missing=0xC000)
        self.references = _SopSequence(body, REFERENCED_SOP_SEQUENCE, WARNING_REASON, missing=None)


def _summary(response: requests.Response, body: Any, failure: int | None) -> str:
    """HTTP status, failure reason and the store's error code: no free text, so safe to log."""
    text = f"HTTP {response.status_code} {response.reason or ''}".strip()
    if failure is not None:
        text += f"; failure reason 0x{failure:04X}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("status"), str):  # Google API errors
        text += f"; {error['status']}"
    return text


def _store_detail(response: requests.Response, body: Any) -> str:
    """What the store wrote, for the dead-letter record (Google's error.message, else the body)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return _short(error["message"], 1000)
    text = _text(response)
    return _short(text, 1000) if text else ""


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- QIDO-RS and WADO-RS retrieval (query/retrieve) ------------------------------------------

class DicomWebError(RuntimeError):
    """The store answered a search or retrieval with an error; `reason` is safe to log."""

    def __init__(self, reason: str, http_status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.http_status = http_status


class RetrievedInstance:
    """A WADO-RS instance response being streamed: the Part-10 bytes, one chunk at a time.

    Use as a context manager; `copy_to(file)` writes the instance without holding it in memory.
    """

    def __init__(self, response: requests.Response, chunk_size: int = 1 << 16) -> None:
        self._response = response
        self._chunk_size = chunk_size
        self.content_type = response.headers.get("Content-Type", "")

    def copy_to(self, out: Any) -> int:
        """Write the instance's Part-10 bytes to the binary file `out`; return their count."""
        written = 0

        def write(data: bytes) -> None:
            nonlocal written
            out.write(data)
            written += len(data)

        if self.content_type.lower().startswith("application/dicom"):
            for chunk in self._response.iter_content(self._chunk_size):
                write(chunk)
            return written
        parts = self.parts(lambda headers: write)
        if parts != 1:
            raise DicomWebError(f"WADO-RS answered {parts} parts for one instance")
        return written

    def parts(self, open_part: Callable[[dict[str, str]], Callable[[bytes], None]]) -> int:
        """Split a multipart/related answer as it streams (multipart.split_parts): `open_part`
        is called with each part's headers and returns the writer of its bytes."""
        if not self.content_type.lower().startswith("multipart/"):
            raise DicomWebError(f"WADO-RS answered {self.content_type or 'no Content-Type'}, not multipart")
        return split_parts(self._response.iter_content(self._chunk_size), boundary_of(self.content_type), open_part)

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> "RetrievedInstance":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _search_path(address: DicomWebAddress, level: str, study: str | None = None, series: str | None = None) -> str:
    path = address.url
    if study:
        path += f"/studies/{quote(study, safe='')}"
        if series:
            path += f"/series/{quote(series, safe='')}"
    return f"{path}/{level}"


def _query_string(params: dict[str, Any]) -> str:
    """QIDO-RS parameters with wildcards and UID-list commas left as they are: some stores
    (Orthanc 1.10) do not decode a percent-encoded '*' back into a wildcard."""
    return urlencode(params, doseq=True, quote_via=quote, safe="*?,")


PAGE_GROWTH = 4


def _search_pages(
    client: "DicomWebClient", url: str, params: dict[str, Any], page_size: int
) -> Iterator[dict[str, Any]]:
    """QIDO-RS results one page (limit/offset) at a time, so no result count is too large.

    Stops at the first page shorter than asked for; a consumer that stops iterating stops
    the paging (C-CANCEL). With `client.first_page_size` a small first page is asked for
    alone: a store that builds each result (Orthanc) sends the first ones sooner, so C-FIND's
    first Pending goes out before the rest of a large answer is ready, and a narrow answer
    (a Patient ID, a UID) costs the store one small request. The pages then grow to
    `page_size`, each asked for alone (first_page_limits): most answers end within them, and
    a page asked for beside the last one would cost the store a whole search for nothing
    (Orthanc 1.10 takes as long for an offset past the end). Only an answer longer than that
    (or any, without a first page) is fetched `client.pages_in_flight` pages of `page_size` at
    once, each next one as soon as one is consumed, so the store works on them in parallel;
    it ends having asked for up to pages_in_flight - 1 pages too many.
    """
    offset = 0
    if client.first_page_size:
        for limit in first_page_limits(client.first_page_size, page_size):
            page = _search_page(client, url, params, limit, offset)
            yield from _page_items(page)
            if page is None or len(page) < limit:
                return
            offset += limit
    pages = in_order(lambda at: _search_page(client, url, params, page_size, at), itertools.count(offset, page_size), client.pages_in_flight)
    try:
        for page in pages:
            yield from _page_items(page)
            if page is None or len(page) < page_size:
                return
    finally:
        pages.close()


def first_page_limits(first: int, page_size: int) -> list[int]:
    """The pages a search asks for one at a time before any go in parallel: `first`, growing
    fourfold while smaller than `page_size`, then one of `page_size` (25, 100, 400, 500). The
    pages grow so that a store that builds a whole page before it sends it (Orthanc) is
    building the next while the matches of this one are sent, and the last page's matches,
    which nothing overlaps, are few for any answer; a search of a narrow answer costs one small
    request."""
    limits = []
    limit = first
    while limit < page_size:
        limits.append(limit)
        limit *= PAGE_GROWTH
    return [*limits, page_size]


def _page_items(page: list[Any] | None) -> Iterator[dict[str, Any]]:
    return (item for item in page or () if isinstance(item, dict))


A = TypeVar("A")
R = TypeVar("R")


def in_order(fn: Callable[[A], R], args: Iterable[A], in_flight: int) -> Iterator[R]:
    """fn(arg) for each arg, up to `in_flight` calls running at once in threads, the results in
    the order of `args`; the next call starts when the consumer takes a result. A consumer that
    stops leaves at most in_flight - 1 calls running, and does not wait for them."""
    pending = iter(args)
    if in_flight <= 1:
        for arg in pending:
            yield fn(arg)
        return
    pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="dicomweb")
    futures = deque(pool.submit(fn, arg) for arg in itertools.islice(pending, in_flight))
    try:
        while futures:
            yield futures.popleft().result()
            futures.extend(pool.submit(fn, arg) for arg in itertools.islice(pending, 1))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _search_page(client: "DicomWebClient", url: str, params: dict[str, Any], page_size: int, offset: int) -> list[Any] | None:
    """One QIDO-RS page (a JSON list); None when the store answers 204 (no matches)."""
    status, page = _get_dicom_json(client, f"{url}?{_query_string({**params, 'limit': page_size, 'offset': offset})}", absent=204)
    if status == 204:
        return None
    if not isinstance(page, list):
        raise DicomWebError("QIDO-RS answer is not a JSON list", status)
    return page


def _get_dicom_json(client: "DicomWebClient", url: str, *, absent: int) -> tuple[int, Any]:
    """GET a DICOM JSON resource: (status, body). `absent` (404 for a resource, 204 for a search
    without matches) comes back as such with no body; other errors raise DicomWebError."""
    try:
        response = client.session.get(url, headers={"Accept": "application/dicom+json"}, timeout=client.timeout)
    except requests.RequestException as exc:
        raise DicomWebError(f"{type(exc).__name__}: {_short(str(exc))}") from None
    with response:
        if response.status_code == absent:
            return absent, None
        if not 200 <= response.status_code < 300:
            raise DicomWebError(_summary(response, _json_body(response), None), response.status_code)
        return response.status_code, _json_body(response)
