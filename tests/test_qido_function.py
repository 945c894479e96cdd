"""The `qido` entry point of functions/main.py served by functions-framework as Cloud Functions
runs it, and the edge using it (`--qido_url`): the same answers as the in-process translation
and as Orthanc's own C-FIND; malformed requests and bad identifiers get their reasons."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import requests
from pydicom.dataset import Dataset

from dicom_adapter import qido
from dicom_adapter.config import UploadSettings
from dicom_adapter.qido_client import QidoFunctionClient
from dicom_adapter.upload import store_client
from support.adapter import LocalAdapter
from support.dcmtk import findscu, run_dcmtk
from support.orthanc import Orthanc
from support.processes import ManagedProcess, free_port, wait_for_port
from support.query_corpus import make_query_corpus
from support.shipped import functions_under_test

@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("orthanc-qido"), extra_config={"DefaultEncoding": "Utf8"}, cleanup_scope="session")
    server.start()
    try:
        corpus = make_query_corpus(tmp_path_factory.mktemp("corpus"))
        assert server.stow(*[i.path for study in corpus for i in study.instances]).status_code == 200
        yield server
    finally:
        server.stop()


def _start_function(log_dir: Path, store: Orthanc, **env: str) -> ManagedProcess:
    port = free_port()
    deploy = functions_under_test()
    process = ManagedProcess(
        deploy.command("qido", port),
        log_dir=log_dir,
        name="functions-framework-qido",
        cwd=deploy.source,
        extra_env={"DICOM_ADAPTER_DICOMWEB_ADDRESS": store.dicomweb_url, **env},
        cleanup_scope="session",
    )
    process.start()
    wait_for_port("127.0.0.1", port, timeout=60, process=process)
    process.url = f"http://127.0.0.1:{port}/"  # type: ignore[attr-defined]
    return process


@pytest.fixture(scope="module")
def qido_function(tmp_path_factory: pytest.TempPathFactory, store: Orthanc) -> Iterator[ManagedProcess]:
    """The function with pages of 5 (every query below has more results), trusting the store
    with what Orthanc 1.10 matches right (store_profiles.py)."""
    process = _start_function(tmp_path_factory.mktemp("qido-function"), store,
                              DICOM_ADAPTER_QIDO_PAGE_SIZE="5", DICOM_ADAPTER_QIDO_STORE_PROFILE="orthanc-1.10")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def qido_url(qido_function: ManagedProcess) -> str:
    return qido_function.url  # type: ignore[attr-defined]


def _identifier(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_the_function_answers_as_the_translation_in_process(qido_url: str, store: Orthanc):
    identifier = _identifier(QueryRetrieveLevel="STUDY", PatientName="", PatientID="", StudyInstanceUID="", StudyDate="20220101-20241231")
    remote = [ds.to_json_dict() for ds in QidoFunctionClient(qido_url).find(identifier, qido.STUDY_ROOT)]
    local = [ds.to_json_dict() for ds in qido.find(store_client(UploadSettings(store.dicomweb_url)), identifier, qido.STUDY_ROOT)]
    assert sorted(map(str, remote)) == sorted(map(str, local))
    assert len(remote) == 18
    refs = list(QidoFunctionClient(qido_url).resolve_instances(_identifier(QueryRetrieveLevel="PATIENT", PatientID="PID001"), qido.PATIENT_ROOT))
    assert len(refs) == 2 and all(ref.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2" for ref in refs)


def test_a_retrieval_plan_names_series_with_their_counts(qido_url: str, store: Orthanc):
    """Above IMAGE level: the series and how many instances each holds, from the function as
    in process; at IMAGE level the instances themselves."""
    client = store_client(UploadSettings(store.dicomweb_url))
    remote = QidoFunctionClient(qido_url)
    patient = _identifier(QueryRetrieveLevel="PATIENT", PatientID="PID002")  # two studies: MR, then CT+MR
    plan = list(qido.plan_retrieval(client, patient, qido.PATIENT_ROOT))
    assert list(remote.plan_retrieval(patient, qido.PATIENT_ROOT)) == plan
    assert all(isinstance(item, qido.SeriesRef) for item in plan)
    assert len(plan) == 3 and sorted(item.instances for item in plan) == [1, 2, 2]
    assert len({item.study_instance_uid for item in plan}) == 2
    instances = list(qido.resolve_instances(client, patient, qido.PATIENT_ROOT))
    for item in plan:
        assert item.instances == sum(1 for ref in instances if ref.series_instance_uid == item.series_instance_uid)
    series = plan[0]
    one = _identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID=series.study_instance_uid, SeriesInstanceUID=series.series_instance_uid)
    assert list(qido.plan_retrieval(client, one, qido.STUDY_ROOT)) == [series]
    image = _identifier(QueryRetrieveLevel="IMAGE", StudyInstanceUID="", SeriesInstanceUID="", SOPInstanceUID=instances[0].sop_instance_uid)
    assert list(remote.plan_retrieval(image, qido.STUDY_ROOT)) == [instances[0]]


def test_a_bad_identifier_comes_back_as_its_dimse_status(qido_url: str):
    with pytest.raises(qido.QueryError) as refused:
        list(QidoFunctionClient(qido_url).find(_identifier(PatientName=""), qido.STUDY_ROOT))
    assert (refused.value.code, refused.value.comment) == (0xA900, "Query/Retrieve Level (0008,0052) is missing")


def test_an_unknown_store_profile_fails_each_request_with_the_reason(tmp_path: Path, store: Orthanc):
    """A deployment mistake: no request is answered with the wrong matching, each says why."""
    function = _start_function(tmp_path, store, DICOM_ADAPTER_QIDO_STORE_PROFILE="orthanc-9")
    try:
        with pytest.raises(qido.QueryError) as refused:
            list(QidoFunctionClient(function.url).find(_identifier(QueryRetrieveLevel="STUDY", PatientID=""), qido.STUDY_ROOT))  # type: ignore[attr-defined]
        assert refused.value.code == qido.OUT_OF_RESOURCES
        assert refused.value.comment.startswith("qido function answered HTTP 500: unknown QIDO store profile 'orthanc-9'; one of: conservative")
    finally:
        function.stop()


def test_a_malformed_request_gets_400_with_the_reason(qido_url: str):
    response = requests.post(qido_url, data=b"not json", timeout=30)
    assert response.status_code == 400
    assert response.json()["error"].startswith("malformed qido request: JSONDecodeError")
    response = requests.post(qido_url, json={"model": "WORKLIST", "identifier": {}}, timeout=30)
    assert response.status_code == 400 and "model one of" in response.json()["error"]


def test_the_edge_answers_c_find_and_c_get_through_the_function(tmp_path: Path, qido_function: ManagedProcess, store: Orthanc):
    keys = ["QueryRetrieveLevel=SERIES", "StudyInstanceUID", "SeriesInstanceUID", "Modality=CT"]
    get_keys = ["-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PID004"]
    # The instances' bytes still come from the store (WADO-RS); the searches go to the function.
    (tmp_path / "got").mkdir()
    with LocalAdapter(tmp_path / "adapter", store.dicomweb_url, extra_args=["--qido_url", qido_function.url]) as adapter:  # type: ignore[attr-defined]
        ours, our_files = findscu("127.0.0.1", adapter.port, keys, out_dir=tmp_path / "ours", called_aet=adapter.aet)
        fetched = run_dcmtk("getscu", ["-P", "-od", str(tmp_path / "got"), "-aec", adapter.aet, *get_keys, "127.0.0.1", str(adapter.port)])
    theirs, their_files = findscu(store.host, store.dimse_port, keys, out_dir=tmp_path / "theirs", called_aet=store.aet)
    assert ours.returncode == theirs.returncode == 0
    assert len(our_files) == len(their_files) == 15
    assert fetched.returncode == 0 and len(list((tmp_path / "got").iterdir())) == 5
    function_logs = qido_function.output()
    assert '"purpose": "find"' in function_logs and '"purpose": "plan"' in function_logs
