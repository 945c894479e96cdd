"""DICOM attributes named by keyword or by number, as the routing filters and the
de-identification lists name them."""

from __future__ import annotations

import re

from pydicom.datadict import dictionary_has_tag, tag_for_keyword

_HEX_TAG = re.compile(r"\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?")


def tag_of(key: str) -> int:
    """The tag a DICOM keyword or a GGGGEEEE / (GGGG,EEEE) number names (private tags by number);
    ValueError naming the key otherwise. (Filters and the de-identification lists share it.)"""
    tag = tag_for_keyword(key)
    if tag is not None:
        return tag
    found = _HEX_TAG.fullmatch(key)
    if found:
        tag = int(found.group(1) + found.group(2), 16)
        if dictionary_has_tag(tag) or (tag >> 16) % 2 == 1:  # private tags are allowed by number
            return tag
    raise ValueError(f"unknown keyword or tag {key!r}")
