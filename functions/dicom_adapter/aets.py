"""The AET dictionary: the DIMSE peers we know, in the Google adapter's JSON format.

`[{"name": "PACS", "host": "10.0.0.5", "port": 104}, ...]`, from a file (--aet_dictionary), a
string (--aet_dictionary_inline) or the environment variable ENV_AETS_JSON. Our extension:
`"tls": true` makes associations we open to that peer (C-MOVE, commitment reports, C-STORE
routing) use DIMSE TLS (dimse_tls.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Peer:
    name: str
    host: str
    port: int
    tls: bool = False  # we connect to it with TLS


class AetDictionaryError(ValueError):
    """The dictionary does not parse; the message names the entry and what is wrong."""


def parse_aet_dictionary(text: str, source: str = "AET dictionary") -> dict[str, Peer]:
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AetDictionaryError(f"{source}: not JSON: {exc}") from None
    if not isinstance(entries, list):
        raise AetDictionaryError(f"{source}: expected a JSON list of {{name, host, port}} objects")
    peers: dict[str, Peer] = {}
    for index, entry in enumerate(entries):
        where = f"{source}: entry {index}"
        if not isinstance(entry, dict):
            raise AetDictionaryError(f"{where}: not an object")
        name, host, port = entry.get("name"), entry.get("host"), entry.get("port")
        if not isinstance(name, str) or not 0 < len(name.strip()) <= 16:
            raise AetDictionaryError(f"{where}: 'name' must be an AE title of 1 to 16 characters")
        if not isinstance(host, str) or not host:
            raise AetDictionaryError(f"{where} ({name}): 'host' is missing")
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise AetDictionaryError(f"{where} ({name}): 'port' must be a number from 1 to 65535")
        tls = entry.get("tls", False)
        if not isinstance(tls, bool):
            raise AetDictionaryError(f"{where} ({name}): 'tls' must be true or false")
        if name.strip() in peers:
            raise AetDictionaryError(f"{where}: AE title {name!r} is listed twice")
        peers[name.strip()] = Peer(name.strip(), host, port, tls)
    return peers


def load_aet_dictionary(path: str | None = None, inline: str | None = None) -> dict[str, Peer]:
    """The dictionary from a file or an inline JSON string (the file wins); empty if neither."""
    if path:
        return parse_aet_dictionary(Path(path).read_text(), source=str(path))
    if inline:
        return parse_aet_dictionary(inline, source="inline AET dictionary")
    return {}
