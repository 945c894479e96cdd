"""The C-FIND → QIDO-RS translation on its own, for what the Orthanc oracle cannot show
(Orthanc 1.10 does not percent-decode QIDO-RS parameters, so non-ASCII and '^' never match
there): an identifier in a declared character set is decoded and sent as UTF-8."""

from __future__ import annotations

from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_adapter.dicomweb import _query_string
from dicom_adapter.matching import answer_matches, fold_case, identifier_keys, required_text
from dicom_adapter.qido import QueryError, translate
from dicom_adapter.store_profiles import PROFILES, StoreProfile, store_profile


def _received(**values: object) -> Dataset:
    """The identifier as a C-FIND SCP decodes it from the wire (encoded, then read back)."""
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return pydicom.dcmread(BytesIO(buffer.getvalue()), force=True)


def test_a_latin1_name_is_searched_as_utf8():
    identifier = _received(SpecificCharacterSet="ISO_IR 100", QueryRetrieveLevel="STUDY", PatientName="Müller^J*", StudyInstanceUID="")
    assert identifier["PatientName"].value.original_string == "Müller^J*".encode("latin-1")
    trusting = StoreProfile("names", "a store trusted with name wildcards", {"PN": frozenset({"wildcard"})})
    (search,) = translate(identifier, "STUDY", profile=trusting)
    assert search.params["PatientName"] == "Müller^J*"
    assert "PatientName=M%C3%BCller%5EJ*" in _query_string(search.params)
    assert search.params["includefield"] == ["PatientName", "StudyInstanceUID"]
    # The default profile leaves names to the adapter, which matches them over characters.
    (search,) = translate(identifier, "STUDY")
    assert "PatientName" not in search.params and "PatientName" in search.params["includefield"]
    keys = identifier_keys(identifier)
    def named(name: str) -> dict:
        return {"00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]}}
    assert answer_matches(keys, named("Müller^Jörg")) and answer_matches(keys, named("MÜLLER^JÖRG"))
    assert not answer_matches(keys, named("Mueller^Jörg")) and not answer_matches(keys, named("Müller^Anna"))
    one_letter = identifier_keys(_received(SpecificCharacterSet="ISO_IR 100", QueryRetrieveLevel="STUDY", PatientName="M?ller^J*"))
    assert answer_matches(one_letter, named("Müller^Jürgen")) and not answer_matches(one_letter, named("Mueller^Jürgen"))


def test_each_profile_sends_the_store_only_what_it_trusts():
    identifier = _received(QueryRetrieveLevel="STUDY", PatientName="Doe^J*", PatientID="PID7", AccessionNumber="A1",
                           StudyDate="20240101-20240131", ModalitiesInStudy="CT", StudyDescription="Head CT", StudyInstanceUID="")
    sent = {name: set((search := translate(identifier, "STUDY", profile=profile)[0]).params) - {"includefield"}
            for name, profile in PROFILES.items()}
    assert sent == {
        "conservative": {"StudyDate", "ModalitiesInStudy"},
        "orthanc-1.10": {"StudyDate", "PatientID", "AccessionNumber", "PatientName"},  # it pages ModalitiesInStudy wrong
        "orthanc-1.12": {"StudyDate", "ModalitiesInStudy", "PatientID", "AccessionNumber", "PatientName"},
        "healthcare-api": {"StudyDate", "ModalitiesInStudy", "PatientID", "AccessionNumber"},
    }
    # The Orthancs are sent what every match of the name contains, not the name.
    assert translate(identifier, "STUDY", profile=store_profile("orthanc-1.10"))[0].params["PatientName"] == "*Doe*"
    assert set(search.params["includefield"]) >= {"PatientName", "PatientID", "StudyDescription"}, "every key comes back to be matched"
    # Orthanc 1.10 does not decode what it is sent: a value with a space (or '^', or 'ü') stays with the adapter.
    spaced = _received(QueryRetrieveLevel="STUDY", PatientID="PID 7", StudyDescription="Head", StudyInstanceUID="")
    (search,) = translate(spaced, "STUDY", profile=store_profile("orthanc-1.10"))
    assert set(search.params) - {"includefield"} == {"StudyDescription"}
    assert store_profile(None).name == "conservative"
    with pytest.raises(ValueError, match=r"unknown QIDO store profile 'dcm4chee'; one of: conservative, orthanc-1.10, orthanc-1.12, healthcare-api"):
        store_profile("dcm4chee")


@pytest.mark.parametrize("value, text", [
    ("Jones^Ben^19", "Jones"),
    ("M?ller^J*", "ller"),  # '?' is a character, not a byte: the store is never sent one
    ("Müller^Jörg", "ller"),
    ("*", None),  # universal
    ("?*", None),
    ("山田^太郎", None),
    ("Yamada^Tarou=山田^太郎", None),  # matched through either group: no one text is in every match
    ("=山田^太郎", None),
    ("van der Berg^Anna", "Berg"),  # a space is not sent either (Orthanc 1.10 does not decode %20)
])
def test_a_name_is_narrowed_to_a_text_every_match_contains(value, text):
    identifier = _received(SpecificCharacterSet="ISO_IR 192", QueryRetrieveLevel="STUDY", PatientName=value, StudyInstanceUID="")
    (key,) = [k for k in identifier_keys(identifier) if k.vr == "PN"]
    assert required_text(key) == text
    (search,) = translate(identifier, "STUDY", profile=store_profile("orthanc-1.12"))
    assert search.params.get("PatientName") == (f"*{text}*" if text else None)
    if text:  # and the adapter's own match of every value it accepts holds that text, in any case
        for stored in ("JONES^BEN^19", "Müller^Jörg", "müller^jürgen", "van der berg^anna", "Strauß^Kelvin"):
            if answer_matches([key], {"00100010": {"vr": "PN", "Value": [{"Alphabetic": stored}]}}):
                assert text.lower() in stored.lower()


def test_pn_case_never_folds_across_ascii():
    """The adapter ignores PN case letter by letter, never turning a non-ASCII letter into ASCII
    ones, so a store searching the ASCII text of a key in any case misses none of its matches."""
    assert fold_case("MÜLLER^JÖRG") == "müller^jörg" and fold_case("ΣΟΦΊΑ") == fold_case("σοφία")
    assert fold_case("Strauß") == "strauß" and fold_case("\u212a") == "\u212a"  # Kelvin sign
    keys = identifier_keys(_received(QueryRetrieveLevel="STUDY", PatientName="Strauss*"))
    assert not answer_matches(keys, {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Strauß^Anna"}]}})
    keys = identifier_keys(_received(QueryRetrieveLevel="STUDY", PatientName="kelvin"))
    assert not answer_matches(keys, {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "\u212aelvin"}]}})
    assert answer_matches(keys, {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "KELVIN"}]}})


def test_ranges_uid_lists_and_paths():
    identifier = _received(QueryRetrieveLevel="IMAGE", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4", SOPInstanceUID=["1.5", "1.6"], ContentDate="20240101-20240131")
    (search,) = translate(identifier, "IMAGE", fuzzy=True)
    assert (search.level, search.study, search.series) == ("instances", "1.2.3", "1.2.3.4")
    assert search.params == {"SOPInstanceUID": "1.5,1.6", "ContentDate": "20240101-20240131", "fuzzymatching": "true",
                             "includefield": ["SOPInstanceUID", "ContentDate", "StudyInstanceUID", "SeriesInstanceUID"]}


def test_several_modalities_become_one_search_each():
    identifier = _received(QueryRetrieveLevel="STUDY", ModalitiesInStudy=["CT", "MR", "CT"], StudyInstanceUID="")
    searches = translate(identifier, "STUDY")
    assert [search.params["ModalitiesInStudy"] for search in searches] == ["CT", "MR"]


def test_a_lone_asterisk_is_a_return_key():
    (search,) = translate(_received(QueryRetrieveLevel="STUDY", PatientName="*"), "STUDY")
    assert "PatientName" not in search.params and search.params["includefield"] == ["PatientName"]


def test_binary_values_cannot_be_matched():
    identifier = _received(QueryRetrieveLevel="STUDY")
    identifier.add_new(0x00091010, "OB", b"\x01\x02")
    with pytest.raises(QueryError) as refused:
        translate(identifier, "STUDY")
    assert refused.value.code == 0xA900


REFUSED = {
    "wildcard in a UID": ({"StudyInstanceUID": "1.2.*"}, "(0020,000D) is a UID: wildcards are not allowed in it"),
    "malformed date": ({"StudyDate": "2024013"}, "(0008,0020) '2024013' is not a DA value"),
    "reversed range": ({"StudyDate": "20240201-20240101"}, "(0008,0020) range '20240201-20240101' ends before it starts"),
    "range without ends": ({"StudyDate": "-"}, "(0008,0020) range '-' has no end"),
    "wildcard in a date": ({"StudyDate": "2024*"}, "(0008,0020) (DA) takes a value or a range, not wildcards"),
    "unknown character set": ({"SpecificCharacterSet": "ISO_IR 999"}, "Specific Character Set (0008,0005) 'ISO_IR 999' is not one DICOM defines"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_what_cannot_be_matched_is_refused_with_the_key_and_why(name: str):
    values, comment = REFUSED[name]
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    for keyword, value in values.items():
        setattr(identifier, keyword, value)
    with pytest.raises(QueryError) as refused:
        translate(identifier, "STUDY")
    assert refused.value.code == 0xA900 and refused.value.comment == comment


def test_ranges_times_and_lists_match_as_ps3_4_says():
    def answer(**elements: tuple[str, list]) -> dict:
        from pydicom.datadict import tag_for_keyword
        return {f"{tag_for_keyword(k):08X}": {"vr": vr, "Value": v} for k, (vr, v) in elements.items()}

    def matches(values: dict, stored: dict) -> bool:
        identifier = Dataset()
        for keyword, value in values.items():
            setattr(identifier, keyword, value)
        return answer_matches(identifier_keys(identifier), stored)

    assert matches({"StudyTime": "-1030"}, answer(StudyTime=("TM", ["103059.5"])))
    assert not matches({"StudyTime": "1031-"}, answer(StudyTime=("TM", ["103059"])))
    assert matches({"StudyDate": "20240101-"}, answer(StudyDate=("DA", ["20240101"])))
    assert not matches({"StudyDate": "20240101"}, answer())  # a non-universal key needs a value
    assert matches({"StudyDate": ""}, answer())  # universal
    assert matches({"ModalitiesInStudy": ["MR", "US"]}, answer(ModalitiesInStudy=("CS", ["CT", "US"])))
    assert not matches({"ModalitiesInStudy": "MR"}, answer(ModalitiesInStudy=("CS", ["CT", "US"])))
    assert matches({"SOPInstanceUID": ["1.2", "1.3"]}, answer(SOPInstanceUID=("UI", ["1.3"])))
    assert not matches({"AccessionNumber": "acc1"}, answer(AccessionNumber=("SH", ["ACC1"])))  # case-sensitive but PN
    assert matches({"StudyDescription": "*chest*"}, answer(StudyDescription=("LO", ["CT chest w/o"])))
