"""multipart/related (RFC 2387) as DICOMweb uses it: encode, and decode as a stream.

STOW-RS requests and WADO-RS responses are multipart/related bodies. Tests build small ones in
memory, but the fake store and the large-instance tests must also split bodies of a gigabyte
without holding them, so the decoder is an incremental state machine that writes each part
to a sink (a BytesIO, a file) as bytes arrive.
"""

from __future__ import annotations

import io
import uuid
from typing import BinaryIO, Callable, Iterable, Protocol, Sequence

__all__ = [
    "parse_content_type",
    "encode_multipart_related",
    "multipart_related_content_type",
    "MultipartStreamParser",
    "parse_multipart_related",
    "copy_single_part_to",
]


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split 'multipart/related; type="application/dicom"; boundary=x' into (mime, params).

    Parameter names are lower-cased; quoted values may contain ';' and escaped quotes.
    """
    items: list[str] = []
    current: list[str] = []
    in_quotes = False
    escaped = False
    for ch in value:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and in_quotes:
            escaped = True
        elif ch == '"':
            in_quotes = not in_quotes
        elif ch == ";" and not in_quotes:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    mime = items[0].strip().lower()
    params: dict[str, str] = {}
    for item in items[1:]:
        if "=" not in item:
            continue
        key, _, val = item.partition("=")
        params[key.strip().lower()] = val.strip()
    return mime, params


def multipart_related_content_type(boundary: str, part_type: str = "application/dicom", **params: str) -> str:
    """The Content-Type header value for a multipart/related body."""
    header = f'multipart/related; type="{part_type}"; boundary={boundary}'
    for key, val in params.items():
        header += f"; {key.replace('_', '-')}={val}"
    return header


def encode_multipart_related(
    parts: Sequence[bytes],
    *,
    part_type: str = "application/dicom",
    boundary: str | None = None,
) -> tuple[str, bytes]:
    """Build an in-memory multipart/related body; return (content_type, body).

    Test-only convenience: holds everything in memory, fine for small instances.
    """
    boundary = boundary or uuid.uuid4().hex
    chunks: list[bytes] = []
    for part in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode())
        chunks.append(bytes(part))
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return multipart_related_content_type(boundary, part_type), b"".join(chunks)


class PartSink(Protocol):
    def write(self, data: bytes, /) -> object: ...


_PREAMBLE, _HEADERS, _BODY, _AFTER_DELIMITER, _EPILOGUE = range(5)
_MAX_HEADER_BYTES = 64 * 1024


class MultipartStreamParser:
    """Incremental multipart decoder: feed() bytes as they arrive, close() at the end.

    For each part, `open_part(headers)` is called with the part's headers (names lower-cased)
    and must return a sink with write(); the sink is remembered in `self.sinks` in order and, if
    it has `close_part()`, that is called when the part's body is complete. Memory held is
    bounded by the chunk size plus the delimiter length, whatever the part sizes.
    """

    def __init__(self, boundary: str | bytes, open_part: Callable[[dict[str, str]], PartSink]) -> None:
        b = boundary.encode("latin-1") if isinstance(boundary, str) else boundary
        if not b:
            raise ValueError("empty multipart boundary")
        self._dash_boundary = b"--" + b
        self._delimiter = b"\r\n--" + b
        self._open_part = open_part
        self._buf = bytearray()
        self._state = _PREAMBLE
        self._sink: PartSink | None = None
        self.sinks: list[PartSink] = []
        self.headers: list[dict[str, str]] = []

    @property
    def complete(self) -> bool:
        return self._state == _EPILOGUE

    def feed(self, data: bytes) -> None:
        if self._state == _EPILOGUE:
            return
        self._buf += data
        while self._step():
            pass

    def close(self) -> None:
        """Check that the closing delimiter was seen (raise ValueError if truncated)."""
        if self._state != _EPILOGUE:
            raise ValueError("truncated multipart body: closing boundary not found")

    def _step(self) -> bool:
        buf = self._buf
        if self._state == _PREAMBLE:
            i = buf.find(self._dash_boundary)
            if i < 0:
                keep = len(self._dash_boundary)
                if len(buf) > keep:
                    del buf[: len(buf) - keep]
                return False
            if i > 0 and buf[i - 1 : i] != b"\n":
                # The boundary text inside a preamble line, not at a line start; skip it.
                del buf[: i + 1]
                return True
            del buf[: i + len(self._dash_boundary)]
            self._state = _AFTER_DELIMITER
            return True
        if self._state == _AFTER_DELIMITER:
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._state = _EPILOGUE
                buf.clear()
                return False
            j = buf.find(b"\r\n")
            if j < 0:
                if len(buf) > 1024:
                    raise ValueError("malformed multipart: no CRLF after boundary")
                return False
            if buf[:j].strip(b" \t"):
                raise ValueError("malformed multipart: garbage after boundary")
            del buf[: j + 2]
            self._state = _HEADERS
            return True
        if self._state == _HEADERS:
            if buf[:2] == b"\r\n":
                headers: dict[str, str] = {}
                del buf[:2]
            else:
                j = buf.find(b"\r\n\r\n")
                if j < 0:
                    if len(buf) > _MAX_HEADER_BYTES:
                        raise ValueError("malformed multipart: part headers too long")
                    return False
                headers = {}
                for line in bytes(buf[:j]).decode("latin-1").split("\r\n"):
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                del buf[: j + 4]
            self._sink = self._open_part(headers)
            self.sinks.append(self._sink)
            self.headers.append(headers)
            self._state = _BODY
            return True
        if self._state == _BODY:
            assert self._sink is not None
            i = buf.find(self._delimiter)
            if i >= 0:
                if i:
                    self._sink.write(bytes(buf[:i]))
                del buf[: i + len(self._delimiter)]
                close_part = getattr(self._sink, "close_part", None)
                if close_part is not None:
                    close_part()
                self._sink = None
                self._state = _AFTER_DELIMITER
                return True
            safe = len(buf) - (len(self._delimiter) - 1)
            if safe > 0:
                self._sink.write(bytes(buf[:safe]))
                del buf[:safe]
            return False
        return False


def parse_multipart_related(content_type: str, body: bytes | Iterable[bytes]) -> list[tuple[dict[str, str], bytes]]:
    """Decode a whole multipart body into [(part headers, part bytes)] in memory."""
    mime, params = parse_content_type(content_type)
    if not mime.startswith("multipart/"):
        raise ValueError(f"not a multipart content type: {content_type!r}")
    boundary = params.get("boundary")
    if not boundary:
        raise ValueError(f"no boundary in {content_type!r}")
    parser = MultipartStreamParser(boundary, lambda headers: io.BytesIO())
    if isinstance(body, (bytes, bytearray, memoryview)):
        parser.feed(bytes(body))
    else:
        for chunk in body:
            parser.feed(chunk)
    parser.close()
    return [(h, sink.getvalue()) for h, sink in zip(parser.headers, parser.sinks)]  # type: ignore[attr-defined]


def copy_single_part_to(
    content_type: str,
    chunks: Iterable[bytes],
    dest: BinaryIO,
) -> dict[str, str]:
    """Stream a multipart body that holds exactly one part into `dest`; return its headers."""
    _, params = parse_content_type(content_type)
    boundary = params.get("boundary")
    if not boundary:
        raise ValueError(f"no boundary in {content_type!r}")
    parser = MultipartStreamParser(boundary, lambda headers: dest)
    for chunk in chunks:
        parser.feed(chunk)
    parser.close()
    if len(parser.sinks) != 1:
        raise ValueError(f"expected exactly one part, got {len(parser.sinks)}")
    return parser.headers[0]
