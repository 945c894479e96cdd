"""Keyed, deterministic replacement UIDs.

A de-identified copy must get new UIDs, yet the pipeline is at-least-once: an instance sent
twice, or the other instances of its study, must map to the same new UIDs, or a re-send would
be a conflict and a study would fall apart. So a new UID is a function of the old one and a
secret key: HMAC-SHA256(key, uid), its first 128 bits made a version-8 (custom) UUID and written
as a `2.25.<decimal>` UID (PS3.5 B.2). Without the key the mapping cannot be inverted or
recomputed; with another key it gives other UIDs.
"""

from __future__ import annotations

import hashlib
import hmac


def keyed_uid(key: bytes, uid: str) -> str:
    """The replacement for `uid` under `key` (at most 44 characters: fits the UI limit of 64)."""
    digest = bytearray(hmac.new(key, uid.strip().encode("ascii", "replace"), hashlib.sha256).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80  # UUID version 8 (RFC 9562: custom)
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return f"2.25.{int.from_bytes(digest, 'big')}"


def keyed_token(key: bytes, purpose: str, value: str, length: int = 16) -> str:
    """An uppercase hex pseudonym for `value` (fits CS, SH and AE), the same for the same value
    under the same key, so replaced identifiers still link a patient's instances."""
    message = f"{purpose}\x00{value.strip()}".encode("utf-8", "replace")
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:length].upper()


def keyed_int(key: bytes, purpose: str, value: str) -> int:
    """A non-negative integer derived from `value` under `key` (e.g. a patient's date shift)."""
    message = f"{purpose}\x00{value.strip()}".encode("utf-8", "replace")
    return int.from_bytes(hmac.new(key, message, hashlib.sha256).digest()[:8], "big")
