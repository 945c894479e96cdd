"""Per-destination transforms end to end (issue 24): one routing rule sends every instance
byte-exact to a clinical Orthanc and a de-identified, JPEG 2000 lossless copy to a research
Orthanc, through `dicom-adapter local` as installed from the wheel.

The research store holds no value the Basic Profile takes away (tag by tag against the
profile table the adapter uses), the marking PS3.15 requires, pixels equal to the original's,
new UIDs consistent across a study; a re-send changes nothing in either store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.uid import JPEG2000Lossless, generate_uid

from support.adapter import LocalAdapter
from support.checks import assert_byte_exact
from support.dicom_files import dataset_bytes_after_meta, make_ct_instance
from support.deid_checks import assert_basic_profile_applied
from support.sender import send_files

# One file per received transfer syntax (distinct SOP Instance UIDs): Explicit VR LE, big
# endian, RLE, JPEG baseline. (What cannot be transcoded: tests/test_transforms.py.)
NAMES = ["CT_small.dcm", "MR_small_bigendian.dcm", "SC_rgb_rle.dcm", "SC_jpeg_no_color_transform.dcm"]
KEY_ENV = "RESEARCH_DEID_KEY"


@pytest.fixture
def sent(tmp_path: Path) -> list[Path]:
    """The corpus files, and a second instance of CT_small's study (same study, new instance)."""
    paths = [Path(get_testdata_file(name)) for name in NAMES]
    sibling = pydicom.dcmread(paths[0])
    sibling.SOPInstanceUID = sibling.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sibling.save_as(tmp_path / "CT_small_sibling.dcm", enforce_file_format=True)
    return [*paths, tmp_path / "CT_small_sibling.dcm"]


def _copy_of(adapter: LocalAdapter, received_uid: str) -> str:
    """The copy's SOP Instance UID, from the 'stored' line of the research destination."""
    for line in adapter.logs().splitlines():
        if "stored" in line and f"received_sop_instance_uid={received_uid}" in line:
            return line.split("copy_sop_instance_uid=", 1)[1].split()[0]
    raise AssertionError(f"no stored line for a copy of {received_uid}")


def _digests(store) -> dict[str, str]:
    return {uid: hashlib.sha256(store.instance_file(uid)).hexdigest() for uid in store.list_sop_instance_uids()}


def test_byte_exact_to_one_store_deidentified_jpeg2000_to_another(tmp_path, sent, fresh_orthanc, orthanc_factory):
    clinical, research = fresh_orthanc, orthanc_factory()
    rules = [{"filter": "", "destinations": [
        {"dicomweb_destination": clinical.dicomweb_url},
        {"dicomweb_destination": research.dicomweb_url, "deidentify": {"profile": "basic"}, "transfer_syntax": JPEG2000Lossless},
    ]}]
    adapter = LocalAdapter(
        tmp_path / "adapter",
        extra_args=["--destination_config_inline", json.dumps(rules), "--deidentify_key_secret", f"env:{KEY_ENV}"],
        extra_env={KEY_ENV: "research project key"},
    )
    with adapter:
        results = send_files(sent, adapter.port)
        assert [r.status for r in results] == [0] * len(sent), results
        adapter.wait_until_drained()
        assert adapter.dead_letters() == []
        before = (_digests(clinical), _digests(research))
        # A re-send: both stores keep what they hold (the copy is made again, the same bytes).
        assert [r.status for r in send_files(sent, adapter.port)] == [0] * len(sent)
        adapter.wait_until_drained()
        assert adapter.dead_letters() == []
        assert (_digests(clinical), _digests(research)) == before
        copies = {path: _copy_of(adapter, pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in sent}
        logs = adapter.logs()

    assert len(clinical.list_sop_instance_uids()) == len(research.list_sop_instance_uids()) == len(sent)
    study_uids: dict[str, set[str]] = {}
    for path, copy_uid in copies.items():
        original = pydicom.dcmread(path)
        assert_byte_exact(clinical, path, original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID, "PYSCU")
        copy = pydicom.dcmread(DicomBytesIO(research.instance_file(copy_uid)))
        assert copy.SOPInstanceUID == copy_uid != original.SOPInstanceUID
        assert_basic_profile_applied(original, copy)
        assert copy.file_meta.TransferSyntaxUID == JPEG2000Lossless
        assert numpy.array_equal(copy.pixel_array, original.pixel_array), f"{path.name}: pixels differ"
        study_uids.setdefault(original.StudyInstanceUID, set()).add(copy.StudyInstanceUID)
    assert all(len(new) == 1 for new in study_uids.values()), "one new Study UID per study"
    assert len({uid for new in study_uids.values() for uid in new}) == len(study_uids)
    assert "transform=" in logs and "[de-identified (basic), as 1.2.840.10008.1.2.4.90]" in logs


def test_a_copy_that_cannot_be_made_is_dead_lettered_never_sent_as_received(tmp_path, fresh_orthanc):
    """De-identification asked for, its key unavailable: the instance is not stored as received
    instead; its original bytes wait in the dead letters with the reason and the transform."""
    sent = make_ct_instance(tmp_path / "ct.dcm")
    args = ["--redact_filter_profile", "basic", "--deidentify_key_secret", f"env:{KEY_ENV}"]  # (not set)
    with LocalAdapter(tmp_path / "adapter", fresh_orthanc.dicomweb_url, extra_args=args) as adapter:
        [result] = send_files([sent.path], adapter.port)
        assert result.status == 0
        adapter.wait_until_drained()
        [dead] = adapter.dead_letters()
    assert fresh_orthanc.list_sop_instance_uids() == []
    assert dataset_bytes_after_meta(dead.read_bytes()) == dataset_bytes_after_meta(sent.path)
    record = json.loads(dead.with_suffix(".json").read_text())
    assert record["reason"].startswith("de-identification key unavailable")
    assert record["transform"] == "de-identified (basic)"


def test_routing_knows_the_transform_keys_without_importing_the_transforms():
    from dicom_adapter import routing, transforms

    assert routing._TRANSFORM_KEYS == transforms.TRANSFORM_KEYS


@pytest.mark.parametrize(
    "args, named",
    [
        (["--redact_filter_profile", "NO_SUCH_PROFILE", "--deidentify_key_secret", "env:K"], "NO_SUCH_PROFILE"),
        (["--redact_remove_list", "PatientName,NotAKeyword", "--deidentify_key_secret", "env:K"], "NotAKeyword"),
        (["--store_compress_to_transfer_syntax", "1.2.3.4"], "1.2.3.4"),
        (["--redact_filter_profile", "basic"], "--deidentify_key_secret"),
        (["--destination_config_inline", json.dumps([{"filter": "", "dicomweb_destination": "http://127.0.0.1:9/dicom-web",
                                                       "deidentify": {"profile": "basic", "options": ["no_such_option"]}}]),
          "--deidentify_key_secret", "env:K"], "no_such_option"),
    ],
)
def test_a_bad_transform_stops_the_command_naming_the_entry(tmp_path, args, named):
    adapter = LocalAdapter(tmp_path / "adapter", "http://127.0.0.1:9/dicom-web", extra_args=args)
    adapter.process.start()
    assert adapter.process.wait(timeout=60) == 2
    assert named in adapter.logs()
