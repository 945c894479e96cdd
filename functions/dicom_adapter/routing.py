"""Routing rules: which destination(s) an instance goes to, in the Google adapter's format.

The configuration is a JSON list (`--destination_config_path`, `--destination_config_inline`
or env ENV_DESTINATION_CONFIG_JSON). Each entry has a `filter` and one or more destinations:

  {"filter": "AETitle=CT01&Modality=CT", "dicomweb_destination": "https://.../dicomWeb"}
  {"filter": "Modality=MR", "name": "PACS", "host": "10.0.0.5", "port": 104}     (DIMSE)
  {"filter": "CalledAETitle=RESEARCH", "dimse_destination": "PACS"}            (AET dictionary name)
  {"filter": "Modality=US", "destinations": [{"dicomweb_destination": "..."}, {"dimse_destination": "PACS"}]}

The first two forms are Google's, the others our extensions. A filter is `KEY=VALUE` terms
joined by `&`, all of which must hold: `AETitle` is the calling AE title (Google's),
`CalledAETitle` the called one (so one port can serve several virtual AEs), any other key a
DICOM keyword or tag (`00080060`, `(0008,0060)`) matched against the instance's header as
C-FIND matches: `\\` separates alternatives, `*` and `?` are wildcards, an attribute the
instance lacks or leaves empty never matches. An empty filter matches everything.

First match wins unless `send_to_all_matching` (Google's `--send_to_all_matching_destinations`);
an instance no rule matches goes to the default store (`--dicomweb_address`), or is refused
if there is none.

Export rules (`export=True`, docs/export.md) use the same language on the stored instance:
there is no association, so `AETitle` and `CalledAETitle` are refused there, and an instance
no rule matches is not exported. A DICOMweb destination may carry an `auth` (ADC, a bearer
token or basic credentials, the secrets by reference: see credentials.py).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

from .aets import Peer
from .tags import tag_of

if TYPE_CHECKING:
    from .transforms import Transform

# A destination entry's optional keys of a transform (transforms.TRANSFORM_KEYS): the transforms
# package (numpy, codecs, the profile tables) is imported only where an entry or event has one,
# not in every listener process.
_TRANSFORM_KEYS = ("deidentify", "transfer_syntax", "allow_lossy", "max_pixel_bytes")

DEFAULT_LABEL = "default store"  # the uploader's own store, where an event names no destination
CALLING_AE_KEY = "AETitle"
CALLED_AE_KEY = "CalledAETitle"
ENV_DESTINATION_CONFIG_JSON = "ENV_DESTINATION_CONFIG_JSON"


class RoutingConfigError(ValueError):
    """The routing configuration cannot be used; the message names the entry and the reason."""


@dataclass(frozen=True)
class DestinationAuth:
    """How to authenticate to a DICOMweb destination. Secrets travel by reference only
    (a Secret Manager name, env:NAME or file:PATH), never their values."""

    kind: str  # "adc" | "bearer" | "basic"
    secret: str = ""  # the token (bearer) or password (basic) reference
    username: str = ""

    def to_json(self) -> dict[str, str]:
        return {k: v for k, v in (("kind", self.kind), ("secret", self.secret), ("username", self.username)) if v}

    @classmethod
    def from_json(cls, data: Any) -> "DestinationAuth":
        if not isinstance(data, dict) or data.get("kind") not in ("adc", "bearer", "basic"):
            raise ValueError(f"not a destination auth: {data!r}")
        return cls(data["kind"], str(data.get("secret", "")), str(data.get("username", "")))


@dataclass(frozen=True)
class Destination:
    """Where an instance goes: a DICOMweb store (by STOW-RS) or a DIMSE peer (by C-STORE)."""

    kind: str  # "dicomweb" | "dimse"
    address: str = ""  # DICOMweb service root
    aet: str = ""
    host: str = ""
    port: int = 0
    auth: DestinationAuth | None = None  # DICOMweb only; None: ADC for the Healthcare API, else none
    tls: bool = False  # DIMSE only: over TLS (the peer's "tls" in the AET dictionary or the rule)
    # A de-identified and/or transcoded copy instead of the instance as received (transforms/).
    transform: Transform | None = None

    @classmethod
    def dicomweb(cls, address: str, auth: DestinationAuth | None = None) -> "Destination":
        root = address.rstrip("/")
        # Google's examples name the .../dicomWeb/studies URL; the service root is its parent.
        return cls("dicomweb", address=root[: -len("/studies")] if root.endswith("/studies") else root, auth=auth)

    @classmethod
    def dimse(cls, peer: Peer) -> "Destination":
        return cls("dimse", aet=peer.name, host=peer.host, port=peer.port, tls=peer.tls)

    @property
    def label(self) -> str:
        """Human name for logs, status and redrive: the URL or AE@host:port, and what is done
        to its copy (a plain and a transformed copy to one store are two destinations)."""
        where = self.address if self.kind == "dicomweb" else f"{self.aet}@{self.host}:{self.port}"
        return f"{where} [{self.transform.summary}]" if self.transform is not None else where

    @property
    def id(self) -> str:
        """Short stable ID, used in buffer entry names."""
        return hashlib.sha256(self.label.encode()).hexdigest()[:10]

    def to_json(self) -> dict[str, Any]:
        transform = {"transform": self.transform.to_json()} if self.transform is not None else {}
        if self.kind == "dicomweb":
            return {"kind": "dicomweb", "address": self.address, **({"auth": self.auth.to_json()} if self.auth else {}), **transform}
        return {"kind": "dimse", "aet": self.aet, "host": self.host, "port": self.port, **({"tls": True} if self.tls else {}), **transform}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Destination":
        transform = None
        if data.get("transform"):
            from .transforms import Transform

            transform = Transform.from_json(data["transform"])
        if data.get("kind") == "dicomweb" and isinstance(data.get("address"), str):
            destination = cls.dicomweb(data["address"], DestinationAuth.from_json(data["auth"]) if data.get("auth") else None)
        elif data.get("kind") == "dimse" and all(isinstance(data.get(k), t) for k, t in (("aet", str), ("host", str), ("port", int))):
            destination = cls("dimse", aet=data["aet"], host=data["host"], port=data["port"], tls=data.get("tls") is True)
        else:
            raise ValueError(f"not a destination: {data!r}")
        return replace(destination, transform=transform)


@dataclass(frozen=True)
class AttributeTerm:
    tag: int
    keyword: str
    alternatives: tuple[str, ...]

    def matches(self, dataset: Dataset) -> bool:
        element = dataset.get(self.tag)
        if element is None or element.value in (None, "", b""):
            return False
        values = element.value if element.VM > 1 else [element.value]
        return any(_matches_value(str(value).strip(), alternative) for value in values for alternative in self.alternatives)


def _matches_value(value: str, pattern: str) -> bool:
    if "*" in pattern or "?" in pattern:
        return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))
    return value == pattern


@dataclass(frozen=True)
class Filter:
    text: str
    calling_aets: tuple[str, ...] = ()
    called_aets: tuple[str, ...] = ()
    terms: tuple[AttributeTerm, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "Filter":
        calling: tuple[str, ...] = ()
        called: tuple[str, ...] = ()
        terms: list[AttributeTerm] = []
        for part in (p.strip() for p in text.strip().split("&")):
            if not part:
                if text.strip():
                    raise ValueError("empty term (two '&' in a row, or a trailing '&')")
                continue
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key or not value:
                raise ValueError(f"term {part!r} is not KEY=VALUE")
            alternatives = tuple(v.strip() for v in value.split("\\") if v.strip())
            if key == CALLING_AE_KEY:
                calling = alternatives
            elif key == CALLED_AE_KEY:
                called = alternatives
            else:
                tag = tag_of(key)
                terms.append(AttributeTerm(tag, keyword_for_tag(tag) or f"{tag:08X}", alternatives))
        return cls(text, calling, called, tuple(terms))

    def matches(self, calling_aet: str, called_aet: str, dataset: Dataset | None) -> bool:
        if self.calling_aets and calling_aet.strip() not in self.calling_aets:
            return False
        if self.called_aets and called_aet.strip() not in self.called_aets:
            return False
        if self.terms and dataset is None:
            return False
        return all(term.matches(dataset) for term in self.terms)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Rule:
    index: int
    filter: Filter
    destinations: tuple[Destination, ...]


@dataclass(frozen=True)
class RoutingTable:
    """The rules, and whether there is a default store (the uploader's own, `--dicomweb_address`)
    for instances no rule matches. In routes, None stands for that default store."""

    rules: tuple[Rule, ...]
    send_to_all_matching: bool = False
    has_default: bool = True

    @property
    def needs_dataset(self) -> bool:
        """Whether any rule looks at the data set (otherwise the AE titles decide)."""
        return any(rule.filter.terms for rule in self.rules)

    @property
    def tags(self) -> list[int]:
        """The data set attributes the rules look at (all a header read must fetch)."""
        return sorted({term.tag for rule in self.rules for term in rule.filter.terms})

    @property
    def called_aets(self) -> set[str]:
        """Called AE titles the rules name: the listener answers to these as well."""
        return {aet for rule in self.rules for aet in rule.filter.called_aets}

    @property
    def destinations(self) -> list[Destination]:
        """Every destination the rules name, each once."""
        seen: dict[str, Destination] = {}
        for destination in (d for rule in self.rules for d in rule.destinations):
            seen.setdefault(destination.label, destination)
        return list(seen.values())

    def route(self, calling_aet: str, called_aet: str, dataset: Dataset | None) -> tuple[Destination | None, ...]:
        """The instance's destinations, each once, in rule order; (None,) for the default store
        if no rule matched; () if none matched and there is no default store."""
        chosen: dict[str, Destination] = {}
        for rule in self.rules:
            if rule.filter.matches(calling_aet, called_aet, dataset):
                for destination in rule.destinations:
                    chosen.setdefault(destination.label, destination)
                if not self.send_to_all_matching:
                    break
        if not chosen:
            return (None,) if self.has_default else ()
        return tuple(chosen.values())


def parse_routing(
    text: str,
    *,
    source: str,
    peers: Mapping[str, Peer],
    send_to_all_matching: bool = False,
    has_default: bool = True,
    export: bool = False,
) -> RoutingTable:
    """Parse and check a rule file; `export`: rules for the export side (no AE titles, no
    default store)."""
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RoutingConfigError(f"{source}: not JSON: {exc}") from None
    if not isinstance(entries, list):
        raise RoutingConfigError(f"{source}: expected a JSON list of {{filter, destination}} entries")
    rules: list[Rule] = []
    seen_filters: dict[str, int] = {}
    lines = _entry_lines(text)
    for index, entry in enumerate(entries):
        where = f"{source}: entry {index}" + (f" (line {lines[index]})" if index < len(lines) else "")
        if not isinstance(entry, dict):
            raise RoutingConfigError(f"{where}: not a JSON object")
        if not isinstance(entry.get("filter"), str):
            raise RoutingConfigError(f"{where}: 'filter' is missing (use \"\" to match everything)")
        try:
            rule_filter = Filter.parse(entry["filter"])
        except ValueError as exc:
            raise RoutingConfigError(f"{where} (filter {entry['filter']!r}): {exc}") from None
        if export and (rule_filter.calling_aets or rule_filter.called_aets):
            raise RoutingConfigError(
                f"{where} (filter {entry['filter']!r}): {CALLING_AE_KEY} and {CALLED_AE_KEY} name the AEs of an incoming "
                "association; an export rule sees only the stored instance: filter on its attributes (e.g. Modality, StationName)"
            )
        destinations = _destinations_of(entry, peers, where)
        if not send_to_all_matching and rule_filter.text.strip() in seen_filters:
            raise RoutingConfigError(
                f"{where}: same filter as entry {seen_filters[rule_filter.text.strip()]}; with first-match routing it could never "
                "match (use --send_to_all_matching_destinations, or list several destinations in one entry)"
            )
        seen_filters[rule_filter.text.strip()] = index
        rules.append(Rule(index, rule_filter, destinations))
    return RoutingTable(tuple(rules), send_to_all_matching, has_default and not export)


def _entry_lines(text: str) -> list[int]:
    """The line each top-level entry of a JSON list starts on, so errors can point at it."""
    decoder = json.JSONDecoder()
    lines: list[int] = []
    position = text.index("[") + 1
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            return lines
        lines.append(text.count("\n", 0, position) + 1)
        _, position = decoder.raw_decode(text, position)


def _destinations_of(entry: Mapping[str, Any], peers: Mapping[str, Peer], where: str) -> tuple[Destination, ...]:
    if "destinations" in entry:
        items = entry["destinations"]
        if not isinstance(items, list) or not items:
            raise RoutingConfigError(f"{where}: 'destinations' must be a non-empty list")
        return tuple(_destination_of(item, peers, f"{where}, destination {i}") for i, item in enumerate(items))
    return (_destination_of(entry, peers, where),)


def _destination_of(item: Any, peers: Mapping[str, Peer], where: str) -> Destination:
    """A destination entry, with the transform its optional keys name (transforms/)."""
    destination = _target_of(item, peers, where)
    if not any(key in item for key in _TRANSFORM_KEYS):
        return destination
    from .transforms import Transform, TransformConfigError

    try:
        return replace(destination, transform=Transform.from_json(item))
    except TransformConfigError as exc:
        raise RoutingConfigError(f"{where}: {exc}") from None


def _target_of(item: Any, peers: Mapping[str, Peer], where: str) -> Destination:
    if not isinstance(item, dict):
        raise RoutingConfigError(f"{where}: not a JSON object")
    if isinstance(item.get("dicomweb_destination"), str) and item["dicomweb_destination"].strip():
        url = item["dicomweb_destination"].strip()
        if not url.startswith(("http://", "https://")):
            raise RoutingConfigError(f"{where}: dicomweb_destination must be an http(s) URL")
        return Destination.dicomweb(url, _auth_of(item.get("auth"), where) if "auth" in item else None)
    if "dimse_destination" in item:
        name = item["dimse_destination"]
        if not isinstance(name, str) or name.strip() not in peers:
            raise RoutingConfigError(f"{where}: dimse_destination {name!r} is not in the AET dictionary")
        return Destination.dimse(peers[name.strip()])
    if "host" in item or "port" in item:
        name, host, port = item.get("name"), item.get("host"), item.get("port")
        if not isinstance(name, str) or not 0 < len(name.strip()) <= 16:
            raise RoutingConfigError(f"{where}: a DIMSE destination needs 'name', its AE title (1 to 16 characters)")
        if not isinstance(host, str) or not host:
            raise RoutingConfigError(f"{where}: a DIMSE destination needs 'host'")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise RoutingConfigError(f"{where}: 'port' must be a number from 1 to 65535")
        if not isinstance(item.get("tls", False), bool):
            raise RoutingConfigError(f"{where}: 'tls' must be true or false")
        return Destination.dimse(Peer(name.strip(), host, port, item.get("tls", False)))
    raise RoutingConfigError(f"{where}: no destination (dicomweb_destination, dimse_destination, or name/host/port)")


def _auth_of(spec: Any, where: str) -> DestinationAuth:
    """`"adc"`, `{"bearer_token_secret": REF}` or `{"username": U, "password_secret": REF}`."""
    from .credentials import check_secret_reference

    try:
        if spec == "adc":
            return DestinationAuth("adc")
        if isinstance(spec, dict) and set(spec) == {"bearer_token_secret"}:
            return DestinationAuth("bearer", check_secret_reference(spec["bearer_token_secret"]))
        if isinstance(spec, dict) and set(spec) == {"username", "password_secret"} and isinstance(spec["username"], str) and spec["username"]:
            return DestinationAuth("basic", check_secret_reference(spec["password_secret"]), spec["username"])
    except ValueError as exc:
        raise RoutingConfigError(f"{where}: auth: {exc}") from None
    raise RoutingConfigError(
        f"{where}: auth must be \"adc\", {{\"bearer_token_secret\": REF}} or {{\"username\": U, \"password_secret\": REF}}"
    )


def load_routing(
    path: str | None,
    inline: str | None,
    *,
    peers: Mapping[str, Peer],
    send_to_all_matching: bool = False,
    has_default: bool = True,
    export: bool = False,
) -> RoutingTable:
    """The routing table from a file or inline JSON (the file wins); only the default if neither."""
    options = dict(peers=peers, send_to_all_matching=send_to_all_matching, has_default=has_default, export=export)
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise RoutingConfigError(f"{path}: {exc.strerror or exc}") from None
        return parse_routing(text, source=str(path), **options)  # type: ignore[arg-type]
    if inline:
        return parse_routing(inline, source="inline destination config", **options)  # type: ignore[arg-type]
    return RoutingTable((), send_to_all_matching, has_default and not export)


def read_routing_header(path: Path, tags: Iterable[int]) -> Dataset:
    """The attributes the rules need, read from a Part-10 file's header; never the pixel data,
    and long values are not loaded (defer_size), so memory stays small whatever the instance."""
    from pydicom import dcmread

    return dcmread(path, stop_before_pixels=True, specific_tags=list(tags), defer_size=4096)
