"""A local DICOMweb server that answers like the Cloud Healthcare API DICOM store.

Tests of the upload path need a store whose answers they control: transient errors (503,
429, 500, dropped connections, slowness), permanent rejections, and the Healthcare API's
own duplicate semantics, which differ from Orthanc's. It speaks real HTTP/1.1 (keep-alive,
Content-Length or chunked uploads, multipart/related), so the product's real HTTP client
talks to it unchanged.

What the Healthcare API does when a STOW-RS instance already exists (researched, not assumed):
  * Identical instance re-sent: success (200), nothing changes. Google's own adapter says so
    in its upload code, GoogleCloudPlatform/healthcare-dicom-dicomweb-adapter,
    import/.../cstore/backup/BackupUploadService.java: "Note that if the md5 of the instances
    match, we will get a HTTP 200. We will only get an HTTP 409 when there is a difference in
    the MD5 between the instances". Also healthcare-api-dicom-fuse issue #20 ("If we upload a
    file and the file exist on the server, the file will be uploaded without any error ... if
    we have different files ... with same study, series, and instance ID we will get 409").
  * Different content under an existing Study/Series/SOP Instance UID triplet: 409 Conflict
    (adapter issue #138; adapter issue #54: even a changed ImplementationClassUID in the file
    meta makes it differ, so the comparison covers the whole uploaded file). The import API
    words it "An instance already exists in this DICOM Store with the same
    Study/Series/SOPInstance UID, but the DICOM files differ (checksum mismatch)."
    (nodejs-docs-samples issue #3502).
  * The 409 body seen from the Healthcare API (dcmjs issue #249) carries RetrieveURL and a
    FailedSOPSequence item with FailureReason 272 (0x0110, Processing failure) plus a private
    FailureDetail (0009,xx97) LT under private creator "GOOGLE". Google documents no
    dedicated duplicate code.
  * 45070 (0xB00E) is NOT Google's: it is Microsoft's DICOM service ("A DICOM instance with
    the same StudyInstanceUID, SeriesInstanceUID and SopInstanceUID has already been stored",
    microsoft/dicom-server docs/resources/conformance-statement.md), which answers 409 for any
    existing instance, identical or not. 0x0111 is the DIMSE C-STORE "Duplicate SOP Instance"
    status, not a STOW-RS failure reason. duplicate_policy="reject_existing" with
    conflict_failure_reason=45070 imitates the Microsoft behaviour.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Iterator
from xml.sax.saxutils import escape as xml_escape

import pydicom

from .multipart import MultipartStreamParser, parse_content_type
from .processes import LOOPBACK

__all__ = [
    "HealthcareApiFake",
    "StoredInstance",
    "RequestRecord",
    "FAILURE_PROCESSING",
    "FAILURE_DATASET_DOES_NOT_MATCH_SOP_CLASS",
    "FAILURE_CANNOT_UNDERSTAND",
    "FAILURE_OUT_OF_RESOURCES",
    "FAILURE_REFERENCED_TS_NOT_SUPPORTED",
    "FAILURE_SOP_CLASS_NOT_SUPPORTED",
    "MICROSOFT_FAILURE_ALREADY_STORED",
    "DEFAULT_PARENT",
]

# Failure Reason (0008,1197) values of PS3.18 Table I.2-2.
FAILURE_PROCESSING = 0x0110  # 272
FAILURE_SOP_CLASS_NOT_SUPPORTED = 0x0122  # 290
FAILURE_OUT_OF_RESOURCES = 0xA700  # 42752
FAILURE_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # 43264
FAILURE_CANNOT_UNDERSTAND = 0xC000  # 49152
FAILURE_REFERENCED_TS_NOT_SUPPORTED = 0xC122  # 49442
MICROSOFT_FAILURE_ALREADY_STORED = 45070  # 0xB00E, Azure DICOM service only

DEFAULT_PARENT = "projects/test-project/locations/us-central1/datasets/test-dataset/dicomStores/test-store"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
CONFLICT_DETAIL = (
    "An instance already exists in this DICOM Store with the same Study/Series/SOPInstance UID, "
    "but the DICOM files differ (checksum mismatch)."
)
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ALREADY_EXISTS",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass
class StoredInstance:
    """An instance held by the fake, with the uploaded Part-10 bytes verbatim."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    sha256: str
    size: int
    data: bytes | None = None
    path: Path | None = None

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    def open(self) -> BinaryIO:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return open(self.path, "rb")


@dataclass
class RequestRecord:
    """One request as the fake saw it, and what it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body_bytes: int = 0
    status: int | None = None  # None: connection dropped without an answer
    sop_instance_uids: list[str] = field(default_factory=list)
    failure_reasons: list[int] = field(default_factory=list)
    fault: str | None = None  # "fail", "drop", "delay", "reject" when a switch applied
    started: float = field(default_factory=time.time)


@dataclass
class _Fault:
    kind: str  # "fail" | "drop" | "delay"
    remaining: int
    methods: tuple[str, ...]
    status: int = 503
    seconds: float = 0.0
    retry_after: str | None = None
    message: str | None = None


@dataclass
class _Rejection:
    status: int
    failure_reason: int
    detail: str
    remaining: int | None
    sop_instance_uids: frozenset[str] | None


class _PartSink:
    """Receives one multipart part: in memory or in a temp file, hashing on the way."""

    def __init__(self, headers: dict[str, str], storage_dir: Path | None) -> None:
        self.headers = headers
        self.hasher = hashlib.sha256()
        self.size = 0
        self.path: Path | None = None
        if storage_dir is None:
            self.file: BinaryIO = io.BytesIO()
        else:
            fd, name = tempfile.mkstemp(dir=storage_dir, suffix=".part")
            self.file = os.fdopen(fd, "w+b")
            self.path = Path(name)

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.hasher.update(data)
        self.size += len(data)

    def close_part(self) -> None:
        self.file.flush()

    def discard(self) -> None:
        self.file.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: "HealthcareApiFake"


class HealthcareApiFake:
    """Threaded HTTP server answering the DICOMweb subset the adapter uses, Google-style.

    Routes under `url` (…/v1/{parent}/dicomWeb):
      POST   /studies, /studies/{study}                     STOW-RS (multipart/related or
                                                            single application/dicom)
      GET    /studies/{s}/series/{se}/instances/{i}         WADO-RS, bytes verbatim
      GET    /studies/{s}/series/{se}/instances/{i}/metadata  WADO-RS metadata (DICOM JSON, no pixels)
      DELETE /studies/{s}/series/{se}/instances/{i}         Google's DeleteInstance
    `storage_dir`: keep uploads in files (for huge instances) instead of memory.
    """

    def __init__(
        self,
        *,
        host: str = LOOPBACK,
        port: int = 0,
        parent: str = DEFAULT_PARENT,
        duplicate_policy: str = "google",
        conflict_failure_reason: int = FAILURE_PROCESSING,
        storage_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if duplicate_policy not in ("google", "reject_existing"):
            raise ValueError("duplicate_policy must be 'google' or 'reject_existing'")
        self.host = host
        self._requested_port = port
        self.parent = parent.strip("/")
        self.base_path = f"/v1/{self.parent}/dicomWeb"
        self.duplicate_policy = duplicate_policy
        self.conflict_failure_reason = conflict_failure_reason
        self.storage_dir = Path(storage_dir) if storage_dir is not None else None
        self._lock = threading.RLock()
        self._instances: dict[str, StoredInstance] = {}
        self._faults: list[_Fault] = []
        self._rejections: list[_Rejection] = []
        self._log: list[RequestRecord] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("fake not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """DICOMweb base URL, as the adapter's --dicomweb_address takes it."""
        return f"http://{self.host}:{self.port}{self.base_path}"

    def start(self) -> "HealthcareApiFake":
        if self.storage_dir is not None:
            self.storage_dir.mkdir(parents=True, exist_ok=True)
        server = _Server((self.host, self._requested_port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> "HealthcareApiFake":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state -----------------------------------------------------------------------------

    def instances(self) -> dict[str, StoredInstance]:
        """Stored instances by SOP Instance UID (a copy of the index)."""
        with self._lock:
            return dict(self._instances)

    def instance_count(self) -> int:
        with self._lock:
            return len(self._instances)

    def get_instance(self, sop_instance_uid: str) -> StoredInstance:
        with self._lock:
            return self._instances[sop_instance_uid]

    def clear(self) -> None:
        """Forget all instances, faults and the request log."""
        with self._lock:
            for inst in self._instances.values():
                if inst.path is not None:
                    inst.path.unlink(missing_ok=True)
            self._instances.clear()
            self._faults.clear()
            self._rejections.clear()
            self._log.clear()

    # -- switches for tests ----------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        *,
        methods: tuple[str, ...] = ("POST",),
        retry_after: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next n matching requests with `status` and a Google-style error body.

        The request body is read and dropped; nothing is stored.
        """
        with self._lock:
            self._faults.append(_Fault("fail", n, tuple(m.upper() for m in methods), status=status,
                                       retry_after=retry_after, message=message))

    def drop_next(self, n: int = 1, *, methods: tuple[str, ...] = ("POST",)) -> None:
        """Close the connection without any answer on the next n matching requests."""
        with self._lock:
            self._faults.append(_Fault("drop", n, tuple(m.upper() for m in methods)))

    def delay_next(self, n: int = 1, seconds: float = 5.0, *, methods: tuple[str, ...] = ("POST",)) -> None:
        """Sleep `seconds` before handling the next n matching requests (client timeouts)."""
        with self._lock:
            self._faults.append(_Fault("delay", n, tuple(m.upper() for m in methods), seconds=seconds))

    def reject_with(
        self,
        status: int = 400,
        failure_reason: int = FAILURE_DATASET_DOES_NOT_MATCH_SOP_CLASS,
        *,
        detail: str = "rejected by test switch",
        count: int | None = None,
        sop_instance_uids: set[str] | None = None,
    ) -> None:
        """Permanently reject STOW-RS instances: FailedSOPSequence with `failure_reason`.

        Applies to every instance (or only `sop_instance_uids`) until cleared, or for `count`
        instances. When no instance of a request succeeds, the answer has `status`.
        """
        with self._lock:
            self._rejections.append(
                _Rejection(status, failure_reason, detail, count,
                           frozenset(sop_instance_uids) if sop_instance_uids is not None else None)
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._rejections.clear()

    # -- request log -----------------------------------------------------------------------

    @property
    def request_log(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def stow_requests(self) -> list[RequestRecord]:
        return [r for r in self.request_log if r.method == "POST"]

    # -- internals used by the handler -----------------------------------------------------

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)

    def _take_faults(self, method: str) -> list[_Fault]:
        """Consume one use of each kind of pending fault matching this method."""
        taken: list[_Fault] = []
        with self._lock:
            kinds_seen: set[str] = set()
            for fault in self._faults:
                if fault.remaining > 0 and method in fault.methods and fault.kind not in kinds_seen:
                    fault.remaining -= 1
                    taken.append(fault)
                    kinds_seen.add(fault.kind)
            self._faults = [f for f in self._faults if f.remaining > 0]
        return taken

    def _rejection_for(self, sop_instance_uid: str) -> _Rejection | None:
        with self._lock:
            for rejection in self._rejections:
                if rejection.remaining is not None and rejection.remaining <= 0:
                    continue
                if rejection.sop_instance_uids is not None and sop_instance_uid not in rejection.sop_instance_uids:
                    continue
                if rejection.remaining is not None:
                    rejection.remaining -= 1
                return rejection
        return None

    def study_url(self, study: str) -> str:
        return f"{self.url}/studies/{study}"

    def instance_url(self, study: str, series: str, sop: str) -> str:
        return f"{self.url}/studies/{study}/series/{series}/instances/{sop}"

    def _store_part(self, sink: _PartSink, url_study: str | None) -> dict[str, Any]:
        """Decide the fate of one uploaded part; returns a result dict for the response."""
        result: dict[str, Any] = {"ok": False, "sop_class": None, "sop_instance": None, "study": None}
        part_type, _ = parse_content_type(sink.headers.get("content-type", "application/dicom"))
        if part_type != "application/dicom":
            result.update(reason=FAILURE_CANNOT_UNDERSTAND, detail=f"unsupported part type {part_type}")
            sink.discard()
            return result
        try:
            sink.file.seek(0)
            ds = pydicom.dcmread(sink.file, stop_before_pixels=True)
            study = str(ds.StudyInstanceUID)
            series = str(ds.SeriesInstanceUID)
            sop = str(ds.SOPInstanceUID)
            sop_class = str(ds.SOPClassUID)
            ts = str(ds.file_meta.TransferSyntaxUID)
        except Exception as exc:  # noqa: BLE001 - any parse failure is a rejected instance
            result.update(reason=FAILURE_PROCESSING, detail=f"invalid DICOM instance: {type(exc).__name__}")
            sink.discard()
            return result
        result.update(sop_class=sop_class, sop_instance=sop, study=study, series=series)
        if url_study is not None and study != url_study:
            result.update(reason=FAILURE_PROCESSING,
                          detail=f"StudyInstanceUID {study} does not match the request's {url_study}")
            sink.discard()
            return result
        rejection = self._rejection_for(sop)
        if rejection is not None:
            result.update(reason=rejection.failure_reason, detail=rejection.detail, rejected_status=rejection.status)
            sink.discard()
            return result
        digest = sink.hasher.hexdigest()
        with self._lock:
            existing = self._instances.get(sop)
            if existing is not None:
                identical = (
                    existing.sha256 == digest
                    and (existing.study_instance_uid, existing.series_instance_uid) == (study, series)
                )
                if self.duplicate_policy == "google" and identical:
                    result["ok"] = True
                    sink.discard()
                    return result
                reason = self.conflict_failure_reason
                detail = CONFLICT_DETAIL if self.duplicate_policy == "google" else (
                    "A DICOM instance with the same StudyInstanceUID, SeriesInstanceUID and "
                    "SopInstanceUID has already been stored."
                )
                result.update(reason=reason, detail=detail, conflict=True)
                sink.discard()
                return result
            stored = StoredInstance(
                study_instance_uid=study,
                series_instance_uid=series,
                sop_instance_uid=sop,
                sop_class_uid=sop_class,
                transfer_syntax_uid=ts,
                sha256=digest,
                size=sink.size,
            )
            if sink.path is None:
                stored.data = sink.file.getvalue()  # type: ignore[attr-defined]
                sink.file.close()
            else:
                sink.file.close()
                final = sink.path.with_name(f"{sop}.dcm")
                os.replace(sink.path, final)
                stored.path = final
            self._instances[sop] = stored
        result["ok"] = True
        return result

    def _delete(self, study: str, series: str, sop: str) -> bool:
        with self._lock:
            inst = self._instances.get(sop)
            if inst is None or (inst.study_instance_uid, inst.series_instance_uid) != (study, series):
                return False
            del self._instances[sop]
        if inst.path is not None:
            inst.path.unlink(missing_ok=True)
        return True

    def _lookup(self, study: str, series: str, sop: str) -> StoredInstance | None:
        with self._lock:
            inst = self._instances.get(sop)
        if inst is None or (inst.study_instance_uid, inst.series_instance_uid) != (study, series):
            return None
        return inst


# -- DICOM JSON / XML response bodies --------------------------------------------------------


def _json_element(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def _store_response_json(fake: HealthcareApiFake, results: list[dict[str, Any]], url_study: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    studies = {r["study"] for r in results if r.get("study")}
    study = url_study or (studies.pop() if len(studies) == 1 else None)
    if study:
        body["00081190"] = _json_element("UR", fake.study_url(study))
    failed = []
    referenced = []
    for r in results:
        if r["ok"]:
            referenced.append(
                {
                    "00081150": _json_element("UI", r["sop_class"]),
                    "00081155": _json_element("UI", r["sop_instance"]),
                    "00081190": _json_element("UR", fake.instance_url(r["study"], r["series"], r["sop_instance"])),
                }
            )
        else:
            item: dict[str, Any] = {}
            if r.get("sop_class"):
                item["00081150"] = _json_element("UI", r["sop_class"])
            if r.get("sop_instance"):
                item["00081155"] = _json_element("UI", r["sop_instance"])
            item["00081197"] = _json_element("US", r["reason"])
            # FailureDetail as the Healthcare API sends it: private tag under creator "GOOGLE".
            item["00090010"] = _json_element("LO", "GOOGLE")
            item["00091097"] = _json_element("LT", r.get("detail", ""))
            failed.append(item)
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    return body


def _json_to_native_xml(body: dict[str, Any]) -> str:
    """Render the small DICOM JSON response above as PS3.19 Native DICOM Model XML."""

    def attrs(obj: dict[str, Any]) -> str:
        out = []
        for tag, el in obj.items():
            vr = el["vr"]
            inner = ""
            for i, value in enumerate(el.get("Value", []), start=1):
                if vr == "SQ":
                    inner += f'<Item number="{i}">{attrs(value)}</Item>'
                else:
                    inner += f'<Value number="{i}">{xml_escape(str(value))}</Value>'
            out.append(f'<DicomAttribute tag="{tag}" vr="{vr}">{inner}</DicomAttribute>')
        return "".join(out)

    return f'<?xml version="1.0" encoding="UTF-8"?>\n<NativeDicomModel>{attrs(body)}</NativeDicomModel>'


def _accepted_media(accept: str | None) -> list[tuple[str, dict[str, str]]]:
    if not accept:
        return []
    return [parse_content_type(item) for item in accept.split(",") if item.strip()]


# -- request handler -------------------------------------------------------------------------

_INSTANCE_RE = re.compile(r"^/studies/([^/]+)/series/([^/]+)/instances/([^/]+)$")
_METADATA_RE = re.compile(r"^/studies/([^/]+)/series/([^/]+)/instances/([^/]+)/metadata$")
_STUDIES_RE = re.compile(r"^/studies(?:/([^/]+))?$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    _record: RequestRecord

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the request log is kept in HealthcareApiFake.request_log

    # -- plumbing --------------------------------------------------------------------------

    @property
    def fake(self) -> HealthcareApiFake:
        return self.server.fake

    def _body_chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The request body, from Content-Length or chunked transfer coding."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("client closed during chunked body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                remaining = size
                while remaining:
                    data = self.rfile.read(min(chunk_size, remaining))
                    if not data:
                        raise ConnectionError("client closed during chunked body")
                    self._record.body_bytes += len(data)
                    remaining -= len(data)
                    yield data
                self.rfile.readline(3)  # CRLF after the chunk
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(chunk_size, remaining))
                if not data:
                    raise ConnectionError("client closed during body")
                self._record.body_bytes += len(data)
                remaining -= len(data)
                yield data

    def _drain_body(self) -> None:
        for _ in self._body_chunks():
            pass

    def _send(self, status: int, body: bytes = b"", content_type: str | None = None,
              headers: dict[str, str] | None = None) -> None:
        self._record.status = status
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _send_error_json(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(
            {"error": {"code": status, "message": message, "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}}
        ).encode()
        self._send(status, body, "application/json; charset=UTF-8", headers)

    def _relative_path(self) -> str | None:
        path = self.path.split("?", 1)[0]
        if not path.startswith(self.fake.base_path):
            return None
        return path[len(self.fake.base_path):] or "/"

    def _dispatch(self) -> None:
        self._record = RequestRecord(
            method=self.command, path=self.path, headers={k: v for k, v in self.headers.items()}
        )
        self.fake._record(self._record)
        try:
            for fault in self.fake._take_faults(self.command):
                if fault.kind == "delay":
                    self._record.fault = "delay"
                    time.sleep(fault.seconds)
                elif fault.kind == "drop":
                    self._record.fault = "drop"
                    self._drain_body()
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                elif fault.kind == "fail":
                    self._record.fault = "fail"
                    self._drain_body()
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
                    message = fault.message or HTTPStatus(fault.status).phrase
                    self._send_error_json(fault.status, message, headers)
                    return
            rel = self._relative_path()
            if rel is None:
                self._drain_body()
                self._send_error_json(404, f"unknown path {self.path}")
                return
            handler = getattr(self, f"_do_{self.command.lower()}", None)
            if handler is None:
                self._drain_body()
                self._send_error_json(405, f"{self.command} not supported")
                return
            handler(rel)
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True

    do_GET = do_POST = do_DELETE = do_PUT = _dispatch

    # -- STOW-RS ---------------------------------------------------------------------------

    def _do_post(self, rel: str) -> None:
        match = _STUDIES_RE.match(rel)
        if not match:
            self._drain_body()
            self._send_error_json(404, f"unknown path {self.path}")
            return
        url_study = match.group(1)
        mime, params = parse_content_type(self.headers.get("Content-Type", ""))
        storage = self.fake.storage_dir
        sinks: list[_PartSink] = []
        if mime == "application/dicom":
            sink = _PartSink({"content-type": "application/dicom"}, storage)
            for chunk in self._body_chunks():
                sink.write(chunk)
            sinks.append(sink)
        elif mime == "multipart/related" and params.get("boundary"):
            part_type = params.get("type", "application/dicom").lower()
            if part_type != "application/dicom":
                self._drain_body()
                self._send_error_json(415, f"multipart/related type {part_type!r} is not supported")
                return
            parser = MultipartStreamParser(params["boundary"], lambda h: _PartSink(h, storage))
            error = None
            for chunk in self._body_chunks():
                if error is None:
                    try:
                        parser.feed(chunk)
                    except ValueError as exc:
                        error = str(exc)  # keep reading: the client is still sending
            sinks = parser.sinks  # type: ignore[assignment]
            if error is not None or not parser.complete:
                for sink in sinks:
                    sink.discard()
                self._send_error_json(400, f"malformed multipart body: {error or 'closing boundary missing'}")
                return
        else:
            self._drain_body()
            self._send_error_json(415, f"Content-Type {mime!r} is not supported for STOW-RS")
            return
        if not sinks:
            self._send_error_json(400, "no instance in the request")
            return
        results = [self.fake._store_part(sink, url_study) for sink in sinks]
        self._record.sop_instance_uids = [r["sop_instance"] for r in results if r.get("sop_instance")]
        self._record.failure_reasons = [r["reason"] for r in results if not r["ok"]]
        ok = sum(1 for r in results if r["ok"])
        if ok == len(results):
            status = 200
        elif ok:
            status = 202
        else:
            rejected = [r["rejected_status"] for r in results if "rejected_status" in r]
            status = rejected[0] if rejected else 409
            if rejected:
                self._record.fault = "reject"
        body = _store_response_json(self.fake, results, url_study)
        accepted = [m for m, _ in _accepted_media(self.headers.get("Accept"))]
        if "application/dicom+xml" in accepted and "application/dicom+json" not in accepted:
            self._send(status, _json_to_native_xml(body).encode(), "application/dicom+xml")
        else:
            self._send(status, json.dumps(body).encode(), "application/dicom+json")

    # -- WADO-RS ---------------------------------------------------------------------------

    def _do_get(self, rel: str) -> None:
        metadata = _METADATA_RE.match(rel)
        if metadata:
            inst = self.fake._lookup(*metadata.groups())
            if inst is None:
                self._send_error_json(404, "instance not found")
                return
            with inst.open() as f:
                header = pydicom.dcmread(f, stop_before_pixels=True)
            body = json.dumps([header.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda element: "bulk")])
            self._send(200, body.encode(), "application/dicom+json; charset=utf-8")
            return
        match = _INSTANCE_RE.match(rel)
        if not match:
            self._send_error_json(404, f"unsupported retrieve path {self.path}")
            return
        inst = self.fake._lookup(*match.groups())
        if inst is None:
            self._send_error_json(404, "instance not found")
            return
        choice = self._choose_representation(inst)
        if choice is None:
            self._send_error_json(
                406,
                f"stored transfer syntax {inst.transfer_syntax_uid} cannot be returned as requested "
                f"(this fake does not transcode; ask transfer-syntax=*)",
            )
            return
        multipart, ts = choice
        self._record.sop_instance_uids = [inst.sop_instance_uid]
        part_type = f"application/dicom; transfer-syntax={ts}"
        if multipart:
            boundary = uuid.uuid4().hex
            head = f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode()
            tail = f"\r\n--{boundary}--\r\n".encode()
            content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        else:
            head = tail = b""
            content_type = part_type
        self._record.status = 200
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(head) + inst.size + len(tail)))
        self.end_headers()
        self.wfile.write(head)
        with inst.open() as f:
            shutil.copyfileobj(f, self.wfile, 1 << 20)
        self.wfile.write(tail)

    def _choose_representation(self, inst: StoredInstance) -> tuple[bool, str] | None:
        """(multipart?, transfer syntax label) for the Accept header, or None for 406.

        Like the Healthcare API: multipart/related or single-part application/dicom; no
        transfer-syntax parameter means explicit VR little endian. Without transcoding only
        "*" or the stored syntax can be served.
        """
        media = _accepted_media(self.headers.get("Accept")) or [("multipart/related", {"type": "application/dicom"})]
        for mime, params in media:
            if mime in ("*/*", "multipart/*"):
                mime, params = "multipart/related", {"type": "application/dicom"}
            if mime == "multipart/related":
                if params.get("type", "application/dicom").lower() != "application/dicom":
                    continue
                multipart = True
            elif mime == "application/dicom":
                multipart = False
            else:
                continue
            wanted = params.get("transfer-syntax", EXPLICIT_VR_LITTLE_ENDIAN)
            if wanted == "*":
                return multipart, inst.transfer_syntax_uid
            if wanted == inst.transfer_syntax_uid:
                return multipart, wanted
        return None

    # -- DeleteInstance --------------------------------------------------------------------

    def _do_delete(self, rel: str) -> None:
        self._drain_body()
        match = _INSTANCE_RE.match(rel)
        if not match:
            self._send_error_json(404, f"unsupported delete path {self.path}")
            return
        if not self.fake._delete(*match.groups()):
            self._send_error_json(404, "instance not found")
            return
        self._record.sop_instance_uids = [match.group(3)]
        self._send(200, b"{}", "application/json; charset=UTF-8")
