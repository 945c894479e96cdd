"""What the edge accepts and how it writes the buffered file, independent of any store.

The store address points at a closed port, so every acknowledged instance stays in the spool
queue where the test can read it.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from support.adapter import ADAPTER_AET, LocalAdapter
from support.dicom_files import dataset_bytes_after_meta
from support.processes import free_port
from support.sender import send_files

ENCAPSULATED_SYNTAXES = {
    "JPEG baseline": "1.2.840.10008.1.2.4.50",
    "JPEG extended": "1.2.840.10008.1.2.4.51",
    "JPEG lossless": "1.2.840.10008.1.2.4.57",
    "JPEG lossless SV1": "1.2.840.10008.1.2.4.70",
    "JPEG-LS lossless": "1.2.840.10008.1.2.4.80",
    "JPEG-LS near-lossless": "1.2.840.10008.1.2.4.81",
    "JPEG 2000 lossless": "1.2.840.10008.1.2.4.90",
    "JPEG 2000": "1.2.840.10008.1.2.4.91",
    "HTJ2K lossless": "1.2.840.10008.1.2.4.201",
    "HTJ2K lossless RPCL": "1.2.840.10008.1.2.4.202",
    "HTJ2K": "1.2.840.10008.1.2.4.203",
    "RLE": "1.2.840.10008.1.2.5",
    "MPEG2 MP@ML": "1.2.840.10008.1.2.4.100",
    "MPEG-4 AVC/H.264 HP@4.1": "1.2.840.10008.1.2.4.102",
    "HEVC/H.265 Main": "1.2.840.10008.1.2.4.107",
    "HEVC/H.265 Main 10": "1.2.840.10008.1.2.4.108",
}


@pytest.fixture
def adapter(tmp_path: Path):
    unreachable_store = f"http://127.0.0.1:{free_port()}/dicom-web"
    with LocalAdapter(tmp_path / "adapter", unreachable_store) as running:
        yield running


def _encapsulated_instance(path: Path, transfer_syntax: str, sop_class: str = "1.2.840.10008.5.1.4.1.1.77.1.4.1") -> Path:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "XC"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = 16, 16, 3, 8
    ds.NumberOfFrames = 2
    ds.PixelData = encapsulate([b"frame-one-bytes!" * 3, b"frame-two-bytes" * 5 + b"."])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def _queued_file_for(adapter: LocalAdapter, sop_instance_uid: str) -> Path:
    [entry] = [p for p in adapter.queue_entries() if f"-{sop_instance_uid}-" in p.name]
    return entry


def test_every_transfer_syntax_a_modality_may_propose_is_accepted_and_kept_exact(tmp_path: Path, adapter: LocalAdapter):
    files = {name: _encapsulated_instance(tmp_path / f"{i}.dcm", uid) for i, (name, uid) in enumerate(ENCAPSULATED_SYNTAXES.items())}
    results = send_files(list(files.values()), adapter.port, called_aet=ADAPTER_AET)
    assert {name: r.status for name, r in zip(files, results)} == {name: 0 for name in files}
    for name, path in files.items():
        sent = pydicom.dcmread(path, stop_before_pixels=True)
        queued = _queued_file_for(adapter, sent.SOPInstanceUID)
        meta = pydicom.filereader.read_file_meta_info(queued)
        assert meta.TransferSyntaxUID == ENCAPSULATED_SYNTAXES[name], name
        assert dataset_bytes_after_meta(queued) == dataset_bytes_after_meta(path), name


def test_private_sop_classes_are_accepted(tmp_path: Path, adapter: LocalAdapter):
    siemens_csa_non_image = "1.3.12.2.1107.5.9.1"
    path = _encapsulated_instance(tmp_path / "private.dcm", "1.2.840.10008.1.2.1", sop_class=siemens_csa_non_image)
    [result] = send_files([path], adapter.port, called_aet=ADAPTER_AET)
    assert result.status == 0
    sent = pydicom.dcmread(path, stop_before_pixels=True)
    queued = _queued_file_for(adapter, sent.SOPInstanceUID)
    assert pydicom.filereader.read_file_meta_info(queued).MediaStorageSOPClassUID == siemens_csa_non_image


def test_file_meta_records_syntax_and_ae_titles(tmp_path: Path, adapter: LocalAdapter):
    path = _encapsulated_instance(tmp_path / "a.dcm", "1.2.840.10008.1.2.4.50")
    send_files([path], adapter.port, called_aet=ADAPTER_AET, calling_aet="MODALITY7")
    queued = _queued_file_for(adapter, pydicom.dcmread(path).SOPInstanceUID)
    meta = pydicom.filereader.read_file_meta_info(queued)
    assert meta.SourceApplicationEntityTitle == "MODALITY7"
    assert meta.SendingApplicationEntityTitle == "MODALITY7"
    assert meta.ReceivingApplicationEntityTitle == ADAPTER_AET
    assert meta.ImplementationVersionName == "DICOM_ADAPTER_01"
