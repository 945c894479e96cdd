"""Logging: readable lines locally, Cloud Logging structured JSON in the cloud; never PHI.

Code logs a short message plus fields (`log.info("stored", extra=fields(sop_instance_uid=...))`).
Fields may hold UIDs, AE titles, sizes, statuses and durations only (DESIGN invariant 5); the
text formatter appends them as key=value, the JSON handler puts them in `jsonPayload` and the
AE titles and UIDs also in `logging.googleapis.com/labels`.

pynetdicom's own loggers print data sets and identifiers at DEBUG and INFO, so they are held at
WARNING whatever the verbosity.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

LABEL_KEYS = ("calling_aet", "called_aet", "sop_instance_uid", "study_instance_uid", "store")
CHATTY_LIBRARIES = ("pynetdicom", "urllib3", "google", "werkzeug")


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call: structured fields for either format."""
    clean = {k: v for k, v in values.items() if v is not None}
    labels = {k: str(clean[k]) for k in LABEL_KEYS if k in clean}
    return {"json_fields": clean, "labels": labels}


class TextFormatter(logging.Formatter):
    """`2026-11-23 01:02:03,456 INFO [MainProcess] dicom_adapter.upload stored sop_instance_uid=1.2.3 size=70312`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(processName)s] %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = getattr(record, "json_fields", None)
        if extra:
            head, sep, tail = text.partition("\n")
            pairs = " ".join(f"{k}={_quote(v)}" for k, v in extra.items())
            text = f"{head} {pairs}{sep}{tail}"
        return text


def _quote(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


def configure_logging(*, json_format: bool = False, verbose: bool = False, stream: Any = None) -> None:
    """Set up the root logger once for a process (the CLI and the functions call it)."""
    stream = stream or (sys.stdout if json_format else sys.stderr)
    if json_format:
        from google.cloud.logging_v2.handlers import StructuredLogHandler

        # With the project known, a request's trace header becomes logging.googleapis.com/trace
        # (projects/P/traces/T), so Cloud Logging groups a function's lines per request.
        handler: logging.Handler = StructuredLogHandler(stream=stream, project_id=os.environ.get("GOOGLE_CLOUD_PROJECT"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
