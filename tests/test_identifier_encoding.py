"""C-FIND response identifiers written straight from DICOM JSON (edge_listener/
identifier_encoding.py) equal, byte for byte, what the pydicom way gives: qido.to_identifier,
the requester's character set or UTF-8 (query.with_character_set), pydicom's encoder."""

from __future__ import annotations

import itertools

import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom.dsutils import encode

from dicom_adapter import qido
from pydicom.charset import python_encoding

from edge_listener.services import identifier_encoding

IMPLICIT, EXPLICIT, BIG = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"


def study_request(**extra: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in ("PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber",
                    "StudyDescription", "ModalitiesInStudy", "StudyInstanceUID", "NumberOfStudyRelatedInstances"):
        setattr(ds, keyword, "")
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def answer(name: object = None, **extra: dict) -> dict:
    base = {
        "00080020": {"vr": "DA", "Value": ["20200101"]},
        "00080030": {"vr": "TM", "Value": ["101010"]},
        "00080050": {"vr": "SH", "Value": ["ACC1"]},
        "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
        "00081030": {"vr": "LO", "Value": ["CT CHEST"]},
        "00100020": {"vr": "LO", "Value": ["PID1"]},
        "0020000D": {"vr": "UI", "Value": ["1.2.3.4"]},
        "00201208": {"vr": "IS", "Value": [500]},
    }
    if name is not None:
        base["00100010"] = {"vr": "PN", "Value": [name]}
    base.update(extra)
    return base


ANSWERS = {
    "ascii": answer({"Alphabetic": "Smith^Anna"}),
    "latin-1": answer({"Alphabetic": "Müller^Jürgen"}),
    "greek": answer({"Alphabetic": "Παπαδόπουλος^Νίκος"}),
    "ideographic": answer({"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}),
    "phonetic only": answer({"Phonetic": "やまだ^たろう"}),
    "no name": answer(),
    "empty values": answer(None, **{"00080050": {"vr": "SH"}, "00081030": {"vr": "LO", "Value": []}}),
    "odd lengths": answer({"Alphabetic": "Li^Bo"}, **{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}),
    "IS as text": answer(None, **{"00201208": {"vr": "IS", "Value": ["42"]}}),
    "description in UTF-8": answer(None, **{"00081030": {"vr": "LO", "Value": ["Épaule gauche"]}}),
    "a decimal string (pydicom)": answer(None, **{"00101030": {"vr": "DS", "Value": [72.5]}}),
    "bulk data (pydicom)": answer(None, **{"00081030": {"vr": "LO", "BulkDataURI": "http://x/bulk"}}),
}
CHARSETS = [None, "", "ISO_IR 100", "ISO_IR 192", "ISO_IR 126", MultiValue(str, ["", "ISO 2022 IR 87"])]
REQUESTS = {
    "study keys": study_request(),
    "with a sequence (pydicom)": study_request(ReferencedStudySequence=[]),
    "weight (DS)": study_request(PatientWeight=""),
}


def with_character_set(match: Dataset, requested: object) -> Dataset:
    """The reference: how responses got their character set before (query.with_character_set)."""
    terms = [] if not requested else [str(t).strip() for t in ([requested] if isinstance(requested, str) else requested) if str(t).strip()]
    texts = [str(e.value) for e in match if e.VR in {"PN", "LO", "SH", "ST", "LT", "UT", "UC"} and not e.is_empty]
    if not terms:
        fits = all(text.isascii() for text in texts)
    elif len(terms) > 1 or terms[0].startswith("ISO 2022"):
        fits = True
    else:
        codec = python_encoding.get(terms[0])
        try:
            fits = codec is not None and all(text.encode(codec) is not None for text in texts)
        except UnicodeEncodeError:
            fits = False
    if fits:
        if terms:
            match.SpecificCharacterSet = requested
        return match
    match.SpecificCharacterSet = "ISO_IR 192"
    return match


def pydicom_way(answer: dict, request: Dataset, requested: object, transfer_syntax: str) -> bytes:
    ts = UID(transfer_syntax)
    match = with_character_set(qido.to_identifier(answer, request, "STUDY"), requested)
    return encode(match, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)


@pytest.mark.parametrize(("answer_name", "request_name", "charset", "transfer_syntax"),
                         list(itertools.product(ANSWERS, REQUESTS, range(len(CHARSETS)), [IMPLICIT, EXPLICIT, BIG])))
def test_same_bytes_as_pydicom(answer_name, request_name, charset, transfer_syntax):
    request, requested = REQUESTS[request_name], CHARSETS[charset]
    if requested is not None:
        request = Dataset(request)
        request.SpecificCharacterSet = requested
    expected = pydicom_way(ANSWERS[answer_name], request, requested, transfer_syntax)
    match = qido.identifier_json(ANSWERS[answer_name], request, "STUDY")
    assert identifier_encoding.encode_identifier(match, requested, transfer_syntax) == expected


@pytest.mark.parametrize("answer_name", [name for name in ANSWERS if "pydicom" not in name])
@pytest.mark.parametrize("requested", [None, "ISO_IR 100", "ISO_IR 192"])
def test_plain_matches_take_the_fast_way(answer_name, requested, monkeypatch):
    def refuse(*args):
        raise AssertionError("went the pydicom way")

    monkeypatch.setattr(identifier_encoding, "_encode_with_pydicom", refuse)
    match = qido.identifier_json(ANSWERS[answer_name], study_request(), "STUDY")
    assert identifier_encoding.encode_identifier(match, requested, EXPLICIT)
