"""Credentials of DICOMweb destinations, by reference: the configuration (and every export
message that carries a destination) names where a secret lives, never the secret itself.

  projects/P/secrets/S[/versions/V]   Secret Manager (version `latest` if none), read with ADC
  env:NAME                            an environment variable of the process
  file:PATH                           a file (a Kubernetes secret volume, a local run)

Values are cached for a few minutes, so a rotated token is picked up without a restart.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import requests

_SECRET_MANAGER_NAME = re.compile(r"projects/[^/]+/secrets/[^/]+(/versions/[^/]+)?")
CACHE_S = 300.0

_cache: dict[str, tuple[float, str]] = {}
_lock = threading.Lock()


def check_secret_reference(reference: object) -> str:
    """The reference if it has one of the accepted forms (ValueError otherwise)."""
    if isinstance(reference, str) and (
        _SECRET_MANAGER_NAME.fullmatch(reference)
        or (reference.startswith("env:") and len(reference) > 4)
        or (reference.startswith("file:") and len(reference) > 5)
    ):
        return reference
    raise ValueError(f"secret reference {reference!r} is not projects/P/secrets/S[/versions/V], env:NAME or file:PATH")


def resolve_secret(reference: str) -> str:
    """The secret's current value (cached for CACHE_S seconds). Raises LookupError with a
    reason that names the reference but never the value."""
    now = time.monotonic()
    with _lock:
        cached = _cache.get(reference)
        if cached and now - cached[0] < CACHE_S:
            return cached[1]
    value = _read(check_secret_reference(reference))
    with _lock:
        _cache[reference] = (now, value)
    return value


def _read(reference: str) -> str:
    if reference.startswith("env:"):
        value = os.environ.get(reference[4:])
        if value is None:
            raise LookupError(f"secret {reference}: environment variable not set")
        return value.strip()
    if reference.startswith("file:"):
        try:
            return Path(reference[5:]).read_text().strip()
        except OSError as exc:
            raise LookupError(f"secret {reference}: {exc.strerror or type(exc).__name__}") from None
    name = reference if "/versions/" in reference else f"{reference}/versions/latest"
    from google.api_core import exceptions as api_exceptions
    from google.cloud import secretmanager

    try:
        response = secretmanager.SecretManagerServiceClient().access_secret_version(name=name, timeout=30)
    except api_exceptions.GoogleAPICallError as exc:
        raise LookupError(f"secret {name}: {type(exc).__name__}") from None
    return response.payload.data.decode("utf-8").strip()


class BearerAuth(requests.auth.AuthBase):
    """Authorization: Bearer <token>, the token read (and re-read after CACHE_S) by reference."""

    def __init__(self, reference: str) -> None:
        self.reference = reference

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {resolve_secret(self.reference)}"
        return request


class BasicAuth(requests.auth.HTTPBasicAuth):
    """HTTP basic auth with the password read by reference on each request (cached)."""

    def __init__(self, username: str, reference: str) -> None:
        super().__init__(username, "")
        self.reference = reference

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        self.password = resolve_secret(self.reference)
        return super().__call__(request)
