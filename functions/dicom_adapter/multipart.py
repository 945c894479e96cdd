"""multipart/related bodies for DICOMweb, streamed both ways.

Written by hand because the libraries at hand hold whole bodies in memory: dicomweb-client's
`store_instances` encodes pydicom Datasets (re-encoding them, and in memory), and
requests-toolbelt's decoder reads the whole response. A STOW body here is a sequence of file
slices with an exact Content-Length, and a WADO-RS response is split as it arrives.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

CRLF = b"\r\n"


@dataclass(frozen=True)
class BodyPart:
    """One body part of known size whose bytes `open_chunks()` yields afresh on each call."""

    size: int
    open_chunks: Callable[[], Iterator[bytes]]
    content_type: str = "application/dicom"


class MultipartRelatedBody:
    """An iterable request body with a known length, so requests streams it unchunked."""

    def __init__(self, parts: list[BodyPart], boundary: str | None = None) -> None:
        self.parts = parts
        self.boundary = boundary or f"dicom-adapter-{uuid.uuid4().hex}"
        self._headers = [
            b"--" + self.boundary.encode() + CRLF + f"Content-Type: {part.content_type}".encode() + CRLF + CRLF
            for part in parts
        ]
        self._closing = b"--" + self.boundary.encode() + b"--" + CRLF

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def __len__(self) -> int:
        return sum(len(h) + p.size + len(CRLF) for h, p in zip(self._headers, self.parts)) + len(self._closing)

    def __iter__(self) -> Iterator[bytes]:
        for header, part in zip(self._headers, self.parts):
            yield header
            sent = 0
            for chunk in part.open_chunks():
                sent += len(chunk)
                yield chunk
            if sent != part.size:
                raise OSError(f"a body part changed size while being sent ({sent} != {part.size} bytes)")
            yield CRLF
        yield self._closing


def boundary_of(content_type: str) -> str:
    match = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if not match:
        raise ValueError(f"no boundary in Content-Type {content_type!r}")
    return match.group(1)


def split_parts(
    chunks: Iterable[bytes], boundary: str, open_part: Callable[[dict[str, str]], Callable[[bytes], None]]
) -> int:
    """Split a streamed multipart body; feed each part's bytes to the writer `open_part` returns.

    `open_part(headers)` is called at the start of each part and returns a function that takes
    that part's bytes in pieces. Only a boundary's length is ever held back. Returns the number
    of parts seen.
    """
    delimiter = CRLF + b"--" + boundary.encode()
    buffer = bytearray(CRLF)  # the first delimiter has no CRLF before it
    state = "preamble"
    writer: Callable[[bytes], None] | None = None
    parts = 0
    for chunk in chunks:
        buffer += chunk
        while True:
            if state in ("preamble", "body"):
                index = buffer.find(delimiter)
                if index < 0:
                    keep = len(delimiter) - 1
                    if state == "body" and writer is not None and len(buffer) > keep:
                        writer(bytes(buffer[:-keep]))
                        del buffer[:-keep]
                    elif state == "preamble" and len(buffer) > keep:
                        del buffer[:-keep]
                    break
                if state == "body" and writer is not None:
                    writer(bytes(buffer[:index]))
                del buffer[: index + len(delimiter)]
                state = "after_delimiter"
            if state == "after_delimiter":
                if len(buffer) < 2:
                    break
                if buffer[:2] == b"--":
                    return parts
                state = "headers"
            if state == "headers":
                end = buffer.find(CRLF + CRLF)
                if end < 0:
                    break
                raw = bytes(buffer[:end]).decode("latin-1")
                del buffer[: end + 4]
                headers = {}
                for line in raw.split("\r\n"):
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                writer = open_part(headers)
                parts += 1
                state = "body"
    if state != "preamble":
        raise ValueError("multipart body ended before its closing boundary")
    return parts
