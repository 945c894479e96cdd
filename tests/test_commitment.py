"""Storage Commitment (push model) with pynetdicom as the SCU and N-EVENT-REPORT receiver:
instances in the store are committed, missing and wrong-class ones fail with their reasons,
and an instance still in the adapter's buffer is committed once its upload lands."""

from __future__ import annotations

import json
import queue
from pathlib import Path
from typing import Iterator

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, StorageCommitmentPushModel

from support.adapter import LocalAdapter
from support.dicom_files import make_ct_instance
from support.orthanc import Orthanc
from support.processes import free_port
from support.sender import send_files

REQUESTER = "COMMITSCU"


class Requester:
    """A storage commitment SCU that also receives the N-EVENT-REPORTs."""

    def __init__(self) -> None:
        self.port = free_port()
        self.reports: queue.Queue[tuple[int, Dataset, str]] = queue.Queue()
        self.ae = AE(ae_title=REQUESTER)
        self.ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self.ae.add_requested_context(StorageCommitmentPushModel)
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)])

    def _on_report(self, event):
        self.reports.put((event.event_type, event.event_information, event.assoc.requestor.ae_title))
        return 0x0000, None

    def request(self, adapter: LocalAdapter, references: list[tuple[str, str]], transaction_uid: str) -> Dataset:
        info = Dataset()
        info.TransactionUID = transaction_uid
        items = []
        for sop_class, sop_instance in references:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            items.append(item)
        info.ReferencedSOPSequence = items
        assoc = self.ae.associate("127.0.0.1", adapter.port, ae_title=adapter.aet)
        assert assoc.is_established
        try:
            status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
        finally:
            assoc.release()
        return status

    def next_report(self, timeout: float = 60) -> tuple[int, Dataset, str]:
        return self.reports.get(timeout=timeout)

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def requester() -> Iterator[Requester]:
    scu = Requester()
    yield scu
    scu.stop()


def _adapter(tmp_path: Path, store_url: str, requester: Requester, *args: str) -> LocalAdapter:
    peers = json.dumps([{"name": REQUESTER, "host": "127.0.0.1", "port": requester.port}])
    return LocalAdapter(tmp_path, store_url, extra_args=["--aet_dictionary_inline", peers, "--dimse_cmove_aet", "COMMITTER", *args])


def _uids(items) -> set[tuple[str, str]]:
    return {(str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID)) for item in items}


def test_commitment_reports_stored_missing_and_wrong_class_instances(tmp_path: Path, fresh_orthanc: Orthanc, requester: Requester):
    stored = [make_ct_instance(tmp_path / f"{n}.dcm", size_kb=2) for n in range(2)]
    assert fresh_orthanc.stow(*[i.path for i in stored]).status_code == 200
    missing = generate_uid()
    references = [(CTImageStorage, i.sop_instance_uid) for i in stored] + [(CTImageStorage, missing), (MRImageStorage, stored[0].sop_instance_uid)]
    with _adapter(tmp_path / "adapter", fresh_orthanc.dicomweb_url, requester) as adapter:
        transaction = generate_uid()
        status = requester.request(adapter, references, transaction)
        assert status.Status == 0x0000
        event_type, info, caller = requester.next_report()
    assert caller == "COMMITTER"
    assert event_type == 2 and info.TransactionUID == transaction
    assert _uids(info.ReferencedSOPSequence) == {(CTImageStorage, i.sop_instance_uid) for i in stored}
    reasons = {str(item.ReferencedSOPInstanceUID) + "/" + str(item.ReferencedSOPClassUID): int(item.FailureReason) for item in info.FailedSOPSequence}
    assert reasons == {f"{missing}/{CTImageStorage}": 0x0112, f"{stored[0].sop_instance_uid}/{MRImageStorage}": 0x0119}


def test_an_instance_still_in_the_buffer_is_committed_once_it_lands(tmp_path: Path, requester: Requester):
    store = Orthanc(tmp_path / "store")  # not started yet: the upload waits in the spool
    instance = make_ct_instance(tmp_path / "late.dcm", size_kb=2)
    with _adapter(tmp_path / "adapter", store.dicomweb_url, requester) as adapter:
        (result,) = send_files([instance.path], adapter.port, called_aet=adapter.aet)
        assert result.status == 0x0000
        assert adapter.queue_entries(), "the instance waits in the buffer while the store is down"
        status = requester.request(adapter, [(CTImageStorage, instance.sop_instance_uid)], generate_uid())
        assert status.Status == 0x0000
        assert requester.reports.empty()
        store.start()
        try:
            event_type, info, _ = requester.next_report(timeout=90)
        finally:
            store.stop()
    assert event_type == 1
    assert _uids(info.ReferencedSOPSequence) == {(CTImageStorage, instance.sop_instance_uid)}
    assert "FailedSOPSequence" not in info


def test_a_requester_not_in_the_dictionary_is_told_why(tmp_path: Path, fresh_orthanc: Orthanc, requester: Requester):
    with LocalAdapter(tmp_path / "adapter", fresh_orthanc.dicomweb_url) as adapter:
        status = requester.request(adapter, [(CTImageStorage, generate_uid())], generate_uid())
    assert status.Status == 0x0110
    assert status.ErrorComment == "COMMITSCU is not in the AET dictionary: no report address"


def test_a_request_without_references_is_refused(tmp_path: Path, fresh_orthanc: Orthanc, requester: Requester):
    with _adapter(tmp_path / "adapter", fresh_orthanc.dicomweb_url, requester) as adapter:
        status = requester.request(adapter, [], generate_uid())
    assert status.Status == 0x0120
