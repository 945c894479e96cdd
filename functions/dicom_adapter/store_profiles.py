"""What each DICOMweb store's QIDO-RS can be trusted to match: data, not code branches.

The adapter matches every answer itself (matching.py), so a store that returns too much costs
only time; a store that returns too little (a false negative) loses a match that C-FIND would
never show. So a store is sent a key only where it is known to match it at least as widely as
PS3.4 does, and every other key becomes an `includefield` and is matched by the adapter alone.
`conservative` is the default: it trusts only what every QIDO-RS server here was seen to get
right. `--qido_store_profile` / DICOM_ADAPTER_QIDO_STORE_PROFILE chooses another; the Orthanc
profiles are the ones tests/test_query.py proves against that Orthanc's own C-FIND.

Kinds of match: "single" (one value), "list" (several UIDs or values), "range" (dates),
"wildcard" (`*`/`?`). A profile lists, per VR, the kinds it trusts; `attributes` (if set) names
the only attributes the store matches on at all, `untrusted` attributes it gets wrong whatever
their VR; `plain_values_only` keeps values with anything but ASCII letters, digits, '.', '-' and
'_' from the store (one that does not decode them).
`contains` names the VRs whose keys the store may be sent as `*text*` where it cannot be trusted
with the key itself: `text` is the longest run of ASCII letters and digits every match holds
(matching.required_text), and the store must find every value holding it in any case, in any
component group. `PatientName=Jones^Ben^19` then asks Orthanc for `*Jones*`, a few studies
to match, instead of every study in the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from pydicom.datadict import keyword_for_tag

from .matching import RANGE_VRS, Key, required_text

DEFAULT_PROFILE = "conservative"
_PLAIN = re.compile(r"[A-Za-z0-9._-]*")


@dataclass(frozen=True)
class StoreProfile:
    name: str
    about: str
    trusted: Mapping[str, frozenset[str]]
    attributes: frozenset[str] | None = None
    untrusted: frozenset[str] = frozenset()
    plain_values_only: bool = False
    contains: frozenset[str] = frozenset()

    def trusts(self, key: Key) -> bool:
        """Whether the store may be sent `key` as a QIDO-RS match parameter."""
        if not self._matches_on(key):
            return False
        if self.plain_values_only and not all(_PLAIN.fullmatch(value) for value in key.values or ()):
            return False
        return match_kind(key) in self.trusted.get(key.vr, frozenset())

    def match_value(self, key: Key) -> str | None:
        """The QIDO-RS match value to send for `key`: the key's own value(s) where the store is
        trusted with it, else `*text*` where `contains` allows it, else None (the adapter alone
        matches it). Either returns at least every match of `key`."""
        if self.trusts(key):
            return ",".join(key.values or ())
        text = required_text(key) if key.vr in self.contains and self._matches_on(key) else None
        return f"*{text}*" if text else None

    def _matches_on(self, key: Key) -> bool:
        if key.universal or key.items is not None:
            return False
        keyword = keyword_for_tag(key.tag)
        return keyword not in self.untrusted and (self.attributes is None or keyword in self.attributes)


def match_kind(key: Key) -> str:
    values = key.values or ()
    if len(values) > 1:
        return "list"
    if key.vr in RANGE_VRS and "-" in values[0]:
        return "range"
    if "*" in values[0] or "?" in values[0]:
        return "wildcard"
    return "single"


_CONSERVATIVE = {
    "UI": frozenset({"single", "list"}),
    "DA": frozenset({"single", "range"}),
    "CS": frozenset({"single"}),
}
# What both Orthancs tested here match right: the conservative kinds and exact LO/SH values;
# and names by an ASCII text they must contain, which Orthanc's default (CaseSensitivePN false)
# finds in any case in the whole value.
_ORTHANC = {**_CONSERVATIVE, "LO": frozenset({"single"}), "SH": frozenset({"single"})}
_ORTHANC_CONTAINS = frozenset({"PN"})
_ORTHANC_ABOUT = ("conservative, exact LO/SH values of plain ASCII (PatientID, AccessionNumber, StudyID), "
                  "and names narrowed to a text of ASCII letters and digits they contain")

PROFILES: Mapping[str, StoreProfile] = MappingProxyType({
    profile.name: profile
    for profile in (
        StoreProfile(
            "conservative",
            "UIDs (one or a list), dates (one or a range), CS values; names and texts matched by the adapter",
            MappingProxyType(_CONSERVATIVE),
        ),
        StoreProfile(
            # Debian 12: orthanc 1.10 with orthanc-dicomweb 1.7. Its QIDO-RS does not
            # percent-decode match values: a space, `^` or non-ASCII letter never matches
            # (PatientName=Doe^John finds nothing). Exact plain LO/SH values (PatientID,
            # AccessionNumber) it gets right; run it with "QidoCaseSensitive": false or true,
            # either is at least as wide as PS3.4's case-sensitive match. `*Jones*` it finds in
            # any case (keep Orthanc's "CaseSensitivePN": false, the default). It pages a
            # ModalitiesInStudy search wrong: `limit` counts from the first result, not from
            # `offset` (limit=100&offset=25 gives 75 of 86), so a page looks like the last and
            # matches are lost; that key stays with the adapter.
            "orthanc-1.10",
            _ORTHANC_ABOUT + "; not ModalitiesInStudy",
            MappingProxyType(_ORTHANC),
            untrusted=frozenset({"ModalitiesInStudy"}),
            plain_values_only=True,
            contains=_ORTHANC_CONTAINS,
        ),
        StoreProfile(
            # Debian 13: orthanc 1.12 with orthanc-dicomweb 1.20, proven with the same oracle
            # suite: what 1.10 is trusted with, and ModalitiesInStudy, which it pages right (the
            # paged oracle test). Names with '^' and decoded values stay with the adapter until a
            # test shows it matches them at least as widely as PS3.4.
            "orthanc-1.12",
            _ORTHANC_ABOUT,
            MappingProxyType(_ORTHANC),
            plain_values_only=True,
            contains=_ORTHANC_CONTAINS,
        ),
        StoreProfile(
            # The Healthcare API's conformance statement: search on a fixed set of attributes
            # per level, exact values and date ranges; PatientName only fuzzily (fuzzymatching).
            "healthcare-api",
            "the Healthcare API's searchable attributes: UIDs, dates and ranges, PatientID, AccessionNumber, Modality",
            MappingProxyType({"UI": frozenset({"single"}), "DA": frozenset({"single", "range"}),
                              "LO": frozenset({"single"}), "SH": frozenset({"single"}), "CS": frozenset({"single"})}),
            frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyDate", "PatientID",
                       "AccessionNumber", "Modality", "ModalitiesInStudy", "SOPClassUID"}),
        ),
    )
})


def store_profile(name: str | None) -> StoreProfile:
    """The named profile (None: the default); an unknown name says which exist."""
    chosen = name or DEFAULT_PROFILE
    if chosen not in PROFILES:
        raise ValueError(f"unknown QIDO store profile {chosen!r}; one of: {', '.join(PROFILES)}")
    return PROFILES[chosen]
