"""C-FIND matching (PS3.4 C.2.2.2) of a request identifier against a store's QIDO-RS answer.

The store's QIDO-RS is only a prefilter (qido.py sends it what store_profiles.py says it
answers correctly); every answer is then matched here, key by key, so the C-FIND answer is the
same whatever DICOMweb server sits behind the adapter:

  universal      an empty key (or a lone `*`) matches everything, a missing value included;
  single value   equal values; PN ignores case (as Orthanc and dcm4chee do by default; the
                 standard leaves it to the SCP: fold_case says how) and is matched per component
                 group (a match of the alphabetic, ideographic or phonetic group is a match); the
                 text VRs ignore trailing spaces, and leading ones except for LT/ST/UT;
  wildcards      `*` (any run) and `?` (one character) in the VRs that allow them, over the
                 characters of the decoded value (pydicom decodes the identifier by its
                 Specific Character Set; DICOM JSON is already Unicode);
  range          DA, TM and DT: `A-B`, `-B`, `A-` (inclusive); TM/DT compare on their digits,
                 a bound's missing precision filled as its start (low) or end (high);
  UID list       a UI key with several values matches any of them;
  multi-valued   a stored attribute with several values (ModalitiesInStudy) matches if one
                 value does; a key with several values (ModalitiesInStudy) is a list (any);
  sequence       every key of the key's item must match in one item of the stored sequence;
                 an empty key item is universal.

`identifier_keys` (`key_of`, `check_character_set`) refuses what cannot be matched (a wildcard
in a UID or date, a malformed range, an unknown character set) with the DIMSE status and a
comment naming the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydicom.charset import python_encoding
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
QUERY_RETRIEVE_LEVEL = Tag(0x0008, 0x0052)

RANGE_VRS = {"DA", "TM", "DT"}
WILDCARD_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
KEEPS_LEADING_SPACES = {"LT", "ST", "UT", "UR"}
TEXT_VRS = WILDCARD_VRS | {"UI"}


class QueryError(ValueError):
    """The query cannot be answered; `code` is the DIMSE status, `comment` says why (no PHI)."""

    def __init__(self, code: int, comment: str) -> None:
        super().__init__(comment)
        self.code = code
        self.comment = comment


def _refuse(comment: str) -> QueryError:
    return QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, comment)


def tag_text(tag: int) -> str:
    tag = Tag(tag)
    return f"({tag.group:04X},{tag.element:04X})"


@dataclass(frozen=True)
class Key:
    """One matching key of an identifier: its tag, VR and what to match (None: universal)."""

    tag: Tag
    vr: str
    values: tuple[str, ...] | None = None
    items: tuple["Key", ...] | None = None  # a sequence key's item keys (None: universal)

    @property
    def universal(self) -> bool:
        return self.values is None and self.items is None


def is_matching_element(element: DataElement) -> bool:
    """Whether an identifier element is matched on (not the level, the character set, meta)."""
    return element.tag not in (QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET) and element.tag.group not in (0x0000, 0x0002)


def identifier_keys(identifier: Dataset) -> list[Key]:
    """The identifier's matching keys, checked (QueryError on what cannot be matched)."""
    check_character_set(identifier)
    return [key_of(element) for element in identifier if is_matching_element(element)]


def check_character_set(identifier: Dataset) -> None:
    raw = identifier.get("SpecificCharacterSet")
    terms = [raw] if isinstance(raw, str) else list(raw or [])
    for term in terms:
        if term and python_encoding.get(str(term).strip()) is None:
            raise _refuse(f"Specific Character Set (0008,0005) {str(term)[:20]!r} is not one DICOM defines")


def key_of(element: DataElement) -> Key:
    tag, vr = element.tag, element.VR
    if vr == "SQ":
        items = list(element.value or [])
        if len(items) > 1:
            raise _refuse(f"{tag_text(tag)} sequence key has {len(items)} items; a key has one")
        item_keys = tuple(key_of(e) for e in items[0] if is_matching_element(e)) if items else ()
        if all(k.universal for k in item_keys):
            return Key(tag, vr)
        return Key(tag, vr, items=item_keys)
    if element.is_empty:
        return Key(tag, vr)
    value = element.value
    if isinstance(value, (bytes, bytearray)):
        raise _refuse(f"{tag_text(tag)} has a binary value ({vr}); binary matching is not supported")
    values = tuple(map(str, value)) if element.VM > 1 else (str(value),)  # PN: all groups, `=`-joined
    if vr != "PN":
        values = tuple(v.rstrip(" \0") if vr in KEEPS_LEADING_SPACES else v.strip(" \0") for v in values)
    if values == ("*",) and vr not in RANGE_VRS | {"UI"}:
        return Key(tag, vr)
    for v in values:
        _check_value(tag, vr, v)
    if len(values) > 1 and vr not in ("UI", "CS"):
        raise _refuse(f"{tag_text(tag)} has {len(values)} values; only UIDs or ModalitiesInStudy may")
    return Key(tag, vr, values)


def _check_value(tag: Tag, vr: str, value: str) -> None:
    if vr == "UI":
        if "*" in value or "?" in value:
            raise _refuse(f"{tag_text(tag)} is a UID: wildcards are not allowed in it")
        if not re.fullmatch(r"[0-9.]{1,64}", value):
            raise _refuse(f"{tag_text(tag)} is not a UID (digits and dots, at most 64)")
    elif vr in RANGE_VRS:
        if "*" in value or "?" in value:
            raise _refuse(f"{tag_text(tag)} ({vr}) takes a value or a range, not wildcards")
        low, dash, high = _split_range(vr, value)
        for part in (low, high) if dash else (value,):
            if part and not _valid_temporal(vr, part):
                raise _refuse(f"{tag_text(tag)} {part[:26]!r} is not a {vr} value")
        if dash and not low and not high:
            raise _refuse(f"{tag_text(tag)} range '-' has no end")
        if dash and low and high and _order(vr, low) > _order(vr, high, fill="9"):
            raise _refuse(f"{tag_text(tag)} range {value[:53]!r} ends before it starts")


def _split_range(vr: str, value: str) -> tuple[str, str, str]:
    """(low, "-", high) of a range, or (value, "", "") for a single value. A DT range splits at
    the `-` whose both sides are DT values (another `-` is a UTC offset's sign)."""
    if vr != "DT":
        return value.partition("-")
    for match in re.finditer("-", value):
        low, high = value[: match.start()], value[match.end():]
        if (not low or _valid_temporal("DT", low)) and (not high or _valid_temporal("DT", high)):
            return low, "-", high
    return value, "", ""


def _valid_temporal(vr: str, value: str) -> bool:
    if vr == "DA":
        return bool(re.fullmatch(r"\d{8}", value)) and 1 <= int(value[4:6]) <= 12 and 1 <= int(value[6:8]) <= 31
    if vr == "TM":
        return bool(re.fullmatch(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", value.replace(":", ""))) and int(value[:2]) < 24
    return bool(re.fullmatch(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?", value))


def _order(vr: str, value: str, fill: str = "0") -> str:
    """A comparable form: TM and DT as digits to the microsecond, the missing precision filled
    with `fill` (0 for a lower bound or a value, 9 for an upper bound: `-1030` includes
    10:30:59); DT's UTC offset is not compared."""
    if vr == "DA":
        return value
    text = value.replace(":", "")
    if vr == "DT":
        text = re.split(r"[+-]", text)[0]
    whole, _, fraction = text.partition(".")
    return whole.ljust(6 if vr == "TM" else 14, fill) + fraction.ljust(6, fill)


@lru_cache(maxsize=512)
def _wildcard(pattern: str) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body + r"\Z", re.DOTALL)


def fold_case(text: str) -> str:
    """PN's case-insensitive form: each character folded on its own, never into more characters
    and never across the ASCII boundary (the Kelvin sign stays itself, 'ß' does not become "ss").
    So a plain ASCII letter of a key matches only that letter in either case, which is what a
    store searching ASCII case-insensitively can be trusted with (required_text)."""
    return text.lower() if text.isascii() else "".join(map(_fold_char, text))


@lru_cache(maxsize=4096)
def _fold_char(char: str) -> str:
    for folded in (char.casefold(), char.lower()):
        if len(folded) == 1 and folded.isascii() == char.isascii():
            return folded
    return char


def _value_matches(key: Key, pattern: str, stored: str) -> bool:
    vr = key.vr
    if vr in RANGE_VRS:
        low, dash, high = _split_range(vr, pattern)
        value = _order(vr, stored)
        if not dash:
            return value == _order(vr, pattern)
        return (not low or value >= _order(vr, low)) and (not high or value <= _order(vr, high, fill="9"))
    if vr == "PN":
        pattern, stored = fold_case(pattern), fold_case(stored)
    if vr in WILDCARD_VRS and ("*" in pattern or "?" in pattern):
        return bool(_wildcard(pattern).match(stored))
    return stored == pattern


def _stored_texts(vr: str, element: dict[str, Any]) -> list[str]:
    """The stored values of a DICOM JSON element as texts (PN: each component group)."""
    texts = []
    for value in element.get("Value") or []:
        if vr == "PN" and isinstance(value, dict):
            texts.extend(str(value[group]) for group in ("Alphabetic", "Ideographic", "Phonetic") if value.get(group))
        elif value is not None:
            text = str(value)
            texts.append(text.rstrip(" ") if vr in KEEPS_LEADING_SPACES else text.strip(" ") if vr in TEXT_VRS else text)
    return texts


def _pn_patterns(value: str) -> list[str]:
    """A PN key's patterns: its component groups (a group left empty is not matched on)."""
    return [group for group in value.split("=") if group] or [value]


def required_text(key: Key) -> str | None:
    """A run of ASCII letters and digits that every value `key` matches contains (ignoring
    ASCII case, fold_case), the longest there is; None if there is none. A store that finds
    `*text*` can then be sent that much of a key it cannot match itself: `Jones^Ben^19` gives
    "Jones", `M?ller^J*` gives "ller". A PN key of several component groups matches through
    any one of them, so no one text is required and it gives None."""
    values = key.values or ()
    if key.items is not None or len(values) != 1:
        return None
    patterns = _pn_patterns(values[0]) if key.vr == "PN" else [values[0]]
    if len(patterns) != 1:
        return None
    runs = re.findall(r"[A-Za-z0-9]+", patterns[0])  # '*', '?' and anything else end a run
    return max(runs, key=len) if runs else None


def json_key(tag: int) -> str:
    return f"{Tag(tag):08X}"


def key_matches(key: Key, answer: dict[str, Any]) -> bool:
    """Whether one key matches a DICOM JSON answer (or item)."""
    if key.universal:
        return True
    element = answer.get(json_key(key.tag))
    if not isinstance(element, dict):
        return False
    if key.items is not None:
        return any(all(key_matches(k, item) for k in key.items) for item in element.get("Value") or [] if isinstance(item, dict))
    stored = _stored_texts(key.vr, element)
    patterns = [p for v in key.values or () for p in (_pn_patterns(v) if key.vr == "PN" else [v])]
    return any(_value_matches(key, pattern, text) for pattern in patterns for text in stored)


def answer_matches(keys: list[Key], answer: dict[str, Any]) -> bool:
    """Whether a QIDO-RS answer matches every key of the identifier (PS3.4 C.2.2.2)."""
    return all(key_matches(key, answer) for key in keys)
