"""The streamed multipart/related writer and splitter agree with each other and with the RFC."""

from __future__ import annotations

import email.parser
import os
import random

import pytest

from dicom_adapter.multipart import BodyPart, MultipartRelatedBody, boundary_of, split_parts


def _part(data: bytes) -> BodyPart:
    return BodyPart(len(data), lambda: iter([data[i : i + 7] for i in range(0, len(data), 7)]))


def test_body_length_is_exact_and_parses_with_the_stdlib():
    payloads = [os.urandom(1000), b"", b"--not-a-boundary\r\n" * 10]
    body = MultipartRelatedBody([_part(p) for p in payloads])
    raw = b"".join(body)
    assert len(raw) == len(body)
    message = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + body.content_type.encode() + b"\r\n\r\n" + raw
    )
    assert [part.get_payload(decode=True) for part in message.get_payload()] == payloads


@pytest.mark.parametrize("chunk_size", [1, 3, 17, 4096])
def test_split_parts_recovers_every_part_whatever_the_chunking(chunk_size):
    rng = random.Random(chunk_size)
    payloads = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 3000))) for _ in range(4)]
    payloads.append(b"\r\n--almost the boundary\r\n")
    body = MultipartRelatedBody([_part(p) for p in payloads])
    raw = b"preamble text\r\n" + b"".join(body)
    chunks = [raw[i : i + chunk_size] for i in range(0, len(raw), chunk_size)]
    received: list[bytearray] = []
    headers_seen: list[dict[str, str]] = []

    def open_part(headers: dict[str, str]):
        headers_seen.append(headers)
        received.append(bytearray())
        return received[-1].extend

    count = split_parts(chunks, boundary_of(body.content_type), open_part)
    assert count == len(payloads)
    assert [bytes(r) for r in received] == payloads
    assert all(h["content-type"] == "application/dicom" for h in headers_seen)


def test_split_parts_reports_a_body_cut_short():
    body = MultipartRelatedBody([_part(b"x" * 100)])
    raw = b"".join(body)[:-30]
    with pytest.raises(ValueError, match="ended before its closing boundary"):
        split_parts([raw], body.boundary, lambda headers: (lambda data: None))


def test_boundary_of_quoted_and_bare():
    assert boundary_of('multipart/related; type="application/dicom"; boundary="abc"') == "abc"
    assert boundary_of("multipart/related; boundary=xyz; type=application/dicom") == "xyz"
    with pytest.raises(ValueError):
        boundary_of("application/dicom")


def test_a_part_that_changes_size_is_an_error():
    body = MultipartRelatedBody([BodyPart(10, lambda: iter([b"12345"]))])
    with pytest.raises(OSError, match="changed size"):
        b"".join(body)
