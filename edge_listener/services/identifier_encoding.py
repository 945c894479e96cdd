"""C-FIND response identifiers: from DICOM JSON (a QIDO-RS match reduced to the requested keys)
to the bytes of the Pending response, in the requester's character set or UTF-8.

pydicom's path (Dataset.from_json, then its encoder) cost about 0.6 ms of CPU per match, most
of a C-FIND's time in the adapter. QIDO-RS answers hold few and simple elements (text, dates,
UIDs, person names, integer strings), so those are written here directly in Implicit or
Explicit VR Little Endian. Anything else (sequences, binary or numeric VRs, decimal strings,
bulk data, code extensions, big endian or deflated transfer syntaxes) goes the pydicom way
for the whole match; tests check that both ways give the same bytes.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dsutils import encode

SPECIFIC_CHARACTER_SET = "00080005"
UTF8 = "ISO_IR 192"
_TEXT_VRS = {"PN", "LO", "SH", "ST", "LT", "UT", "UC"}  # encoded in the Specific Character Set
_ASCII_VRS = {"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR", "IS"}
_LONG_LENGTH_VRS = {"UC", "UR", "UT"}  # explicit VR with a 4-byte length (of the VRs written here)
_INTEGER = re.compile(r"[+-]?[0-9]{1,12}")
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"


class _NotSimple(Exception):
    """This match needs pydicom's encoder."""


def encode_identifier(match: dict[str, Any], requested_charset: Any, transfer_syntax: str) -> bytes:
    """The encoded response identifier of one match (DICOM JSON, keys as 8 hex digits)."""
    try:
        return _encode_simple(match, requested_charset, transfer_syntax)
    except _NotSimple:
        return _encode_with_pydicom(match, requested_charset, transfer_syntax)


def response_charset(texts: list[str], requested: Any) -> Any:
    """The Specific Character Set of a response: the requester's if it holds every text value
    (None: the default repertoire, when none was asked for), else UTF-8."""
    terms = _terms(requested)
    if _encodable(texts, terms):
        return requested if terms else None
    return UTF8


def _encode_simple(match: dict[str, Any], requested: Any, transfer_syntax: str) -> bytes:
    if transfer_syntax not in (EXPLICIT_VR_LE, IMPLICIT_VR_LE) or not (requested is None or isinstance(requested, str)):
        raise _NotSimple()
    elements = []
    for key in sorted(match, key=lambda k: int(k, 16)):
        if key == SPECIFIC_CHARACTER_SET:
            continue
        vr, values = _simple_values(match[key])
        elements.append((int(key, 16), vr, values))
    charset = response_charset([v for _, vr, values in elements if vr in _TEXT_VRS for v in values], requested)
    codec = "ascii" if charset is None else python_encoding.get(charset.strip())
    if codec is None or charset is not None and (charset.strip().startswith("ISO 2022") or "\\" in charset):
        raise _NotSimple()  # unknown, code extensions, or several terms
    if charset is not None:
        elements.append((0x00080005, "CS", [charset]))
        elements.sort(key=lambda element: element[0])
    explicit = transfer_syntax == EXPLICIT_VR_LE
    out = bytearray()
    for tag, vr, values in elements:
        raw = "\\".join(values).encode(codec if vr in _TEXT_VRS else "ascii")
        if len(raw) % 2:
            raw += b"\0" if vr == "UI" else b" "
        out += struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        if not explicit:
            out += struct.pack("<I", len(raw))
        elif vr in _LONG_LENGTH_VRS:
            out += vr.encode() + struct.pack("<HI", 0, len(raw))
        elif len(raw) <= 0xFFFF:
            out += vr.encode() + struct.pack("<H", len(raw))
        else:
            raise _NotSimple()
        out += raw
    return bytes(out)


def _simple_values(element: Any) -> tuple[str, list[str]]:
    """(VR, values as strings) of an element this module can write, else _NotSimple."""
    if not isinstance(element, dict):
        raise _NotSimple()
    vr = element.get("vr")
    values = element.get("Value", [])
    if vr not in _TEXT_VRS and vr not in _ASCII_VRS or not isinstance(values, list) or set(element) - {"vr", "Value"}:
        raise _NotSimple()
    if vr == "PN":
        return vr, [_person_name(value) for value in values]
    if vr == "IS":  # integers, or strings of one (pydicom keeps those as written)
        if not all(type(value) is int or isinstance(value, str) and _INTEGER.fullmatch(value) for value in values):
            raise _NotSimple()
        return vr, [str(value) for value in values]
    if not all(isinstance(value, str) for value in values):
        raise _NotSimple()
    if vr not in _TEXT_VRS and not all(value.isascii() for value in values):
        raise _NotSimple()
    return vr, values


def _person_name(value: Any) -> str:
    """A PN value as pydicom reads it from JSON: the component groups joined by '='."""
    if not isinstance(value, dict) or not set(value) <= {"Alphabetic", "Ideographic", "Phonetic"}:
        raise _NotSimple()
    if not all(isinstance(part, str) for part in value.values()):
        raise _NotSimple()
    groups = 3 if "Phonetic" in value else 2 if "Ideographic" in value else 1
    return "=".join([value.get("Alphabetic", ""), value.get("Ideographic", ""), value.get("Phonetic", "")][:groups])


def _encode_with_pydicom(match: dict[str, Any], requested: Any, transfer_syntax: str) -> bytes:
    """The general way: pydicom's JSON model and encoder."""
    dataset = Dataset.from_json({key: value for key, value in match.items() if key != SPECIFIC_CHARACTER_SET})
    ts = UID(transfer_syntax)
    return encode(with_character_set(dataset, requested), ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)


def with_character_set(match: Dataset, requested: Any) -> Dataset:
    """Give the match the requester's character set if it holds every text value, else UTF-8."""
    texts = [str(element.value) for element in match if element.VR in _TEXT_VRS and not element.is_empty]
    charset = response_charset(texts, requested)
    if charset is not None:
        match.SpecificCharacterSet = charset
    return match


def _terms(value: Any) -> list[str]:
    """Specific Character Set terms (one string or a multi-value), empty ones dropped."""
    if not value:
        return []
    values = [value] if isinstance(value, str) else list(value)
    return [str(term).strip() for term in values if str(term).strip()]


def _encodable(texts: list[str], terms: list[str]) -> bool:
    if not terms:  # the default repertoire
        return all(text.isascii() for text in texts)
    if len(terms) > 1 or terms[0].startswith("ISO 2022"):
        return True  # code extensions: pydicom switches sets as it encodes
    codec = python_encoding.get(terms[0].strip())
    if codec is None:
        return False
    try:
        for text in texts:
            text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True
