"""De-identification of a pydicom Dataset, for a destination that must never hold PHI.

Two families of modes:
- Google's Java adapter's three (its flags `--redact_remove_list`, `--redact_keep_list`,
  `--redact_filter_profile=CHC_BASIC`), done as its redactor (third_party/deid-redactor,
  DicomRedactor.java) does them, so a deployment can switch images: a listed (or, for the keep
  list, an unlisted) attribute keeps its tag with a zero-length value, and SOP Instance, Study
  and Series Instance UIDs are always replaced. Two differences, both on the safe side: the
  remove list applies inside sequences too (Google's visits the top level only), and the keep
  list never empties what a valid instance needs (`ALWAYS_KEPT`: identity, pixel module).
  CHC_BASIC empties every attribute of Table E.1-1, a superset of Google's list (see
  `_in_chc_basic` for why).
- PS3.15 Annex E's Basic Application Level Confidentiality Profile (`basic`), with the options
  of profile_table.OPTIONS, action by action from Table E.1-1 (see profile_table.py for where
  the table comes from), and the marking PS3.15 asks for (PatientIdentityRemoved,
  DeidentificationMethod, DeidentificationMethodCodeSequence with CID 7050 codes,
  LongitudinalTemporalInformationModified).
Replaced UIDs, pseudonyms and date shifts are keyed and deterministic (uids.py): one key gives
a study's instances consistent new UIDs, and a re-sent instance the same bytes as before.

Where a table action offers a choice, the one that keeps a valid instance is taken: X/Z -> Z,
X/D, Z/D and X/Z/D -> D (a dummy value works for Type 1, 2 and 3 alike); a sequence is emptied
(Z) where allowed, and walked item by item (each item's attributes get their own actions) for
D and X/Z/U*. Clean Descriptors keeps the descriptors and removes from them every identifying
value the instance itself carries (names, IDs, dates the profile removes): cleaning free text
beyond that needs a human or a model, and this option claims no more than that.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ..tags import tag_of
from .errors import TransformConfigError
from .profile_table import BASIC_PROFILE_CODE, BASIC_PROFILE_EDITION, OPTIONS, basic_action, option_action
from .uids import keyed_int, keyed_token, keyed_uid

PROFILE_BASIC = "basic"  # PS3.15 Annex E Basic Application Level Confidentiality Profile
PROFILE_CHC_BASIC = "CHC_BASIC"  # Google's redactor profile (--redact_filter_profile)
PROFILES = (PROFILE_BASIC, PROFILE_CHC_BASIC)

# What Google's redactor always replaces, whatever the mode (DicomRedactor.replaceUIDs).
_IDENTITY_UIDS = frozenset({0x00080018, 0x0020000D, 0x0020000E})
# References to instances that the modes above rename, renamed the same way wherever they are.
_REFERENCE_UIDS = frozenset({0x00081155, 0x0020000D, 0x0020000E})
# What a keep list never empties: an instance without these is not a valid, storable instance
# (SOP Common, General Study/Series identity, Image Pixel module, multi-frame and LUT data).
ALWAYS_KEPT = frozenset(
    tag_of(keyword)
    for keyword in (
        "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
        "Modality", "InstanceNumber", "SeriesNumber", "ImageType",
        "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored",
        "HighBit", "PixelRepresentation", "PlanarConfiguration", "PixelAspectRatio", "NumberOfFrames",
        "FrameIncrementPointer", "SmallestImagePixelValue", "LargestImagePixelValue",
        "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
        "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
        "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
        "ICCProfile", "ColorSpace", "RescaleIntercept", "RescaleSlope", "RescaleType",
        "WindowCenter", "WindowWidth", "LossyImageCompression", "LossyImageCompressionRatio",
        "LossyImageCompressionMethod", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
        "PixelData", "FloatPixelData", "DoubleFloatPixelData",
    )
)
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"})
_NUMBER_VRS = frozenset({"FL", "FD", "SL", "SS", "SV", "UL", "US", "UV"})
_BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_DATE_SHIFT_DAYS = (365, 3650)  # modified dates move back by a keyed 1..10 years per patient


@dataclass(frozen=True)
class DeidConfig:
    """How to de-identify: a profile, options for `basic`, and/or Google's remove or keep list.
    Build it with `DeidConfig.build` (or from_json), which checks every entry."""

    profile: str = ""
    options: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()  # keywords or GGGGEEEE, as given
    keep: tuple[str, ...] = ()

    @classmethod
    def build(
        cls, profile: str = "", options: Iterable[str] = (), remove: Iterable[str] = (), keep: Iterable[str] = ()
    ) -> "DeidConfig":
        config = cls(profile.strip(), tuple(options), _clean(remove), _clean(keep))
        config.check()
        return config

    def check(self) -> None:
        """Raise TransformConfigError naming the first entry that cannot be used."""
        if self.profile and self.profile not in PROFILES:
            raise TransformConfigError(f"unknown de-identification profile {self.profile!r} (known: {', '.join(PROFILES)})")
        for name in self.options:
            if name not in OPTIONS:
                raise TransformConfigError(f"unknown de-identification option {name!r} (known: {', '.join(OPTIONS)})")
        if self.options and self.profile != PROFILE_BASIC:
            raise TransformConfigError(f"options {list(self.options)} need the profile {PROFILE_BASIC!r}")
        if {"retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"} <= set(self.options):
            raise TransformConfigError("options retain_longitudinal_full_dates and _modified_dates exclude each other")
        if self.keep and (self.profile or self.remove):
            raise TransformConfigError("a keep list cannot be combined with a profile or a remove list")
        if not (self.profile or self.remove or self.keep):
            raise TransformConfigError("de-identification names no profile, remove list or keep list")
        for entry in self.remove + self.keep:
            try:
                tag_of(entry)
            except ValueError:
                raise TransformConfigError(f"{entry!r} is not a DICOM keyword or tag") from None

    @property
    def remove_tags(self) -> frozenset[int]:
        return frozenset(tag_of(entry) for entry in self.remove)

    @property
    def keep_tags(self) -> frozenset[int]:
        return frozenset(tag_of(entry) for entry in self.keep) | ALWAYS_KEPT

    def to_json(self) -> dict[str, Any]:
        fields = (("profile", self.profile), ("options", list(self.options)), ("remove", list(self.remove)), ("keep", list(self.keep)))
        return {name: value for name, value in fields if value}

    @classmethod
    def from_json(cls, data: Any) -> "DeidConfig":
        if not isinstance(data, Mapping):
            raise TransformConfigError(f"'deidentify' must be an object, not {data!r}")
        unknown = set(data) - {"profile", "options", "remove", "keep"}
        if unknown:
            raise TransformConfigError(f"unknown key(s) {sorted(unknown)} in 'deidentify'")
        lists = {}
        for name in ("options", "remove", "keep"):
            value = data.get(name, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TransformConfigError(f"'deidentify.{name}' must be a list of strings, not {value!r}")
            lists[name] = value
        profile = data.get("profile", "")
        if not isinstance(profile, str):
            raise TransformConfigError(f"'deidentify.profile' must be a string, not {profile!r}")
        return cls.build(profile, **lists)


def _clean(entries: Iterable[str]) -> tuple[str, ...]:
    return tuple(e.strip() for e in entries if e.strip())


@dataclass
class DeidReport:
    """What de-identification did to one instance (counts only: no values, no PHI)."""

    method: tuple[str, ...] = ()
    removed: int = 0
    emptied: int = 0
    replaced: int = 0
    uids_replaced: int = 0
    uid_map: dict[str, str] = field(default_factory=dict)  # old -> new, for the caller's log of UIDs


def deidentify(dataset: Dataset, config: DeidConfig, key: bytes) -> DeidReport:
    """De-identify `dataset` in place as `config` says, with `key` for every replaced value."""
    report = DeidReport()
    if config.profile == PROFILE_BASIC:
        _Basic(config, key, report, dataset).walk(dataset)
    elif config.profile == PROFILE_CHC_BASIC:
        _empty_listed(dataset, _in_chc_basic, report)
    if config.remove:
        remove = config.remove_tags
        _empty_listed(dataset, lambda tag: tag in remove, report)
    if config.keep:
        kept = config.keep_tags
        for element in list(dataset):
            if element.tag not in kept:
                _set_empty(element)
                report.emptied += 1
    if config.profile != PROFILE_BASIC:
        _replace_identity_uids(dataset, key, report)
    _mark(dataset, config, report)
    return report


def _in_chc_basic(tag: int) -> bool:
    """Google's CHC_BASIC list (chc_basic.textproto in its deid-redactor, 286 keywords) is not
    published as data we may ship; every one of its keywords is an attribute of Table E.1-1
    (checked against the 2020 and 2026c editions), so CHC_BASIC here empties every attribute the
    table names, private ones included: Google's list and what the standard added since, a
    superset on the safe side. The identity UIDs are replaced instead, as Google's are."""
    return basic_action(tag) is not None and tag not in _IDENTITY_UIDS


def _empty_listed(dataset: Dataset, listed: Callable[[int], bool], report: DeidReport) -> None:
    for element in list(dataset):
        if listed(int(element.tag)):
            _set_empty(element)
            report.emptied += 1
        elif element.VR == "SQ":
            for item in element.value:
                _empty_listed(item, listed, report)


def _replace_identity_uids(dataset: Dataset, key: bytes, report: DeidReport, *, top: bool = True) -> None:
    """Google's always-replaced UIDs at the top level, and references to them anywhere."""
    for element in list(dataset):
        if element.VR == "SQ":
            for item in element.value:
                _replace_identity_uids(item, key, report, top=False)
        elif element.tag in (_IDENTITY_UIDS if top else _REFERENCE_UIDS) and element.value:
            _replace_uid(element, key, report)


def _replace_uid(element: DataElement, key: bytes, report: DeidReport) -> None:
    values = element.value if element.VM > 1 else [element.value]
    new = [keyed_uid(key, str(v)) if str(v).strip() else "" for v in values]
    report.uid_map.update((str(old), n) for old, n in zip(values, new) if n)
    element.value = new if element.VM > 1 else new[0]
    report.uids_replaced += len(new)


def _set_empty(element: DataElement) -> None:
    element.value = Sequence() if element.VR == "SQ" else (b"" if element.VR in _BYTES_VRS else None)


class _Basic:
    """One pass of the Basic Profile (with options) over a data set and its sequences."""

    def __init__(self, config: DeidConfig, key: bytes, report: DeidReport, dataset: Dataset) -> None:
        self.options = config.options
        self.key = key
        self.report = report
        self.shift_days = _DATE_SHIFT_DAYS[0] + keyed_int(key, "date-shift", str(dataset.get("PatientID", ""))) % (
            _DATE_SHIFT_DAYS[1] - _DATE_SHIFT_DAYS[0]
        )
        self.secrets = _identifying_values(dataset, self.options) if "clean_descriptors" in self.options else ()

    def walk(self, dataset: Dataset) -> None:
        for element in list(dataset):
            tag = int(element.tag)
            action = option_action(tag, self.options) or basic_action(tag)
            if action is None or action == "K":
                if element.VR == "SQ":
                    self._walk_items(element)
                continue
            self._apply(dataset, element, action)

    def _walk_items(self, element: DataElement) -> None:
        for item in element.value:
            self.walk(item)

    def _apply(self, dataset: Dataset, element: DataElement, action: str) -> None:
        choice = _choose(action, element.VR)
        if choice == "X":
            del dataset[element.tag]
            self.report.removed += 1
        elif choice == "Z":
            _set_empty(element)
            self.report.emptied += 1
        elif choice == "walk":
            self._walk_items(element)
        elif choice == "U":
            _replace_uid(element, self.key, self.report)
        elif choice == "C":
            self._clean(element)
        else:
            element.value = self._dummy(element)
            self.report.replaced += 1

    def _clean(self, element: DataElement) -> None:
        if element.VR == "SQ":
            self._walk_items(element)
        elif element.VR in ("DA", "DT") and "retain_longitudinal_modified_dates" in self.options:
            element.value = _map_values(element, lambda v: _shift_date(v, self.shift_days))
            self.report.replaced += 1
        elif element.VR in _TEXT_VRS and self.secrets:
            element.value = _map_values(element, lambda v: _scrub(v, self.secrets))
            self.report.replaced += 1

    def _dummy(self, element: DataElement) -> Any:
        vr = element.VR
        if vr == "UI":
            return keyed_uid(self.key, str(element.value))
        if vr in ("DA", "DT", "TM"):
            return {"DA": "19000101", "DT": "19000101000000", "TM": "000000"}[vr]
        if vr in ("IS", "DS"):
            return "0"
        if vr == "AS":
            return "000D"
        if vr in _NUMBER_VRS:
            return 0
        if vr in _BYTES_VRS:
            return b"\x00\x00"
        # Text: a keyed pseudonym, so equal identifiers stay equal (a patient's instances link).
        token = keyed_token(self.key, f"{int(element.tag):08X}", str(element.value))
        return f"ANON^{token}" if vr == "PN" else token


def _choose(action: str, vr: str) -> str:
    """The one action to take for a table entry (see the module docstring for why)."""
    parts = action.split("/")
    if action in ("K", "C"):
        return action
    if vr == "SQ":
        if "U*" in parts or parts == ["D"]:
            return "walk"
        return "Z" if "Z" in parts else "X"
    if "D" in parts:
        return "D"
    if "Z" in parts:
        return "Z"
    if "U" in parts or "U*" in parts:
        return "U" if vr == "UI" else "Z"
    return "X"


def _map_values(element: DataElement, change: Any) -> Any:
    if element.VM > 1:
        return [change(str(v)) for v in element.value]
    return change(str(element.value)) if element.value not in (None, "") else element.value


def _shift_date(value: str, days: int) -> str:
    """A DA or DT value moved back by `days` (time and offset kept); unparsable dates vanish."""
    try:
        date = datetime.datetime.strptime(value[:8], "%Y%m%d").date() - datetime.timedelta(days=days)
    except ValueError:
        return ""
    return date.strftime("%Y%m%d") + value[8:]


def _identifying_values(dataset: Dataset, options: tuple[str, ...]) -> tuple[str, ...]:
    """Every textual value the profile takes away (not those it keeps or cleans), longest first:
    what cleaning removes from descriptors; name components separately too, since a
    descriptor names 'Doe', not 'Doe^John'."""
    found: set[str] = set()

    def visit(ds: Dataset, element: DataElement) -> None:
        tag = int(element.tag)
        action = option_action(tag, options) or basic_action(tag)
        if action in (None, "K", "C") or element.VR in ("SQ", "UI") or element.VR in _BYTES_VRS or not element.value:
            return
        values = element.value if element.VM > 1 else [element.value]
        for value in values:
            found.update(p.strip() for p in re.split(r"[\^=]", str(value)) if len(p.strip()) >= 3)
            if len(str(value).strip()) >= 3:
                found.add(str(value).strip())

    dataset.walk(visit)
    return tuple(sorted(found, key=lambda s: (-len(s), s)))


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = re.sub(re.escape(secret), "", text, flags=re.IGNORECASE)
    return re.sub(r"\s{2,}", " ", text).strip()


def _mark(dataset: Dataset, config: DeidConfig, report: DeidReport) -> None:
    """PS3.15 E.1.1's marking for the Annex E profile; the method text for Google's modes."""
    if config.profile == PROFILE_BASIC:
        codes = [BASIC_PROFILE_CODE] + [OPTIONS[name].code for name in config.options]
        method = [f"{BASIC_PROFILE_CODE.meaning} {BASIC_PROFILE_EDITION}"[:64]] + [c.meaning[:64] for c in codes[1:]]
        dataset.PatientIdentityRemoved = "YES"
        items = list(dataset.get("DeidentificationMethodCodeSequence", []))
        for code in codes:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
            items.append(item)
        dataset.DeidentificationMethodCodeSequence = Sequence(items)
        if "retain_longitudinal_full_dates" in config.options:
            dataset.LongitudinalTemporalInformationModified = "UNMODIFIED"
        elif "retain_longitudinal_modified_dates" in config.options:
            dataset.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            dataset.LongitudinalTemporalInformationModified = "REMOVED"
    else:
        method = [f"redact_filter_profile {config.profile}"] if config.profile else []
    if config.remove:
        method.append("redact_remove_list")
    if config.keep:
        method.append("redact_keep_list")
    previous = dataset.get("DeidentificationMethod")
    earlier = [] if previous in (None, "") else ([previous] if isinstance(previous, str) else list(previous))
    dataset.DeidentificationMethod = [str(m) for m in earlier] + method
    report.method = tuple(method)
