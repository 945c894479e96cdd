"""C-MOVE and C-GET against the oracle: DCMTK movescu/getscu asking Orthanc's own DIMSE port and
the adapter backed by that Orthanc must deliver the same files, data sets byte for byte, to a
DCMTK storescp; counts, failures and cancel are checked with pynetdicom as the SCU. A study
whose later series brings another SOP class gets a second association for it, with the counts
of the Pending responses unbroken."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from support.adapter import FAST_PATH, LocalAdapter
from support.dcmtk import StoreSCP, run_dcmtk
from support.dicom_files import (
    dataset_bytes_after_meta,
    make_ct_instance,
    pydicom_corpus,
)
from support.orthanc import Orthanc, orthanc_available
from support.processes import free_port
from support.query_corpus import CorpusStudy, make_query_corpus

DESTINATION = "DEST"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[CorpusStudy]:
    return make_query_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def jpeg_file():
    return pydicom_corpus()[JPEG_BASELINE][0]


@pytest.fixture(scope="module")
def destination_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def loaded_orthanc(tmp_path_factory, corpus, jpeg_file, destination_port) -> Iterator[Orthanc]:
    if not orthanc_available():
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    server = Orthanc(
        tmp_path_factory.mktemp("orthanc-retrieve"),
        modalities={DESTINATION: (DESTINATION, "127.0.0.1", destination_port)},
        cleanup_scope="session",
    )
    server.start()
    try:
        response = server.stow(*[i.path for study in corpus for i in study.instances], jpeg_file.path)
        assert response.status_code == 200, response.text[:500]
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mixed_study(tmp_path_factory, loaded_orthanc) -> list[Path]:
    """A study of 12 CT images in one series and 4 Secondary Capture images in another (as a
    screenshot series would come), stored in Orthanc; its files."""
    import pydicom
    from pydicom.uid import generate_uid

    directory = tmp_path_factory.mktemp("mixed-study")
    study_uid, ct_series, sc_series = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for n in range(16):
        path = directory / f"{n:02d}.dcm"
        make_ct_instance(
            path, patient_id="PIDMIX", study_instance_uid=study_uid, series_instance_uid=ct_series if n < 12 else sc_series,
            instance_number=n + 1, modality="CT" if n < 12 else "OT", size_kb=2, seed=n,
        )
        if n >= 12:
            ds = pydicom.dcmread(path)
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
            ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    assert loaded_orthanc.stow(*paths).status_code == 200
    return paths


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, loaded_orthanc, destination_port) -> Iterator[LocalAdapter]:
    peers = [
        {"name": DESTINATION, "host": "127.0.0.1", "port": destination_port},
        {"name": "NOBODY", "host": "127.0.0.1", "port": free_port()},  # nothing listens there
    ]
    running = LocalAdapter(
        tmp_path_factory.mktemp("adapter-retrieve"),
        loaded_orthanc.dicomweb_url,
        extra_args=["--aet_dictionary_inline", json.dumps(peers), "--dimse_cmove_aet", "ADAPTERMOVE"],
    )
    running.process.cleanup_scope = "session"
    running.start()
    yield running
    running.stop()


def _destination(directory: Path, port: int, **kwargs) -> StoreSCP:
    return StoreSCP(directory, aet=DESTINATION, port=port, **kwargs).start()


def _received(scp: StoreSCP) -> dict[str, bytes]:
    return {path.name: dataset_bytes_after_meta(path) for path in scp.received_files()}


def _keys(level: str, study: CorpusStudy, model: str) -> list[str]:
    instance = study.instances[0]
    keys = [f"QueryRetrieveLevel={level}"]
    if model == "P":
        keys.append(f"PatientID={study.patient_id}")
    if level in ("STUDY", "SERIES", "IMAGE"):
        keys.append(f"StudyInstanceUID={study.study_instance_uid}")
    if level in ("SERIES", "IMAGE"):
        keys.append(f"SeriesInstanceUID={instance.series_instance_uid}")
    if level == "IMAGE":
        keys.append(f"SOPInstanceUID={instance.sop_instance_uid}")
    return keys


def _study_with_series(corpus: list[CorpusStudy]) -> CorpusStudy:
    return next(study for study in corpus if len(study.modalities) == 2)


RETRIEVALS = {
    "study, study root": ("STUDY", "S"),
    "series, study root": ("SERIES", "S"),
    "image, study root": ("IMAGE", "S"),
    "patient, patient root": ("PATIENT", "P"),
    "study, patient root": ("STUDY", "P"),
}


def _dcmtk_args(keys: list[str]) -> list[str]:
    args = []
    for key in keys:
        args += ["-k", key]
    return args


@pytest.mark.parametrize("name", list(RETRIEVALS))
def test_move_delivers_what_orthanc_delivers(name, tmp_path, corpus, loaded_orthanc, adapter, destination_port):
    level, model = RETRIEVALS[name]
    keys = _keys(level, _study_with_series(corpus), model)
    received = {}
    for who, host, port, aet in (("orthanc", "127.0.0.1", loaded_orthanc.dimse_port, loaded_orthanc.aet), ("adapter", "127.0.0.1", adapter.port, adapter.aet)):
        scp = _destination(tmp_path / who, destination_port)
        try:
            result = run_dcmtk("movescu", [f"-{model}", "-aet", "MOVESCU", "-aec", aet, "-aem", DESTINATION, *_dcmtk_args(keys), host, str(port)])
            assert result.returncode == 0, result.stderr[-2000:] + adapter.process.output_tail()
        finally:
            scp.stop()
        received[who] = _received(scp)
    assert received["adapter"] == received["orthanc"]
    assert len(received["adapter"]) >= 1


@pytest.mark.parametrize("name", list(RETRIEVALS))
def test_get_delivers_what_orthanc_delivers(name, tmp_path, corpus, loaded_orthanc, adapter):
    level, model = RETRIEVALS[name]
    keys = _keys(level, _study_with_series(corpus), model)
    received = {}
    for who, port, aet in (("orthanc", loaded_orthanc.dimse_port, loaded_orthanc.aet), ("adapter", adapter.port, adapter.aet)):
        out = tmp_path / who
        out.mkdir()
        result = run_dcmtk("getscu", [f"-{model}", "+B", "-od", str(out), "-aet", "GETSCU", "-aec", aet, *_dcmtk_args(keys), "127.0.0.1", str(port)])
        assert result.returncode == 0, result.stderr[-2000:] + adapter.process.output_tail()
        received[who] = {path.name: dataset_bytes_after_meta(path) for path in sorted(out.iterdir())}
    assert received["adapter"] == received["orthanc"]
    assert len(received["adapter"]) >= 1


def _identifier(**values) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def _uids(value) -> list[str]:
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def _move(port: int, aet: str, identifier: Dataset, destination: str = DESTINATION, model=StudyRootQueryRetrieveInformationModelMove, cancel_after: int | None = None):
    ae = AE(ae_title="PYMOVESCU")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    assert assoc.is_established
    responses = []
    try:
        for status, answer in assoc.send_c_move(identifier, destination, model, msg_id=7):
            responses.append((status, answer))
            if cancel_after is not None and len(responses) == cancel_after:
                assoc.send_c_cancel(7, None, model)
    finally:
        assoc.release()
    return responses


def test_move_counts_pending_responses_and_success(tmp_path, corpus, adapter, destination_port):
    study = _study_with_series(corpus)
    scp = _destination(tmp_path / "dest", destination_port, extra_args=["-d"])
    try:
        responses = _move(adapter.port, adapter.aet, _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=study.study_instance_uid))
    finally:
        scp.stop()
    n = len(study.instances)
    pending = [status for status, _ in responses if status.Status == 0xFF00]
    # (pynetdicom's own service also sends a Pending after the last sub-operation)
    last_remaining = 0 if FAST_PATH else -1
    assert [s.NumberOfRemainingSuboperations for s in pending] == list(range(n - 1, last_remaining, -1))
    assert [s.NumberOfCompletedSuboperations for s in pending] == list(range(1, n + (last_remaining == -1)))
    final, identifier = responses[-1]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == n and final.NumberOfFailedSuboperations == 0
    assert len(scp.received_files()) == n
    if FAST_PATH:
        assert "ADAPTERMOVE" in scp.output(), "the destination is called as --dimse_cmove_aet"
    else:
        assert "ADAPTERMOVE" not in scp.output(), "pynetdicom's own service calls as the listener's AE title"
    assert scp.output().count("Association Acknowledged") == 1, "one association for the whole study"


def test_move_to_an_unknown_destination_is_refused(adapter, corpus):
    # PS3.4 C.4.2.1.5: 0xA801 "Move Destination unknown" (Orthanc 1.10 answers 0xC000 here).
    identifier = _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=corpus[0].study_instance_uid)
    (ours, _), = _move(adapter.port, adapter.aet, identifier, destination="UNKNOWN")
    assert ours.Status == 0xA801
    if FAST_PATH:  # (pynetdicom's own service sends no Error Comment with it)
        assert ours.ErrorComment == "move destination UNKNOWN is not in the AET dictionary"
    adapter.wait_for_log("C-MOVE destination unknown")


def test_move_to_a_destination_that_refuses(adapter, corpus):
    identifier = _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=corpus[0].study_instance_uid)
    (ours, _), = _move(adapter.port, adapter.aet, identifier, destination="NOBODY")
    assert ours.Status == 0xA801
    if FAST_PATH:  # (pynetdicom's own service sends no Error Comment with it)
        assert ours.ErrorComment.startswith("cannot associate with NOBODY at 127.0.0.1:")


def test_move_without_the_unique_key_fails_with_a_comment(adapter):
    (ours, _), = _move(adapter.port, adapter.aet, _identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2.3"))
    if FAST_PATH:
        assert ours.Status == 0xA900
        assert ours.ErrorComment == "SERIES level needs (0020,000E)"
    else:  # pynetdicom's own service answers a handler that refuses with "unable to process", no comment
        assert ours.Status == 0xC514
    adapter.wait_for_log("SERIES level needs (0020,000E)")


def test_cancel_stops_a_move(tmp_path, corpus, adapter, destination_port):
    patient_ids = [study.patient_id for study in corpus]
    scp = _destination(tmp_path / "dest", destination_port)
    try:
        identifier = _identifier(QueryRetrieveLevel="IMAGE", StudyInstanceUID="", SeriesInstanceUID="", SOPInstanceUID=[i.sop_instance_uid for s in corpus for i in s.instances])
        responses = _move(adapter.port, adapter.aet, identifier, cancel_after=1)
    finally:
        scp.stop()
    final, identifier = responses[-1]
    assert final.Status == 0xFE00
    assert final.NumberOfRemainingSuboperations > 0
    assert len(scp.received_files()) < sum(len(s.instances) for s in corpus)
    assert patient_ids


def test_a_compressed_instance_goes_to_an_uncompressed_only_destination_decoded_by_the_store(tmp_path, jpeg_file, adapter, destination_port):
    scp = _destination(tmp_path / "dest", destination_port, uncompressed_only=True)
    try:
        identifier = _identifier(
            QueryRetrieveLevel="IMAGE",
            StudyInstanceUID=jpeg_file.study_instance_uid,
            SeriesInstanceUID=jpeg_file.series_instance_uid,
            SOPInstanceUID=jpeg_file.sop_instance_uid,
        )
        responses = _move(adapter.port, adapter.aet, identifier)
    finally:
        scp.stop()
    final, _ = responses[-1]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 1
    import pydicom

    (received,) = scp.received_files()
    ds = pydicom.dcmread(received)
    assert ds.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
    assert ds.SOPInstanceUID == jpeg_file.sop_instance_uid


def test_get_lists_the_instances_it_could_not_send(corpus, jpeg_file, adapter):
    """The requester takes CT only: the JPEG instance (another SOP class) fails, the rest arrive."""
    study = corpus[0]
    received = []

    def on_store(event):
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    from pynetdicom import evt

    ae = AE(ae_title="PYGETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", adapter.port, ae_title=adapter.aet, ext_neg=[build_role(CTImageStorage, scp_role=True)], evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    wanted = [i.sop_instance_uid for i in study.instances] + [jpeg_file.sop_instance_uid]
    try:
        responses = list(assoc.send_c_get(_identifier(QueryRetrieveLevel="IMAGE", StudyInstanceUID="", SeriesInstanceUID="", SOPInstanceUID=wanted), StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    final, identifier = responses[-1]
    assert final.Status == 0xB000
    assert final.NumberOfCompletedSuboperations == len(study.instances) and final.NumberOfFailedSuboperations == 1
    assert _uids(identifier.FailedSOPInstanceUIDList) == [jpeg_file.sop_instance_uid]
    assert sorted(received) == sorted(i.sop_instance_uid for i in study.instances)
    adapter.process.wait_for_output(r"sub-operation failed.*destination accepted no context", timeout=10)


def test_get_of_nothing_but_unsendable_instances_fails_with_a702(jpeg_file, adapter):
    ae = AE(ae_title="PYGETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", adapter.port, ae_title=adapter.aet, ext_neg=[build_role(CTImageStorage, scp_role=True)])
    assert assoc.is_established
    try:
        identifier = _identifier(QueryRetrieveLevel="IMAGE", StudyInstanceUID=jpeg_file.study_instance_uid, SeriesInstanceUID=jpeg_file.series_instance_uid, SOPInstanceUID=jpeg_file.sop_instance_uid)
        responses = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    final, answer = responses[-1]
    assert final.Status == 0xA702 and final.NumberOfFailedSuboperations == 1
    assert _uids(answer.FailedSOPInstanceUIDList) == [jpeg_file.sop_instance_uid]


def test_a_later_series_of_another_sop_class_gets_a_second_association(tmp_path, mixed_study, loaded_orthanc, adapter, destination_port):
    import pydicom

    study_uid = pydicom.dcmread(mixed_study[0], stop_before_pixels=True).StudyInstanceUID
    keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}"]
    scp = _destination(tmp_path / "orthanc", destination_port)
    try:
        result = run_dcmtk("movescu", ["-S", "-aet", "MOVESCU", "-aec", loaded_orthanc.aet, "-aem", DESTINATION, *_dcmtk_args(keys), "127.0.0.1", str(loaded_orthanc.dimse_port)])
        assert result.returncode == 0, result.stderr[-2000:]
    finally:
        scp.stop()
    theirs = _received(scp)
    scp = _destination(tmp_path / "adapter", destination_port, extra_args=["-d"])
    try:
        responses = _move(adapter.port, adapter.aet, _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=study_uid))
    finally:
        scp.stop()
    assert _received(scp) == theirs and len(theirs) == 16
    final, _ = responses[-1]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 16 and final.NumberOfFailedSuboperations == 0
    if not FAST_PATH:  # pynetdicom's own service: one association, offered every class of the plan
        assert scp.output().count("Association Acknowledged") == 1
        return
    pending = [status for status, _ in responses if status.Status == 0xFF00]
    assert [s.NumberOfRemainingSuboperations for s in pending] == list(range(15, 0, -1))
    assert [s.NumberOfCompletedSuboperations for s in pending] == list(range(1, 16))
    assert scp.output().count("Association Acknowledged") == 2, "a second association for the SOP class the first was not offered"
    assert scp.output().count("Association Release") == 2, "one after the other: the first released before the second"
    adapter.process.wait_for_output(r"retrieve done .*instances=16 .*associations=2", timeout=10)


def test_cancel_stops_a_move_of_a_study(tmp_path, mixed_study, adapter, destination_port):
    """Above IMAGE level too (the series planned by their counts): Cancel, with the remaining
    count, after what was under way."""
    import pydicom

    study_uid = pydicom.dcmread(mixed_study[0], stop_before_pixels=True).StudyInstanceUID
    scp = _destination(tmp_path / "dest", destination_port, extra_args=["--sleep-after", "1"])  # a slow destination
    try:
        responses = _move(adapter.port, adapter.aet, _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=study_uid), cancel_after=1)
    finally:
        scp.stop()
    final, _ = responses[-1]
    assert final.Status == 0xFE00
    assert final.NumberOfRemainingSuboperations == 16 - final.NumberOfCompletedSuboperations - final.NumberOfFailedSuboperations > 0
    assert len(scp.received_files()) == final.NumberOfCompletedSuboperations <= 3
