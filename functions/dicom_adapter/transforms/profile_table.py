"""PS3.15 Annex E, Table E.1-1: the action the Basic Application Level Confidentiality Profile
and each of its options takes for an attribute.

Where the table comes from (issue 24 asks for a well-kept library, not a hand-copied table):
- `deid` 0.4.13: its bundled recipe (deid/data/deid.dicom) is its authors' own "best effort"
  list (REMOVE endswith:Date, contains:UID, ...), not Table E.1-1; no option columns. Not used.
- `dicognito` 0.19.0: replaces values with plausible fakes by VR and a short keyword list; it
  has no Annex E table and none of its options, and its UIDs come from a seeded randomizer, not
  a keyed mapping. Not used.
- `dicom-anonymizer` 2.1.0 (Kitware, maintained): Table E.1-1's Basic Profile column of the
  current edition (2026c), generated from the standard by its maintainers, as plain tag lists
  per action, group ranges included; pure Python, needs only pydicom and tqdm. It has no
  option columns. **Used for the Basic Profile column**, read at run time.
- `dicom-standard` 0.1.0: every column of Table E.1-1, options included, parsed from the
  standard's HTML, but of 2020 and installing 56 MB of JSON into the interpreter's prefix; so
  `scripts/generate_annex_e_options.py` turns its option columns into annex_e_options.py.
  **Used for the option columns.**
An option changes only the attributes its (2020) column names; any attribute added to the table
since keeps its Basic Profile action, the safe side. Private attributes (odd groups) are
removed: the Retain Safe Private Option is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as _basic_table
from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes

from .annex_e_options import OPTION_COLUMNS

BASIC_PROFILE_EDITION = "2026c"
BASIC_PROFILE_CODE: Code = codes.DCM.BasicApplicationConfidentialityProfile

# dicom-anonymizer's list names -> the table's action codes (PS3.15 Table E.1-1 key).
_CATEGORY_ACTIONS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


@dataclass(frozen=True)
class Option:
    """One option of the profile: the column of Table E.1-1 it uses and its CID 7050 code."""

    name: str  # our configuration name
    column: str  # the column in annex_e_options.OPTION_COLUMNS
    code: Code


OPTIONS: Mapping[str, Option] = MappingProxyType(
    {
        option.name: option
        for option in (
            Option("retain_uids", "rtnUIDsOpt", codes.DCM.RetainUidsOption),
            Option("retain_device_identity", "rtnDevIdOpt", codes.DCM.RetainDeviceIdentityOption),
            Option("retain_institution_identity", "rtnInstIdOpt", codes.DCM.RetainInstitutionIdentityOption),
            Option("retain_patient_characteristics", "rtnPatCharsOpt", codes.DCM.RetainPatientCharacteristicsOption),
            Option(
                "retain_longitudinal_full_dates",
                "rtnLongFullDatesOpt",
                codes.DCM.RetainLongitudinalTemporalInformationFullDatesOption,
            ),
            Option(
                "retain_longitudinal_modified_dates",
                "rtnLongModifDatesOpt",
                codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption,
            ),
            Option("clean_descriptors", "cleanDescOpt", codes.DCM.CleanDescriptorsOption),
        )
    }
)


@dataclass(frozen=True)
class _Range:
    """A table row for a group range, e.g. (50xx,xxxx): a tag matches where the masks say."""

    group: int
    element: int
    group_mask: int
    element_mask: int
    action: str

    def matches(self, tag: int) -> bool:
        return (tag >> 16) & self.group_mask == self.group & self.group_mask and (
            tag & 0xFFFF
        ) & self.element_mask == self.element & self.element_mask


def _load_basic() -> tuple[Mapping[int, str], tuple[_Range, ...]]:
    exact: dict[int, str] = {}
    ranges: list[_Range] = []
    for category, action in _CATEGORY_ACTIONS.items():
        for entry in getattr(_basic_table, category):
            if len(entry) == 2:
                exact[(entry[0] << 16) | entry[1]] = action
            else:
                ranges.append(_Range(*entry, action=action))
    return MappingProxyType(exact), tuple(ranges)


BASIC_ACTIONS, BASIC_RANGES = _load_basic()


def basic_action(tag: int) -> str | None:
    """The Basic Profile's action for `tag` ("X", "Z", "D", "U", "X/Z", ...), or None where the
    table has no row (the attribute is kept)."""
    action = BASIC_ACTIONS.get(tag)
    if action is not None:
        return action
    if (tag >> 16) % 2 == 1:
        return "X"  # (gggg,eeee) where gggg is odd: private attributes
    for row in BASIC_RANGES:
        if row.matches(tag):
            return row.action
    return None


def option_action(tag: int, options: tuple[str, ...]) -> str | None:
    """The action the first of `options` (in the caller's order) that names `tag` takes for it,
    or None if none of them does; a retaining option (K) wins over a cleaning one (C)."""
    found = [OPTION_COLUMNS[OPTIONS[name].column].get(tag) for name in options]
    actions = [action for action in found if action]
    if not actions:
        return None
    return "K" if "K" in actions else actions[0]
