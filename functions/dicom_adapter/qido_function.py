"""The `qido` Cloud Function's body: C-FIND identifiers answered from the store over HTTP.

In cloud mode the edge does not talk to the DICOM store itself; it POSTs the identifier (DICOM
JSON) and gets the matches back as they are found, one JSON object per line (NDJSON), so the
edge can send Pending responses while the store is still being paged, and closing the
connection (C-CANCEL) stops the paging. The last line is {"done": true} or an error, so a cut
answer is never taken for a complete one. The translation is qido.py, the same code the edge
runs in process in local mode.

Request:  {"purpose": "find" | "resolve" | "plan", "model": "PATIENT" | "STUDY",
           "identifier": {...}, "fuzzy": bool}
Lines:    {"match": {...}} (find) | {"instance": {InstanceRef fields}} (resolve, plan)
          | {"series": {SeriesRef fields}} (plan)
          | {"error": {"status": 0xA900, "comment": "..."}} | {"done": true}
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import Any, Iterator

from flask import Request, Response
from pydicom.dataset import Dataset

from . import qido
from .dicomweb import DicomWebClient
from .logs import fields
from .store_profiles import StoreProfile

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
PURPOSES = ("find", "resolve", "plan")


def respond(
    request: Request, client: DicomWebClient, *, fuzzy: bool = False, page_size: int = 500, profile: StoreProfile | None = None
) -> Response:
    """Answer one qido request (malformed ones with HTTP 400 and the reason)."""
    try:
        body = json.loads(request.get_data(as_text=True) or "null")
        purpose = body.get("purpose", "find")
        model = body["model"]
        if purpose not in PURPOSES or model not in qido.LEVELS_OF_MODEL:
            raise ValueError(f"purpose must be one of {PURPOSES} and model one of {tuple(qido.LEVELS_OF_MODEL)}")
        identifier = Dataset.from_json(body["identifier"])
        fuzzy = bool(body.get("fuzzy", fuzzy))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        reason = f"malformed qido request: {type(exc).__name__}: {str(exc)[:200]}"
        log.error("malformed qido request", extra=fields(error=type(exc).__name__))
        return Response(json.dumps({"error": reason}), status=400, mimetype="application/json")
    return Response(_lines(client, purpose, identifier, model, fuzzy, page_size, profile), mimetype=NDJSON)


def _lines(
    client: DicomWebClient, purpose: str, identifier: Dataset, model: str, fuzzy: bool, page_size: int, profile: StoreProfile | None
) -> Iterator[str]:
    started = time.monotonic()
    count = 0
    try:
        if purpose == "find":
            for match in qido.find_json(client, identifier, model, fuzzy=fuzzy, page_size=page_size, profile=profile):
                count += 1
                yield _line({"match": match})
        elif purpose == "resolve":
            for ref in qido.resolve_instances(client, identifier, model, page_size=page_size, profile=profile):
                count += 1
                yield _line({"instance": asdict(ref)})
        else:
            for item in qido.plan_retrieval(client, identifier, model, page_size=page_size, profile=profile):
                count += 1
                yield _line({"series" if isinstance(item, qido.SeriesRef) else "instance": asdict(item)})
    except qido.QueryError as exc:
        log.error("qido failed", extra=fields(purpose=purpose, status=f"0x{exc.code:04X}", reason=exc.comment))
        yield _line({"error": {"status": exc.code, "comment": exc.comment}})
        return
    except Exception as exc:  # the edge must hear of it, not see a short answer
        log.exception("qido failed unexpectedly", extra=fields(purpose=purpose))
        yield _line({"error": {"status": qido.UNABLE_TO_PROCESS, "comment": f"qido error: {type(exc).__name__}"}})
        return
    log.info("qido done", extra=fields(purpose=purpose, results=count, duration_ms=int((time.monotonic() - started) * 1000)))
    yield _line({"done": True})


def _line(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"
