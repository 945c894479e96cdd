"""A small DICOMweb client: STOW-RS of Part-10 files, WADO-RS digests, instance deletion.

Modelled on dicomweb-client's verb-noun methods, but streaming: `store_instance` sends the file
as it lies in the buffer (byte-exact, bounded memory) and reports what the store said about it
in a `StowOutcome`; nothing here retries or decides, `upload.py` does.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

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
# answers 200 for an identical re-upload and 409 (failure reason 0x0110) for different content,
# so for it the HTTP status decides; 45070 (0xB00E) is what Azure's DICOM service gives for any
# existing instance, and 0x0111 the DIMSE "duplicate SOP instance" some gateways pass through.
DUPLICATE_FAILURE_REASONS = frozenset({0x0111, 45070})


class StowVerdict(enum.Enum):
    STORED = "stored"
    ALREADY_EXISTS = "already_exists"  # the store holds an instance with this UID: compare it
    TRANSIENT = "transient"
    REJECTED = "rejected"


@dataclass(frozen=True)
class StowOutcome:
    verdict: StowVerdict
    http_status: int | None
    reason: str
    failure_reason: int | None = None


@dataclass(frozen=True)
class DicomWebAddress:
    """A DICOMweb service root such as http://host:8042/dicom-web (no trailing slash)."""

    url: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.rstrip("/"))

    def instance_url(self, study: str, series: str, sop_instance: str) -> str:
        return f"{self.url}/studies/{study}/series/{series}/instances/{sop_instance}"


class DicomWebClient:
    def __init__(
        self,
        address: DicomWebAddress,
        session: requests.Session,
        *,
        retry_status_codes: frozenset[int],
        timeout: tuple[float, float] = (10.0, 300.0),
    ) -> None:
        self.address = address
        self.session = session
        self.retry_status_codes = retry_status_codes
        self.timeout = timeout

    def store_instance(self, part10: BodyPart, sop_instance_uid: str) -> StowOutcome:
        """STOW-RS one Part-10 file and say what became of `sop_instance_uid`."""
        body = MultipartRelatedBody([part10])
        try:
            response = self.session.post(
                f"{self.address.url}/studies",
                data=body,
                headers={"Content-Type": body.content_type, "Accept": "application/dicom+json"},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            return StowOutcome(StowVerdict.TRANSIENT, None, f"{type(exc).__name__}: {_short(str(exc))}")
        with response:
            return self._judge_stow(response, sop_instance_uid)

    def _judge_stow(self, response: requests.Response, sop_instance_uid: str) -> StowOutcome:
        status = response.status_code
        body = _json_or_none(response)
        failure = _failure_reason_for(body, sop_instance_uid)
        message = _store_message(response, body)
        if status in self.retry_status_codes:
            return StowOutcome(StowVerdict.TRANSIENT, status, message, failure)
        if status == 409 or (failure is not None and failure in DUPLICATE_FAILURE_REASONS):
            return StowOutcome(StowVerdict.ALREADY_EXISTS, status, message, failure)
        if failure is not None:
            # 0xA7xx is "out of resources": the store may take it later.
            verdict = StowVerdict.TRANSIENT if failure & 0xFF00 == 0xA700 else StowVerdict.REJECTED
            return StowOutcome(verdict, status, f"failure reason 0x{failure:04X}; {message}", failure)
        if 200 <= status < 300:
            return StowOutcome(StowVerdict.STORED, status, message)
        return StowOutcome(StowVerdict.REJECTED, status, message)

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


def _json_or_none(response: requests.Response) -> Any:
    if "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        return response.json()
    except (ValueError, json.JSONDecodeError):
        return None


def _failure_reason_for(body: Any, sop_instance_uid: str) -> int | None:
    """The FailureReason the store gave for our instance in a FailedSOPSequence, if any."""
    if not isinstance(body, dict):
        return None
    for item in body.get(FAILED_SOP_SEQUENCE, {}).get("Value", []) or []:
        uids = item.get(REFERENCED_SOP_INSTANCE_UID, {}).get("Value", [])
        if uids and uids[0] != sop_instance_uid:
            continue
        reasons = item.get(FAILURE_REASON, {}).get("Value", [])
        return int(reasons[0]) if reasons else 0xC000
    return None


def _store_message(response: requests.Response, body: Any) -> str:
    """A short reason for logs and dead letters: HTTP status plus what the store said."""
    text = f"HTTP {response.status_code} {response.reason or ''}".strip()
    if body is None and response.text:
        text += f": {_short(response.text)}"
    return text


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
