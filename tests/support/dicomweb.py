"""Minimal DICOMweb client calls for tests (STOW-RS, WADO-RS instance, DELETE).

Tests use these to seed a store and to read back what the adapter stored, independently of
the product's own DICOMweb client (a bug there must not hide itself in the assertion). They
work against Orthanc and the Healthcare API fake alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import requests

from .multipart import copy_single_part_to, encode_multipart_related, parse_multipart_related

__all__ = [
    "ACCEPT_ANY_TRANSFER_SYNTAX",
    "stow_rs",
    "retrieve_instance_part10",
    "retrieve_instance_to_file",
    "instance_url",
]

# Ask for the instance exactly as stored, never transcoded (PS3.18 8.7.3.5.2).
ACCEPT_ANY_TRANSFER_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def instance_url(base_url: str, study: str, series: str, sop: str) -> str:
    return f"{base_url.rstrip('/')}/studies/{study}/series/{series}/instances/{sop}"


def stow_rs(
    base_url: str,
    instances: Iterable[bytes | str | os.PathLike[str]],
    *,
    study_uid: str | None = None,
    timeout: float = 60.0,
    accept: str = "application/dicom+json",
) -> requests.Response:
    """POST Part-10 instances (bytes or paths) in one multipart/related request.

    Builds the body in memory: meant for seeding stores with small instances.
    """
    payloads = [
        item if isinstance(item, (bytes, bytearray)) else Path(item).read_bytes() for item in instances
    ]
    content_type, body = encode_multipart_related(payloads)
    url = f"{base_url.rstrip('/')}/studies" + (f"/{study_uid}" if study_uid else "")
    return requests.post(
        url, data=body, headers={"Content-Type": content_type, "Accept": accept}, timeout=timeout
    )


def retrieve_instance_part10(
    base_url: str,
    study: str,
    series: str,
    sop: str,
    *,
    accept: str = ACCEPT_ANY_TRANSFER_SYNTAX,
    timeout: float = 60.0,
) -> bytes:
    """WADO-RS one instance and return its Part-10 bytes (in memory)."""
    response = requests.get(
        instance_url(base_url, study, series, sop), headers={"Accept": accept}, timeout=timeout
    )
    response.raise_for_status()
    content_type = response.headers.get("Content-Type", "")
    if content_type.lower().startswith("application/dicom"):
        return response.content
    parts = parse_multipart_related(content_type, response.content)
    if len(parts) != 1:
        raise AssertionError(f"expected one part in the WADO-RS answer, got {len(parts)}")
    return parts[0][1]


def retrieve_instance_to_file(
    base_url: str,
    study: str,
    series: str,
    sop: str,
    dest: str | os.PathLike[str],
    *,
    accept: str = ACCEPT_ANY_TRANSFER_SYNTAX,
    timeout: float = 300.0,
    chunk_size: int = 1 << 20,
) -> int:
    """WADO-RS one instance streaming it into `dest`; return the number of bytes written.

    Memory stays at about one chunk whatever the instance size (for gigabyte instances).
    """
    with requests.get(
        instance_url(base_url, study, series, sop),
        headers={"Accept": accept},
        timeout=timeout,
        stream=True,
    ) as response:
        response.raise_for_status()
        content_type = response.headers.get("Content-Type", "")
        with open(dest, "wb") as out:
            chunks = response.iter_content(chunk_size=chunk_size)
            if content_type.lower().startswith("application/dicom"):
                for chunk in chunks:
                    out.write(chunk)
            else:
                copy_single_part_to(content_type, chunks, out)
            return out.tell()
