"""The test-support layer itself works: processes, Orthanc, DCMTK, data generators, the fake.

Every later test trusts these pieces to tell the truth; these tests check them against real
peers (Orthanc, DCMTK, pydicom) rather than against each other.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import sys
import time
import tracemalloc
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from support.dcmtk import dcmsend, echoscu, storescp, storescu
from support.dicom_files import (
    EXCLUDED_CORPUS_FILES,
    MARKER_DEMOGRAPHICS,
    corpus_exclusions,
    corpus_files,
    dataset_bytes_after_meta,
    dataset_offset_after_meta,
    dataset_sha256_after_meta,
    find_marker_phi,
    make_ct_instance,
    make_ct_series,
    pydicom_corpus,
    unique_by_sop_instance_uid,
    write_large_instance,
)
from support.dicomweb import ACCEPT_ANY_TRANSFER_SYNTAX, retrieve_instance_part10, retrieve_instance_to_file
from support.healthcare_api_fake import (
    FAILURE_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    FAILURE_PROCESSING,
    MICROSOFT_FAILURE_ALREADY_STORED,
    HealthcareApiFake,
)
from support.multipart import encode_multipart_related, parse_multipart_related
from support.orthanc import Orthanc
from support.processes import (
    ManagedProcess,
    RssSampler,
    free_port,
    live_processes,
    peak_rss_bytes,
    wait_for_http,
    wait_for_port,
)
from support.sender import send_files

# -- helpers -----------------------------------------------------------------------------------


def _stow(url: str, *payloads: bytes, accept: str = "application/dicom+json") -> requests.Response:
    """A hand-built STOW-RS request, independent of support.dicomweb."""
    boundary = "b0undary-for-test"
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in payloads
    ) + b"--" + boundary.encode() + b"--\r\n"
    return requests.post(
        f"{url}/studies",
        data=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": accept,
        },
        timeout=30,
    )


def _with_changed_description(path: Path, out: Path) -> bytes:
    """Same UIDs, different content: what a conflicting re-send looks like."""
    ds = pydicom.dcmread(path)
    ds.SeriesDescription = "changed content, same UIDs"
    ds.save_as(out, enforce_file_format=True)
    return out.read_bytes()


# -- processes ---------------------------------------------------------------------------------


def test_free_port_hands_out_distinct_bindable_ports():
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.pop()))


def test_wait_for_port_and_http_see_a_late_server(tmp_path: Path):
    port = free_port()
    server = ManagedProcess(
        [sys.executable, "-c", "import time; time.sleep(0.3); import http.server as h; "
         f"h.HTTPServer(('127.0.0.1', {port}), h.SimpleHTTPRequestHandler).serve_forever()"],
        log_dir=tmp_path, cwd=tmp_path, name="late-http",
    ).start()
    wait_for_port("127.0.0.1", port, timeout=30, process=server)
    assert wait_for_http(f"http://127.0.0.1:{port}/", timeout=30, process=server)
    server.stop()
    with pytest.raises(TimeoutError):
        wait_for_port("127.0.0.1", port, timeout=0.3)


def test_managed_process_waits_for_output_and_stops_its_whole_group(tmp_path: Path):
    proc = ManagedProcess(
        ["bash", "-c", "sleep 60 & echo child=$!; echo 'server ready' >&2; wait"],
        log_dir=tmp_path, name="group",
    ).start()
    proc.wait_for_output(r"\bready\b", timeout=30)
    child = int(proc.wait_for_output(r"child=(\d+)").group(1))
    os.kill(child, 0)  # alive
    proc.stop(timeout=10)
    assert not proc.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert "server ready" in proc.stderr() and "child=" in proc.stdout()


def test_stop_escalates_to_sigkill_and_early_exit_is_reported(tmp_path: Path):
    stubborn = ManagedProcess(
        ["bash", "-c", "trap '' TERM; echo ready; while true; do sleep 0.1; done"], log_dir=tmp_path, name="stubborn"
    ).start()
    stubborn.wait_for_output("ready")
    started = time.monotonic()
    assert stubborn.stop(timeout=0.5) == -9
    assert time.monotonic() - started < 10

    dies = ManagedProcess(["bash", "-c", "echo boom >&2; exit 3"], log_dir=tmp_path, name="dies").start()
    with pytest.raises(RuntimeError, match="boom"):
        dies.wait_for_output("never printed", timeout=30)
    assert dies.returncode == 3


_left_running: list[ManagedProcess] = []


def test_process_cleanup_part1_a_test_leaves_a_process_running(tmp_path: Path):
    proc = ManagedProcess(["sleep", "60"], log_dir=tmp_path, name="leftover").start()
    _left_running.append(proc)
    assert proc in live_processes()


def test_process_cleanup_part2_the_fixture_stopped_it():
    assert _left_running, "part1 must run first (same module, file order)"
    assert not _left_running[0].is_running()
    assert _left_running[0] not in live_processes()


def test_rss_sampler_sees_a_child_allocation_after_it_is_freed(tmp_path: Path):
    code = (
        "import time, sys; time.sleep(0.3); b = bytearray(80 * 1024 * 1024); "
        "b[::4096] = b'x' * len(b[::4096]); time.sleep(0.5); del b; print('freed', flush=True); time.sleep(30)"
    )
    parent = ManagedProcess(["bash", "-c", f"{sys.executable} -c \"{code}\"; sleep 30"], log_dir=tmp_path, name="alloc")
    parent.start()
    with RssSampler(parent.pid, interval=0.02) as sampler:
        parent.wait_for_output("freed", timeout=30)
    assert sampler.peak_process_hwm_bytes > 80 * 1024 * 1024
    assert sampler.peak_total_rss_bytes > 60 * 1024 * 1024
    assert peak_rss_bytes(parent.pid) < 40 * 1024 * 1024  # the bash parent itself stayed small
    parent.stop()


# -- multipart ---------------------------------------------------------------------------------


def test_multipart_round_trip_in_tiny_chunks():
    payloads = [b"", b"\r\n--x\r\n" * 50, os.urandom(10_000)]
    content_type, body = encode_multipart_related(payloads)
    chunks = (body[i : i + 5] for i in range(0, len(body), 5))
    assert [data for _, data in parse_multipart_related(content_type, chunks)] == payloads


# -- DICOM data --------------------------------------------------------------------------------


def test_dataset_offset_with_without_and_with_a_wrong_group_length(tmp_path: Path):
    inst = make_ct_instance(tmp_path / "ct.dcm", size_kb=4)
    raw = inst.read_bytes()
    offset = dataset_offset_after_meta(raw)
    assert pydicom.dcmread(io.BytesIO(raw[offset:]), force=True).SOPInstanceUID == inst.sop_instance_uid
    group_length = struct.unpack_from("<I", raw, 140)[0]
    assert offset == 144 + group_length

    no_group_length = raw[:132] + raw[144:]  # drop the (0002,0000) element
    assert dataset_bytes_after_meta(no_group_length) == raw[offset:]
    lying = bytearray(raw)
    struct.pack_into("<I", lying, 140, group_length - 10)
    assert dataset_bytes_after_meta(bytes(lying)) == raw[offset:]
    assert dataset_bytes_after_meta(raw[offset:]) == raw[offset:]  # a bare data set
    assert dataset_bytes_after_meta(inst.path) == raw[offset:]
    assert dataset_sha256_after_meta(inst.path) == dataset_sha256_after_meta(raw)


@pytest.mark.parametrize(
    "syntax",
    [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian, RLELossless],
)
def test_make_ct_instance_writes_valid_files_with_markers(tmp_path: Path, syntax):
    inst = make_ct_instance(tmp_path / "ct.dcm", transfer_syntax=syntax, seed=7)
    ds = pydicom.dcmread(inst.path)
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.SOPInstanceUID == inst.sop_instance_uid == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
    assert 50_000 < inst.size < 90_000
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "ReferringPhysicianName"):
        assert str(ds.data_element(keyword).value) == MARKER_DEMOGRAPHICS[keyword]
    private = ds.get_private_item(0x0009, 0x01, "DICOMADAPTER TEST").value  # UN bytes in implicit VR
    assert (private if isinstance(private, str) else private.decode()).strip() == "private value kept verbatim"
    assert len(dataset_bytes_after_meta(inst.path)) % 2 == 0


def test_make_ct_series_shares_study_and_series(tmp_path: Path):
    series = make_ct_series(tmp_path, 3, size_kb=5, patient_name="OTHER^NAME")
    assert len({i.study_instance_uid for i in series}) == len({i.series_instance_uid for i in series}) == 1
    assert len({i.sop_instance_uid for i in series}) == 3
    assert pydicom.dcmread(series[2].path).InstanceNumber == 3
    found = find_marker_phi(str(pydicom.dcmread(series[0].path)))
    assert "MARKERNAME" not in found and MARKER_DEMOGRAPHICS["PatientID"] in found


def test_find_marker_phi():
    assert find_marker_phi("stored 1.2.3 from MODALITY in 12 ms") == []
    assert find_marker_phi("patient markername^zqx born 1901-02-03") == ["MARKERNAME", "1901-02-03"]


def test_pydicom_corpus_is_offline_grouped_and_clean():
    corpus = pydicom_corpus()
    for syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50",
                   "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
                   "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5"):
        assert corpus.get(syntax), f"no corpus file in {syntax}"
    excluded = corpus_exclusions()
    for name in EXCLUDED_CORPUS_FILES:
        assert name in excluded
    for files in corpus.values():
        for item in files:
            assert item.path.is_file() and item.name not in excluded
            assert item.sop_instance_uid and item.study_instance_uid and item.series_instance_uid
    assert len(unique_by_sop_instance_uid(corpus_files())) < len(corpus_files())  # shared UIDs exist


def test_write_large_instance_is_valid_and_streams(tmp_path: Path):
    size = 20 * 1024 * 1024
    tracemalloc.start()
    try:
        inst = write_large_instance(tmp_path / "large.dcm", size, fill="random", seed=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * 1024 * 1024, f"generator held {peak} bytes"
    header = pydicom.dcmread(inst.path, stop_before_pixels=True)
    assert header.SOPInstanceUID == inst.sop_instance_uid
    length = header.Rows * header.Columns * int(header.NumberOfFrames) * header.BitsAllocated // 8
    assert length == inst.pixel_data_length
    assert abs(length - size) <= 512 * 1024
    offset = inst.size - length
    with open(inst.path, "rb") as f:
        f.seek(offset - 12)
        assert f.read(12) == struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OW", length)
    full = pydicom.dcmread(inst.path)
    assert len(full.PixelData) == length
    assert full.pixel_array.shape == (header.NumberOfFrames, header.Rows, header.Columns)


# -- Orthanc -----------------------------------------------------------------------------------


def test_orthanc_stow_then_wado_returns_the_same_data_set(fresh_orthanc: Orthanc, tmp_path: Path):
    inst = make_ct_instance(tmp_path / "ct.dcm")
    response = _stow(fresh_orthanc.dicomweb_url, inst.read_bytes())
    assert response.status_code == 200, response.text
    assert fresh_orthanc.instance_count() == 1
    assert fresh_orthanc.list_sop_instance_uids() == [inst.sop_instance_uid]
    uids = (inst.study_instance_uid, inst.series_instance_uid, inst.sop_instance_uid)
    retrieved = fresh_orthanc.retrieve_instance_part10(*uids)
    assert dataset_bytes_after_meta(retrieved) == dataset_bytes_after_meta(inst.path)
    dest = tmp_path / "streamed.dcm"
    assert fresh_orthanc.retrieve_instance_to_file(*uids, dest) == dest.stat().st_size
    assert dataset_sha256_after_meta(dest) == dataset_sha256_after_meta(inst.path)


def test_orthanc_restart_and_crash_keep_ports_and_data(fresh_orthanc: Orthanc, tmp_path: Path):
    inst = make_ct_instance(tmp_path / "ct.dcm", size_kb=8)
    assert fresh_orthanc.stow(inst.path).status_code == 200
    ports = (fresh_orthanc.http_port, fresh_orthanc.dimse_port)
    fresh_orthanc.restart()
    assert (fresh_orthanc.http_port, fresh_orthanc.dimse_port) == ports
    assert fresh_orthanc.list_sop_instance_uids() == [inst.sop_instance_uid]
    fresh_orthanc.kill()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{fresh_orthanc.http_url}/system", timeout=5)
    fresh_orthanc.start()
    assert fresh_orthanc.instance_count() == 1
    assert echoscu("127.0.0.1", fresh_orthanc.dimse_port, called_aet=fresh_orthanc.aet).returncode == 0


def test_orthanc_keeps_every_corpus_file_byte_exact(fresh_orthanc: Orthanc):
    """The corpus is fit for byte-exactness tests: Orthanc stores and returns each file as is."""
    files = unique_by_sop_instance_uid(corpus_files())
    response = fresh_orthanc.stow(*[f.path for f in files])
    assert response.status_code == 200, response.text
    for item in files:
        stored = fresh_orthanc.retrieve_instance_part10(item.study_instance_uid, item.series_instance_uid,
                                                        item.sop_instance_uid)
        assert dataset_bytes_after_meta(stored) == dataset_bytes_after_meta(item.path), item.name


def test_orthanc_answers_200_to_a_conflict_and_keeps_the_old_instance(fresh_orthanc: Orthanc, tmp_path: Path):
    """Orthanc's semantics, unlike the Healthcare API's: a conflict is invisible in the answer.

    With OverwriteInstances false (the default) a different instance under an existing SOP
    Instance UID gets 200 and a ReferencedSOPSequence entry, and the old one stays. Conflict
    tests need the Healthcare API fake (or a WADO-RS comparison), not this answer.
    """
    inst = make_ct_instance(tmp_path / "a.dcm", size_kb=4)
    changed = _with_changed_description(inst.path, tmp_path / "b.dcm")
    assert fresh_orthanc.stow(inst.path).status_code == 200
    answer = fresh_orthanc.stow(changed)
    assert answer.status_code == 200
    assert answer.json()["00081199"]["Value"][0]["00081155"]["Value"] == [inst.sop_instance_uid]
    assert "Value" not in answer.json().get("00081198", {})  # an empty FailedSOPSequence
    uids = (inst.study_instance_uid, inst.series_instance_uid, inst.sop_instance_uid)
    assert dataset_bytes_after_meta(fresh_orthanc.retrieve_instance_part10(*uids)) == dataset_bytes_after_meta(inst.path)


def test_orthanc_factory_applies_extra_config(orthanc_factory, tmp_path: Path):
    overwriting = orthanc_factory(extra_config={"OverwriteInstances": True}, aet="OVERWRITER")
    assert overwriting.rest("GET", "/system").json()["DicomAet"] == "OVERWRITER"
    inst = make_ct_instance(tmp_path / "a.dcm", size_kb=4)
    changed = _with_changed_description(inst.path, tmp_path / "b.dcm")
    assert overwriting.stow(inst.path).status_code == 200
    assert overwriting.stow(changed).status_code == 200
    uids = (inst.study_instance_uid, inst.series_instance_uid, inst.sop_instance_uid)
    assert dataset_bytes_after_meta(overwriting.retrieve_instance_part10(*uids)) == dataset_bytes_after_meta(changed)


# -- DCMTK -------------------------------------------------------------------------------------


def test_dcmtk_storescu_into_storescp(storescp_peer, tmp_path: Path):
    assert echoscu("127.0.0.1", storescp_peer.port, called_aet=storescp_peer.aet).returncode == 0
    series = make_ct_series(tmp_path / "ct", 3, size_kb=20)
    result = storescu([i.path for i in series], "127.0.0.1", storescp_peer.port, called_aet=storescp_peer.aet)
    assert result.returncode == 0, result.stderr
    received = {p.name.split(".", 1)[1]: p for p in storescp_peer.received_files()}
    assert sorted(received) == sorted(i.sop_instance_uid for i in series)
    for inst in series:
        assert dataset_bytes_after_meta(received[inst.sop_instance_uid]) == dataset_bytes_after_meta(inst.path)
    rle = make_ct_instance(tmp_path / "rle.dcm", transfer_syntax=RLELossless, size_kb=8)
    assert dcmsend([rle.path], "127.0.0.1", storescp_peer.port, called_aet=storescp_peer.aet).returncode == 0


def test_dcmtk_failures_are_visible_in_the_exit_code(tmp_path: Path):
    closed_port = free_port()
    result = echoscu("127.0.0.1", closed_port)
    assert result.returncode != 0
    assert "Association Request Failed" in result.stderr or "connect" in result.stderr.lower()


def test_byte_exact_sender_delivers_the_corpus_to_storescp(tmp_path: Path):
    scp = storescp(tmp_path / "received", aet="EXACT", log_dir=tmp_path)
    files = unique_by_sop_instance_uid(corpus_files())
    results = send_files([f.path for f in files], scp.port, called_aet="EXACT")
    assert [r.status for r in results] == [0] * len(files)
    received = {p.name.split(".", 1)[1]: p for p in scp.received_files()}
    for item in files:
        assert dataset_bytes_after_meta(received[item.sop_instance_uid]) == dataset_bytes_after_meta(item.path), item.name
    scp.stop()


# -- Healthcare API fake -----------------------------------------------------------------------


def test_fake_stow_identical_resend_is_200_and_different_content_is_409(healthcare_fake: HealthcareApiFake,
                                                                         tmp_path: Path):
    inst = make_ct_instance(tmp_path / "ct.dcm", size_kb=8)
    first = _stow(healthcare_fake.url, inst.read_bytes())
    assert first.status_code == 200
    assert first.headers["Content-Type"] == "application/dicom+json"
    body = first.json()
    assert body["00081190"]["Value"] == [healthcare_fake.study_url(inst.study_instance_uid)]
    [ref] = body["00081199"]["Value"]
    assert ref["00081150"]["Value"] == [inst.sop_class_uid]
    assert ref["00081155"]["Value"] == [inst.sop_instance_uid]
    assert ref["00081190"]["Value"][0].endswith(f"/instances/{inst.sop_instance_uid}")

    again = _stow(healthcare_fake.url, inst.read_bytes())
    assert again.status_code == 200 and "00081198" not in again.json()

    changed = _with_changed_description(inst.path, tmp_path / "changed.dcm")
    conflict = _stow(healthcare_fake.url, changed)
    assert conflict.status_code == 409
    [failed] = conflict.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [FAILURE_PROCESSING]
    assert failed["00081155"]["Value"] == [inst.sop_instance_uid]
    assert "checksum mismatch" in failed["00091097"]["Value"][0]
    assert healthcare_fake.get_instance(inst.sop_instance_uid).read_bytes() == inst.read_bytes()

    url = f"{healthcare_fake.url}/studies/{inst.study_instance_uid}/series/{inst.series_instance_uid}/instances/{inst.sop_instance_uid}"
    assert requests.delete(url, timeout=10).status_code == 200
    assert requests.delete(url, timeout=10).status_code == 404
    assert _stow(healthcare_fake.url, changed).status_code == 200  # delete, then store: overwrite


def test_fake_reject_existing_policy_imitates_microsoft(tmp_path: Path):
    inst = make_ct_instance(tmp_path / "ct.dcm", size_kb=4)
    with HealthcareApiFake(duplicate_policy="reject_existing",
                           conflict_failure_reason=MICROSOFT_FAILURE_ALREADY_STORED) as fake:
        assert _stow(fake.url, inst.read_bytes()).status_code == 200
        again = _stow(fake.url, inst.read_bytes())
        assert again.status_code == 409
        assert again.json()["00081198"]["Value"][0]["00081197"]["Value"] == [45070]


def test_fake_switches_transient_permanent_and_the_request_log(healthcare_fake: HealthcareApiFake, tmp_path: Path):
    a, b, c = make_ct_series(tmp_path, 3, size_kb=4)
    healthcare_fake.fail_next(2, 503)
    assert _stow(healthcare_fake.url, a.read_bytes()).status_code == 503
    second = _stow(healthcare_fake.url, a.read_bytes())
    assert second.status_code == 503 and second.json()["error"]["status"] == "UNAVAILABLE"
    assert _stow(healthcare_fake.url, a.read_bytes()).status_code == 200

    healthcare_fake.fail_next(1, 429, retry_after="1")
    throttled = _stow(healthcare_fake.url, b.read_bytes())
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1"

    healthcare_fake.drop_next(1)
    with pytest.raises(requests.ConnectionError):
        _stow(healthcare_fake.url, b.read_bytes())

    healthcare_fake.reject_with(400, FAILURE_DATASET_DOES_NOT_MATCH_SOP_CLASS, sop_instance_uids={c.sop_instance_uid})
    rejected = _stow(healthcare_fake.url, c.read_bytes())
    assert rejected.status_code == 400
    assert rejected.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    mixed = _stow(healthcare_fake.url, b.read_bytes(), c.read_bytes())
    assert mixed.status_code == 202
    healthcare_fake.clear_faults()
    assert _stow(healthcare_fake.url, c.read_bytes()).status_code == 200
    assert healthcare_fake.instance_count() == 3

    log = healthcare_fake.stow_requests()
    assert [r.status for r in log] == [503, 503, 200, 429, None, 400, 202, 200]
    assert [r.fault for r in log] == ["fail", "fail", None, "fail", "drop", "reject", None, None]
    assert log[6].sop_instance_uids == [b.sop_instance_uid, c.sop_instance_uid]
    assert log[0].body_bytes > 3000


def test_fake_wado_returns_stored_bytes_and_honours_transfer_syntax(healthcare_fake: HealthcareApiFake,
                                                                      tmp_path: Path):
    explicit = make_ct_instance(tmp_path / "explicit.dcm", size_kb=4)
    implicit = make_ct_instance(tmp_path / "implicit.dcm", size_kb=4, transfer_syntax=ImplicitVRLittleEndian)
    assert _stow(healthcare_fake.url, explicit.read_bytes(), implicit.read_bytes()).status_code == 200

    def uids(inst):
        return inst.study_instance_uid, inst.series_instance_uid, inst.sop_instance_uid

    url = healthcare_fake.url
    assert retrieve_instance_part10(url, *uids(implicit)) == implicit.read_bytes()
    assert retrieve_instance_part10(url, *uids(implicit), accept="application/dicom; transfer-syntax=*") == \
        implicit.read_bytes()
    default_ts = 'multipart/related; type="application/dicom"'
    assert retrieve_instance_part10(url, *uids(explicit), accept=default_ts) == explicit.read_bytes()
    with pytest.raises(requests.HTTPError) as not_acceptable:
        retrieve_instance_part10(url, *uids(implicit), accept=default_ts)
    assert not_acceptable.value.response.status_code == 406
    response = requests.get(
        f"{url}/studies/{implicit.study_instance_uid}/series/{implicit.series_instance_uid}/instances/{implicit.sop_instance_uid}",
        headers={"Accept": ACCEPT_ANY_TRANSFER_SYNTAX}, timeout=10,
    )
    [(headers, data)] = parse_multipart_related(response.headers["Content-Type"], response.content)
    assert headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2"
    assert data == implicit.read_bytes()


def test_fake_streams_a_chunked_upload_of_a_large_instance(tmp_path: Path):
    large = write_large_instance(tmp_path / "large.dcm", 20 * 1024 * 1024, fill="random")
    boundary = "large-boundary"

    def body():
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with open(large.path, "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    with HealthcareApiFake(storage_dir=tmp_path / "fake-store") as fake:
        response = requests.post(
            f"{fake.url}/studies",
            data=body(),  # a generator: requests sends Transfer-Encoding: chunked
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                     "Accept": "application/dicom+xml"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == "application/dicom+xml"
        assert "<NativeDicomModel>" in response.text and large.sop_instance_uid in response.text
        assert fake.request_log[0].headers.get("Transfer-Encoding") == "chunked"
        stored = fake.get_instance(large.sop_instance_uid)
        assert stored.path is not None and stored.data is None
        dest = tmp_path / "back.dcm"
        retrieve_instance_to_file(fake.url, large.study_instance_uid, large.series_instance_uid,
                                  large.sop_instance_uid, dest)
        assert dataset_sha256_after_meta(dest) == dataset_sha256_after_meta(large.path)
        assert dest.stat().st_size == large.size


def test_fake_rejects_what_the_healthcare_api_rejects(healthcare_fake: HealthcareApiFake, tmp_path: Path):
    inst = make_ct_instance(tmp_path / "ct.dcm", size_kb=4)
    wrong_type = requests.post(f"{healthcare_fake.url}/studies", data=b"{}",
                               headers={"Content-Type": "application/json"}, timeout=10)
    assert wrong_type.status_code == 415
    not_dicom = _stow(healthcare_fake.url, b"this is not DICOM")
    assert not_dicom.status_code == 409
    assert not_dicom.json()["00081198"]["Value"][0]["00081197"]["Value"] == [FAILURE_PROCESSING]
    _, payload = encode_multipart_related([inst.read_bytes()], boundary="body-boundary")
    wrong_boundary = requests.post(
        f"{healthcare_fake.url}/studies", data=payload,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=header-boundary'}, timeout=10,
    )
    assert wrong_boundary.status_code == 400
    ct, payload = encode_multipart_related([inst.read_bytes()])
    mismatch = requests.post(f"{healthcare_fake.url}/studies/1.2.3.4", data=payload,
                             headers={"Content-Type": ct}, timeout=10)
    assert mismatch.status_code == 409
    assert requests.get(f"{healthcare_fake.url}/studies/1/series/2/instances/3", timeout=10).status_code == 404
    assert json.loads(requests.get(f"http://127.0.0.1:{healthcare_fake.port}/elsewhere", timeout=10).text)["error"]
