"""The edge's client of the `qido` Cloud Function (cloud mode; `--qido_url`).

Same interface as the in-process translation (qido.find / resolve_instances / plan_retrieval), so the
C-FIND and retrieve handlers do not know which one answers. The answer is read line by line
as it arrives (see qido_function.py); stopping the iteration closes the connection.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import requests
from pydicom.dataset import Dataset

from .qido import (
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    InstanceRef,
    QueryError,
    SeriesRef,
)


class QidoFunctionClient:
    def __init__(
        self,
        url: str,
        *,
        fuzzy: bool = False,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (10.0, 300.0),
    ) -> None:
        self.url = url
        self.fuzzy = fuzzy
        self.session = session or _session_for(url)
        self.timeout = timeout

    def find(self, identifier: Dataset, model: str) -> Iterator[Dataset]:
        for match in self.find_json(identifier, model):
            yield Dataset.from_json(match)

    def find_json(self, identifier: Dataset, model: str) -> Iterator[dict[str, Any]]:
        """The matches as the function sends them: DICOM JSON of the response identifiers."""
        for line in self._lines("find", identifier, model):
            yield line["match"]

    def resolve_instances(self, identifier: Dataset, model: str) -> Iterator[InstanceRef]:
        for line in self._lines("resolve", identifier, model):
            yield InstanceRef(**line["instance"])

    def plan_retrieval(self, identifier: Dataset, model: str) -> Iterator[InstanceRef | SeriesRef]:
        for line in self._lines("plan", identifier, model):
            yield SeriesRef(**line["series"]) if "series" in line else InstanceRef(**line["instance"])

    def _lines(self, purpose: str, identifier: Dataset, model: str) -> Iterator[dict[str, Any]]:
        body = {"purpose": purpose, "model": model, "identifier": identifier.to_json_dict(), "fuzzy": self.fuzzy}
        try:
            response = self.session.post(self.url, json=body, stream=True, timeout=self.timeout)
        except requests.RequestException as exc:
            raise QueryError(OUT_OF_RESOURCES, f"qido function unavailable: {type(exc).__name__}") from None
        with response:
            if response.status_code == 400:
                raise QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "qido function refused the request (HTTP 400)")
            if response.status_code != 200:
                raise QueryError(OUT_OF_RESOURCES, f"qido function answered HTTP {response.status_code}{_reason(response)}")
            for raw in response.iter_lines():
                if not raw:
                    continue
                line = json.loads(raw)
                if "error" in line:
                    raise QueryError(int(line["error"]["status"]), str(line["error"]["comment"]))
                if line.get("done"):
                    return
                yield line
        raise QueryError(OUT_OF_RESOURCES, "qido function answer was cut off")


def _reason(response: requests.Response) -> str:
    """The function's own reason for an error answer ({"error": "..."}), if it gave one."""
    try:
        reason = response.json().get("error")
    except (ValueError, AttributeError):
        return ""
    return f": {str(reason)[:120]}" if isinstance(reason, str) else ""


def _session_for(url: str) -> requests.Session:
    """Cloud Functions that only allow internal, authenticated callers want an ID token whose
    audience is the function's URL (refreshed by AuthorizedSession as it expires); a plain
    http:// URL (tests, local) needs none."""
    if not url.startswith("https://"):
        return requests.Session()
    from google.auth.transport.requests import AuthorizedSession, Request
    from google.oauth2 import id_token

    return AuthorizedSession(id_token.fetch_id_token_credentials(url, request=Request()))
