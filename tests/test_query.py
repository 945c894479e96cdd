"""C-FIND against the oracle: the same DCMTK findscu query answered by Orthanc's own DIMSE port
and by the adapter backed by that Orthanc (through QIDO-RS) must give the same result set.

Orthanc 1.10 with DICOMweb 1.7 does not percent-decode QIDO-RS parameters (a space, '^' or a
non-ASCII letter in a match value never matches) and its limit/offset paging skips matches
when ModalitiesInStudy is a filter; the tables avoid those, and non-ASCII matching is checked
on the translation (test_qido_translation.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from support.adapter import LocalAdapter
from support.dcmtk import findscu
from support.orthanc import Orthanc, orthanc_available
from support.query_corpus import CorpusStudy, make_query_corpus

PAGE_SIZE = 4

# Orthanc's QIDO-RS matches person names case-sensitively by default, its C-FIND does not:
# make both the same so the two answers can be compared.
ORTHANC_DICOMWEB = {"Enable": True, "Root": "/dicom-web/", "Ssl": False, "QidoCaseSensitive": False}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[CorpusStudy]:
    return make_query_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def loaded_orthanc(tmp_path_factory: pytest.TempPathFactory, corpus: list[CorpusStudy]) -> Iterator[Orthanc]:
    if not orthanc_available():
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    server = Orthanc(tmp_path_factory.mktemp("orthanc-qr"), extra_config={"DicomWeb": ORTHANC_DICOMWEB}, cleanup_scope="session")
    server.start()
    try:
        response = server.stow(*[instance.path for study in corpus for instance in study.instances])
        assert response.status_code == 200, response.text[:500]
        yield server
    finally:
        server.stop()


def _adapter(tmp_path_factory: pytest.TempPathFactory, orthanc: Orthanc, *args: str) -> Iterator[LocalAdapter]:
    running = LocalAdapter(tmp_path_factory.mktemp("adapter-qr"), orthanc.dicomweb_url, extra_args=list(args))
    running.process.cleanup_scope = "session"
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, loaded_orthanc: Orthanc) -> Iterator[LocalAdapter]:
    yield from _adapter(tmp_path_factory, loaded_orthanc)


@pytest.fixture(scope="module")
def paging_adapter(tmp_path_factory: pytest.TempPathFactory, loaded_orthanc: Orthanc) -> Iterator[LocalAdapter]:
    """Asks the store for PAGE_SIZE results at a time: every query below has more."""
    yield from _adapter(tmp_path_factory, loaded_orthanc, "--qido_page_size", str(PAGE_SIZE))


def _value(ds: Dataset, keyword: str) -> object:
    if keyword not in ds:
        return ""
    value = ds.data_element(keyword).value
    if isinstance(value, (list, MultiValue)):
        return tuple(sorted(str(v) for v in value))
    return "" if value is None else str(value).strip()


def _results(files: list[Path], keywords: list[str]) -> list[tuple]:
    rows = []
    for path in files:
        ds = pydicom.dcmread(path)
        rows.append(tuple(_value(ds, keyword) for keyword in keywords))
    return sorted(rows)


def _keywords(keys: list[str]) -> list[str]:
    return [key.split("=", 1)[0] for key in keys if not key.startswith(("QueryRetrieveLevel", "SpecificCharacterSet"))]


def _both(tmp_path: Path, orthanc: Orthanc, adapter: LocalAdapter, keys: list[str], model: str = "S", **kwargs) -> tuple[list, list]:
    theirs, their_files = findscu(orthanc.host, orthanc.dimse_port, keys, out_dir=tmp_path / "orthanc", model=model, called_aet=orthanc.aet, **kwargs)
    ours, our_files = findscu("127.0.0.1", adapter.port, keys, out_dir=tmp_path / "adapter", model=model, called_aet=adapter.aet, **kwargs)
    assert theirs.returncode == 0, theirs.stderr[-2000:]
    assert ours.returncode == 0, ours.stderr[-2000:] + adapter.process.output_tail()
    return _results(their_files, _keywords(keys)), _results(our_files, _keywords(keys))


STUDY_KEYS = ["PatientName", "PatientID", "StudyDate", "AccessionNumber", "StudyInstanceUID", "ModalitiesInStudy", "StudyDescription"]


def _study(**match: str) -> list[str]:
    return ["QueryRetrieveLevel=STUDY"] + [f"{key}={match.get(key, '')}" for key in STUDY_KEYS] + [
        f"{key}={value}" for key, value in match.items() if key not in STUDY_KEYS
    ]


STUDY_ROOT_QUERIES = {
    "all studies": (_study(), 18),
    "name wildcard *": (_study(PatientName="Smith*"), 3),
    "name wildcard ? and case": (_study(PatientName="sm?th*"), 4),
    "patient id": (_study(PatientID="PID004"), 2),
    "date range": (_study(StudyDate="20230101-20231231"), 1),
    "open date range from": (_study(StudyDate="20240101-"), 1),
    "open date range to": (_study(StudyDate="-20221231"), 1),
    "single date": (_study(StudyDate="20220101"), 0),
    "accession": (_study(AccessionNumber="ACC0031"), 1),
    "modalities in study, one": (_study(ModalitiesInStudy="US"), 1),
    "modalities in study, several": (_study(ModalitiesInStudy="US\\MR"), 1),
    "description wildcard": (_study(StudyDescription="*PID01*"), 1),
    "name wildcard inside": (_study(PatientName="*er*"), 3),
    "return keys only at series": (
        ["QueryRetrieveLevel=SERIES", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "SeriesDate"],
        1,
    ),
    "series by modality": (["QueryRetrieveLevel=SERIES", "StudyInstanceUID", "SeriesInstanceUID", "Modality=MR", "SeriesDescription"], 1),
    "images": (["QueryRetrieveLevel=IMAGE", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "InstanceNumber"], 1),
}


@pytest.mark.parametrize("name", list(STUDY_ROOT_QUERIES))
def test_study_root_find_equals_orthanc(name: str, tmp_path: Path, loaded_orthanc: Orthanc, adapter: LocalAdapter):
    keys, minimum = STUDY_ROOT_QUERIES[name]
    theirs, ours = _both(tmp_path, loaded_orthanc, adapter, keys)
    assert ours == theirs
    assert len(ours) >= minimum


PAGED_QUERIES = {
    "all studies": (_study(), 18),
    "all images": (["QueryRetrieveLevel=IMAGE", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"], 45),
    "all series of CT": (["QueryRetrieveLevel=SERIES", "StudyInstanceUID", "SeriesInstanceUID", "Modality=CT"], 15),
}


@pytest.mark.parametrize("name", list(PAGED_QUERIES))
def test_find_with_more_results_than_a_page_returns_everything(name: str, tmp_path: Path, loaded_orthanc: Orthanc, paging_adapter: LocalAdapter):
    keys, expected = PAGED_QUERIES[name]
    theirs, ours = _both(tmp_path, loaded_orthanc, paging_adapter, keys)
    assert ours == theirs
    assert len(ours) == expected > PAGE_SIZE
