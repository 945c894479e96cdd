"""What a copy de-identified by the Basic Profile must (not) hold, checked against the profile
table the adapter uses (dicom_adapter.transforms.profile_table), tag by tag."""

from __future__ import annotations

import collections

from dicom_adapter.transforms.profile_table import basic_action
from pydicom.dataset import Dataset


def elements(ds: Dataset) -> list:
    found: list = []
    ds.walk(lambda _, element: found.append(element))
    return found


def values_by_tag(ds: Dataset) -> dict[int, set[str]]:
    values: dict[int, set[str]] = collections.defaultdict(set)
    for element in elements(ds):
        if element.VR != "SQ" and element.value not in (None, "", b""):
            items = element.value if element.VM > 1 and not isinstance(element.value, (bytes, str)) else [element.value]
            values[int(element.tag)].update(str(v) for v in items)
    return values


def assert_basic_profile_applied(original: Dataset, out: Dataset) -> None:
    """No private attribute, no attribute the table removes (X), no value the table acts on
    kept from `original`, UIDs replaced by keyed ones, and the PS3.15 marking."""
    before = values_by_tag(original)
    for element in elements(out):
        tag = int(element.tag)
        assert not element.tag.is_private, f"private {element.tag} survived"
        action = basic_action(tag)
        if action is None or tag in (0x00120063,):  # (the marking's own De-identification Method)
            continue
        assert action != "X", f"{element.keyword or element.tag} ({action}) survived"
        if element.VR == "SQ":
            continue  # its items' attributes are checked on their own
        values = element.value if element.VM > 1 and not isinstance(element.value, (bytes, str)) else [element.value]
        for value in values:
            if value in (None, "", b"", b"\x00\x00", 0, "0"):
                continue
            assert str(value) not in before.get(tag, set()), f"{element.keyword or element.tag} ({action}) kept its value"
            if element.VR == "UI":
                assert str(value).startswith("2.25."), f"{element.keyword} not replaced by a keyed UID"
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethodCodeSequence[-1].CodeValue == "113100"
    assert out.DeidentificationMethodCodeSequence[-1].CodingSchemeDesignator == "DCM"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
