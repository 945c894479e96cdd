"""Bad input gets a clear answer and loses nothing: refused with a status and an Error Comment,
or a clean abort; never a crash, a hang or a partial spool file; the adapter keeps serving."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, build_context
from support.adapter import ADAPTER_AET, LocalAdapter
from support.dcmtk import echoscu
from support.dicom_files import dataset_bytes_after_meta, make_ct_instance
from support.orthanc import Orthanc
from support.raw_dimse import c_store_pdus
from support.sender import send_files


@pytest.fixture
def adapter(tmp_path: Path, fresh_orthanc: Orthanc):
    with LocalAdapter(tmp_path / "adapter", fresh_orthanc.dicomweb_url) as running:
        yield running


def _assert_still_serving_and_clean(adapter: LocalAdapter, tmp_path: Path, store: Orthanc) -> None:
    deadline = time.monotonic() + 10
    while adapter.incoming_files() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert adapter.incoming_files() == [], "a partial reception was left in the spool"
    assert adapter.process.is_running()
    assert echoscu("127.0.0.1", adapter.port, called_aet=ADAPTER_AET).returncode == 0
    good = make_ct_instance(tmp_path / f"good-{time.monotonic_ns()}.dcm")
    assert [r.status for r in send_files([good.path], adapter.port, called_aet=ADAPTER_AET)] == [0]
    adapter.wait_until_drained()
    assert good.sop_instance_uid in store.list_sop_instance_uids()


def test_truncated_data_set_is_refused_with_a_reason(tmp_path: Path, adapter: LocalAdapter, fresh_orthanc: Orthanc):
    instance = make_ct_instance(tmp_path / "whole.dcm")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(instance.read_bytes()[:-1000])
    [result] = send_files([truncated], adapter.port, called_aet=ADAPTER_AET)
    assert result.status == 0xC000
    assert result.error_comment.startswith("malformed data set")
    assert adapter.queue_entries() == []
    assert "C-STORE refused" in adapter.logs()
    _assert_still_serving_and_clean(adapter, tmp_path, fresh_orthanc)


@pytest.mark.parametrize("drop, comment", [("SOPInstanceUID", "no SOP Instance UID"), ("SOPClassUID", "no SOP Class UID")])
def test_data_set_without_uids_is_refused(tmp_path: Path, adapter: LocalAdapter, fresh_orthanc: Orthanc, drop, comment):
    instance = make_ct_instance(tmp_path / "a.dcm")
    ds = pydicom.dcmread(instance.path)
    delattr(ds, drop)
    broken = tmp_path / "no-uid.dcm"
    ds.save_as(broken)  # the file meta still names the UIDs, so the command carries them
    [result] = send_files([broken], adapter.port, called_aet=ADAPTER_AET)
    assert result.status == 0xA900
    assert comment in result.error_comment
    assert adapter.queue_entries() == []
    _assert_still_serving_and_clean(adapter, tmp_path, fresh_orthanc)


def test_command_and_data_set_disagreeing_on_the_uid_is_refused(tmp_path: Path, adapter: LocalAdapter, fresh_orthanc: Orthanc):
    instance = make_ct_instance(tmp_path / "a.dcm")
    ds = pydicom.dcmread(instance.path)
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    mismatched = tmp_path / "mismatch.dcm"
    ds.save_as(mismatched)
    [result] = send_files([mismatched], adapter.port, called_aet=ADAPTER_AET)
    assert result.status == 0xA900
    assert "differs from the command" in result.error_comment
    _assert_still_serving_and_clean(adapter, tmp_path, fresh_orthanc)


def _store_pdus(instance_path: Path, context_id: int, max_pdu: int = 4096) -> list[bytes]:
    """The P-DATA-TF PDUs of a C-STORE of this file, as a sender puts them on the wire."""
    header = pydicom.dcmread(instance_path, stop_before_pixels=True)
    return c_store_pdus(header.SOPClassUID, header.SOPInstanceUID, dataset_bytes_after_meta(instance_path), context_id, max_pdu)


def _associate(adapter: LocalAdapter, sop_class: str):
    ae = AE(ae_title="RAWSCU")
    ae.requested_contexts = [build_context(sop_class, "1.2.840.10008.1.2.1")]
    assoc = ae.associate("127.0.0.1", adapter.port, ae_title=ADAPTER_AET)
    assert assoc.is_established
    return assoc, assoc.accepted_contexts[0].context_id


@pytest.mark.parametrize("how", ["pdu_cut_then_close", "abort_mid_data_set", "close_mid_data_set"])
def test_transfers_cut_off_midway_leave_nothing_behind(tmp_path: Path, adapter: LocalAdapter, fresh_orthanc: Orthanc, how: str):
    instance = make_ct_instance(tmp_path / "a.dcm", size_kb=200)
    assoc, context_id = _associate(adapter, instance.sop_class_uid)
    pdus = _store_pdus(instance.path, context_id)
    assert len(pdus) > 4
    raw_socket: socket.socket = assoc.dul.socket.socket
    for pdu in pdus[: len(pdus) // 2]:
        raw_socket.sendall(pdu)
    if how == "pdu_cut_then_close":
        raw_socket.sendall(pdus[len(pdus) // 2][:100])  # half a PDU, then the line goes dead
    elif how == "abort_mid_data_set":
        raw_socket.sendall(b"\x07\x00" + struct.pack(">L", 4) + b"\x00\x00\x00\x00")  # A-ABORT
    time.sleep(0.3)  # let the adapter's reactor see the partial data before the close
    try:  # after an A-ABORT the peer may already have closed it
        raw_socket.shutdown(socket.SHUT_RDWR)
        raw_socket.close()
    except OSError:
        pass
    assoc.abort()
    assert adapter.queue_entries() == []
    _assert_still_serving_and_clean(adapter, tmp_path, fresh_orthanc)
    assert fresh_orthanc.list_sop_instance_uids().count(instance.sop_instance_uid) == 0


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x01\x00" + struct.pack(">L", 0xFFFFFF00) + b"\x00" * 64,  # A-ASSOCIATE-RQ claiming 4 GB
        b"\x04\x00" + struct.pack(">L", 12) + b"\x00" * 12,  # P-DATA before any association
        bytes(range(256)) * 4,
    ],
    ids=["http", "absurd-length", "pdata-first", "noise"],
)
def test_garbage_on_the_port_is_dropped_and_the_adapter_keeps_serving(tmp_path: Path, adapter: LocalAdapter, fresh_orthanc: Orthanc, payload: bytes):
    with socket.create_connection(("127.0.0.1", adapter.port), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        try:
            while sock.recv(4096):
                pass
        except (ConnectionResetError, socket.timeout):
            pass
    _assert_still_serving_and_clean(adapter, tmp_path, fresh_orthanc)


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 6 MiB tmpfs for the spool (needs root and mount; skipped where it cannot be had)."""
    import subprocess

    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount_point)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_spool_disk_answers_out_of_resources_and_keeps_only_whole_entries(tmp_path: Path, tiny_disk: Path):
    from support.processes import free_port

    unreachable = f"http://127.0.0.1:{free_port()}/dicom-web"
    # No high-water mark: this is the path of a disk that fills up under the writer's feet.
    adapter = LocalAdapter(tmp_path / "adapter", unreachable, spool_dir=tiny_disk / "spool", extra_args=["--spool_high_water_mark", "100%"])
    instances = [make_ct_instance(tmp_path / f"ct{i}.dcm", size_kb=900) for i in range(10)]
    with adapter:
        results = send_files([i.path for i in instances], adapter.port, called_aet=ADAPTER_AET)
        statuses = [r.status for r in results]
        assert statuses.count(0) >= 2, statuses
        refused = [r for r in results if r.status != 0]
        assert refused, "a 6 MiB spool cannot hold 9 MB"
        assert {r.status for r in refused} == {0xA700}
        assert {r.error_comment for r in refused} == {"spool disk full"}
        assert adapter.incoming_files() == []
        # Every acknowledged instance is whole in the queue; nothing refused is there.
        queued = adapter.queue_entries()
        assert len(queued) == statuses.count(0)
        for entry in queued:
            uid = pydicom.dcmread(entry, stop_before_pixels=True).SOPInstanceUID
            [sent] = [i for i in instances if i.sop_instance_uid == uid]
            assert dataset_bytes_after_meta(entry) == dataset_bytes_after_meta(sent.path)
        assert echoscu("127.0.0.1", adapter.port, called_aet=ADAPTER_AET).returncode == 0


def test_malformed_sop_instance_uid_is_refused(tmp_path: Path, adapter: LocalAdapter, fresh_orthanc: Orthanc):
    instance = make_ct_instance(tmp_path / "a.dcm", sop_instance_uid="1.2.840.99.abc#1")
    [result] = send_files([instance.path], adapter.port, called_aet=ADAPTER_AET)
    assert result.status == 0xA900
    assert result.error_comment == "SOP Instance UID is not a valid UID"
    assert adapter.queue_entries() == []
    _assert_still_serving_and_clean(adapter, tmp_path, fresh_orthanc)


def test_high_water_mark_refuses_before_the_disk_is_full_and_recovers(tmp_path: Path, tiny_disk: Path, fresh_orthanc: Orthanc):
    """At 50% of a 6 MiB disk C-STORE answers 0xA700 "buffer full" (never a half-written file or
    "disk full"); once the store is back and the queue drains, the same instances are taken."""
    fresh_orthanc.stop()  # the queue can only grow
    instances = [make_ct_instance(tmp_path / f"ct{i}.dcm", size_kb=900) for i in range(8)]
    adapter = LocalAdapter(tmp_path / "adapter", fresh_orthanc.dicomweb_url, spool_dir=tiny_disk / "spool", extra_args=["--spool_high_water_mark", "50%", "--dimse_processes", "1"])
    # One listener: each listener process logs its own crossings of the mark, when a C-STORE
    # reaches it, so with two the refusing one may not get a C-STORE again to say it is below.
    with adapter:
        results = send_files([i.path for i in instances], adapter.port, called_aet=ADAPTER_AET)
        statuses = [r.status for r in results]
        assert 1 <= statuses.count(0) <= 4, statuses
        refused = [r for r in results if r.status != 0]
        assert {(r.status, r.error_comment) for r in refused} == {(0xA700, "buffer full: spool disk above its high-water mark")}
        assert adapter.incoming_files() == []
        assert len(adapter.queue_entries()) == statuses.count(0)
        assert "spool disk at its high-water mark" in adapter.logs()
        fresh_orthanc.start()  # space returns as the queue drains
        pending = [r.path for r in refused]
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            adapter.wait_until_drained()
            [result] = send_files(pending[:1], adapter.port, called_aet=ADAPTER_AET)
            if result.status == 0:
                pending.pop(0)
        assert pending == []
        adapter.wait_until_drained()
        adapter.wait_for_log("below its high-water mark again")
    assert sorted(fresh_orthanc.list_sop_instance_uids()) == sorted(i.sop_instance_uid for i in instances)
