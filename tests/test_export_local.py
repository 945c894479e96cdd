"""Export on one machine: instances stored in Orthanc (the store) go on, by export rules, to a
DCMTK storescp (C-STORE) and a second Orthanc (STOW-RS), through `dicom-adapter local`'s
export queue in the spool."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Callable

from support.adapter import ADAPTER_AET, LocalAdapter, adapter_command
from support.dcmtk import StoreSCP, storescp
from support.dicom_files import GeneratedInstance, dataset_bytes_after_meta, find_marker_phi, make_ct_instance
from support.healthcare_api_fake import HealthcareApiFake
from support.orthanc import Orthanc
from support.sender import send_files

RLE_LOSSLESS = "1.2.840.10008.1.2.5"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


def _wait(condition: Callable[[], bool], timeout: float, what: str, adapter: LocalAdapter | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what + ("\n" + adapter.logs()[-4000:] if adapter else ""))
        time.sleep(0.1)


def _exported(adapter: LocalAdapter, timeout: float = 90) -> None:
    """Until the upload queue and the export queue are empty."""
    adapter.wait_until_drained(timeout)
    _wait(lambda: not adapter.export_entries(), timeout, "export queue empty", adapter)


def _received_exactly(scp: StoreSCP, instances: list[GeneratedInstance]) -> None:
    received = {path.name.split(".", 1)[1]: path for path in scp.received_files()}
    assert sorted(received) == sorted(i.sop_instance_uid for i in instances)
    for instance in instances:
        assert dataset_bytes_after_meta(received[instance.sop_instance_uid]) == dataset_bytes_after_meta(instance.path)


def _stored_exactly(store: Orthanc, instances: list[GeneratedInstance]) -> None:
    assert store.list_sop_instance_uids() == sorted(i.sop_instance_uid for i in instances)
    for instance in instances:
        stored = store.retrieve_instance_part10(instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid)
        assert dataset_bytes_after_meta(stored) == dataset_bytes_after_meta(instance.path)


def _deliveries(logs: str, label: str) -> int:
    return len(re.findall(rf" stored .*store={re.escape(label)}(\s|$)", logs))


def _adapter(tmp_path: Path, store: Orthanc, rules: list, *extra: str) -> LocalAdapter:
    return LocalAdapter(tmp_path / "adapter", store.dicomweb_url, extra_args=["--export_config_inline", json.dumps(rules), *extra])


def test_all_matching_rules_send_each_instance_byte_exact_to_exactly_its_destinations_once(
    tmp_path: Path, fresh_orthanc: Orthanc, orthanc_factory: Callable[..., Orthanc], storescp_peer: StoreSCP
):
    archive = orthanc_factory()
    aets = json.dumps([{"name": "STORESCP", "host": "127.0.0.1", "port": storescp_peer.port}])
    rules = [
        {"filter": "Modality=CT", "dimse_destination": "STORESCP"},
        {"filter": "Modality=CT\\MR", "dicomweb_destination": archive.dicomweb_url},
        {"filter": "StationName=NOWHERE", "dicomweb_destination": archive.dicomweb_url},
    ]
    ct = [make_ct_instance(tmp_path / f"ct{i}.dcm") for i in range(3)]
    mr = [make_ct_instance(tmp_path / "mr.dcm", modality="MR")]
    us = [make_ct_instance(tmp_path / "us.dcm", modality="US")]
    with _adapter(tmp_path, fresh_orthanc, rules, "--aet_dictionary_inline", aets, "--export_to_all_matching_destinations") as adapter:
        assert all(r.status == 0 for r in send_files([i.path for i in ct + mr + us], adapter.port, called_aet=ADAPTER_AET))
        _wait(lambda: archive.instance_count() == 4 and len(storescp_peer.received_files()) == 3, 90, "exports delivered", adapter)
        _exported(adapter)
        time.sleep(1)  # nothing more arrives
        logs = adapter.logs()
    _stored_exactly(fresh_orthanc, ct + mr + us)  # the store itself has everything
    _received_exactly(storescp_peer, ct)
    _stored_exactly(archive, ct + mr)
    assert _deliveries(logs, f"STORESCP@127.0.0.1:{storescp_peer.port}") == 3
    assert _deliveries(logs, archive.dicomweb_url) == 4
    assert not adapter.export_dead_letters()
    assert not find_marker_phi(logs)


def test_first_match_rule_only(tmp_path: Path, fresh_orthanc: Orthanc, orthanc_factory: Callable[..., Orthanc], storescp_peer: StoreSCP):
    archive = orthanc_factory()
    rules = [
        {"filter": "Modality=CT", "name": "STORESCP", "host": "127.0.0.1", "port": storescp_peer.port},
        {"filter": "", "dicomweb_destination": archive.dicomweb_url},
    ]
    ct, mr = make_ct_instance(tmp_path / "ct.dcm"), make_ct_instance(tmp_path / "mr.dcm", modality="MR")
    with _adapter(tmp_path, fresh_orthanc, rules) as adapter:
        assert [r.status for r in send_files([ct.path, mr.path], adapter.port, called_aet=ADAPTER_AET)] == [0, 0]
        _wait(lambda: archive.instance_count() == 1 and len(storescp_peer.received_files()) == 1, 90, "exports delivered", adapter)
        _exported(adapter)
    _received_exactly(storescp_peer, [ct])
    _stored_exactly(archive, [mr])


def test_a_destination_down_catches_up_after_a_restart_and_a_rejection_dead_letters_for_that_destination_only(
    tmp_path: Path, fresh_orthanc: Orthanc, orthanc_factory: Callable[..., Orthanc], healthcare_fake: HealthcareApiFake, storescp_peer: StoreSCP
):
    archive = orthanc_factory()
    rules = [{"filter": "", "destinations": [
        {"dicomweb_destination": archive.dicomweb_url},
        {"dicomweb_destination": healthcare_fake.url},
        {"name": "STORESCP", "host": "127.0.0.1", "port": storescp_peer.port},
    ]}]
    instances = [make_ct_instance(tmp_path / f"{i}.dcm") for i in range(4)]
    bad = instances[0]
    healthcare_fake.reject_with(400, 0xA900, detail="IOD violation", sop_instance_uids={bad.sop_instance_uid})
    archive.stop()
    adapter = _adapter(tmp_path, fresh_orthanc, rules)
    with adapter:
        assert all(r.status == 0 for r in send_files([i.path for i in instances], adapter.port, called_aet=ADAPTER_AET))
        # The live destinations get everything (but the fake's rejected one) while the archive is down.
        _wait(lambda: len(storescp_peer.received_files()) == 4 and healthcare_fake.instance_count() == 3, 90, "live destinations served", adapter)
        _wait(lambda: len(adapter.export_dead_letters()) == 1, 30, "the rejection dead-lettered", adapter)
        status = subprocess.run(adapter_command() + ["status", "--spool_dir", str(adapter.spool_dir), "--json"], capture_output=True, text=True)
        state = json.loads(status.stdout)
        assert state["exports_queued_by_destination"] == {archive.dicomweb_url: 4}
        assert state["exports_dead_letters"] == 1
        [letter] = [e for e in state["dead_letter_entries"] if e["destination"] == healthcare_fake.url]
        assert "0xA900" in letter["reason"]
        # A notification that is not one: dead-lettered, nothing else disturbed.
        (adapter.spool_dir / "exports" / "notifications" / "0000000000000000001-9.9.9.json").write_text(json.dumps({"data": "not/a/wado/path", "attributes": {}}))
        _wait(lambda: len(adapter.export_dead_letters()) == 2, 30, "the malformed notification dead-lettered", adapter)
    # Stopped with the archive's copies still queued: they survive the restart.
    assert len(adapter.export_entries()) == 4
    archive.start()
    healthcare_fake.clear_faults()
    with _adapter(tmp_path, fresh_orthanc, rules) as adapter:
        _wait(lambda: archive.instance_count() == 4, 90, "the archive caught up", adapter)
        _exported(adapter)
        redriven = subprocess.run(adapter_command() + ["redrive", "--spool_dir", str(adapter.spool_dir), "--destination", healthcare_fake.url],
                                  capture_output=True, text=True)
        assert redriven.returncode == 0, redriven.stderr
        _wait(lambda: healthcare_fake.instance_count() == 4, 60, "the redriven export delivered", adapter)
        _exported(adapter)
    _stored_exactly(archive, instances)
    _received_exactly(storescp_peer, instances)
    stored = healthcare_fake.get_instance(bad.sop_instance_uid)
    assert dataset_bytes_after_meta(stored.read_bytes()) == dataset_bytes_after_meta(bad.path)
    [malformed] = adapter.export_dead_letters()
    assert "not a WADO instance path" in json.loads(malformed.read_text())["reason"]


def test_a_peer_that_refuses_the_stored_syntax_gets_explicit_little_endian_from_the_store(
    tmp_path: Path, fresh_orthanc: Orthanc
):
    # Without +xa, storescp takes uncompressed transfer syntaxes only.
    scp = storescp(tmp_path / "uncompressed-only", aet="PLAIN", log_dir=tmp_path, extra_args=["+x="])
    rules = [{"filter": "", "name": "PLAIN", "host": "127.0.0.1", "port": scp.port}]
    rle = make_ct_instance(tmp_path / "rle.dcm", transfer_syntax=RLE_LOSSLESS)
    try:
        with _adapter(tmp_path, fresh_orthanc, rules) as adapter:
            assert [r.status for r in send_files([rle.path], adapter.port, called_aet=ADAPTER_AET)] == [0]
            _wait(lambda: len(scp.received_files()) == 1 or bool(adapter.export_dead_letters()), 90, "delivered", adapter)
            _exported(adapter)
            logs = adapter.logs()
        assert not adapter.export_dead_letters(), logs[-3000:]
        import pydicom

        [received] = scp.received_files()
        dataset = pydicom.dcmread(received)
        assert dataset.file_meta.TransferSyntaxUID == EXPLICIT_VR_LE
        assert dataset.SOPInstanceUID == rle.sop_instance_uid
        original = pydicom.dcmread(rle.path)
        assert dataset.pixel_array.tobytes() == original.pixel_array.tobytes()
        assert "sending a conversion" in logs
    finally:
        scp.stop()


def test_export_rules_are_checked_at_start(tmp_path: Path, fresh_orthanc: Orthanc):
    def start(rules: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(adapter_command() + [
            "local", "--dimse_aet", ADAPTER_AET, "--dimse_port", "0", "--dicomweb_address", fresh_orthanc.dicomweb_url,
            "--spool_dir", str(tmp_path / "spool"), "--export_config_inline", rules if isinstance(rules, str) else json.dumps(rules),
        ], capture_output=True, text=True, timeout=60)

    for rules, message in [
        ("[{", "not JSON"),
        ([{"filter": "AETitle=CT01", "dicomweb_destination": "http://x/dicom-web"}], "entry 0 (line 1) (filter 'AETitle=CT01'): AETitle and CalledAETitle"),
        ([{"filter": "Modality=CT", "dicomweb_destination": "http://x"}, {"filter": "NoSuchKeyword=1", "dicomweb_destination": "http://x"}],
         "entry 1 (line 1) (filter 'NoSuchKeyword=1'): unknown keyword or tag 'NoSuchKeyword'"),
        ([{"filter": "", "dimse_destination": "PACS"}], "entry 0 (line 1): dimse_destination 'PACS' is not in the AET dictionary"),
        ([{"filter": "", "dicomweb_destination": "http://x", "auth": {"bearer_token_secret": "plain-text-token"}}], "entry 0 (line 1): auth: secret reference"),
    ]:
        result = start(rules)
        assert result.returncode == 2, result.stdout + result.stderr
        assert message in result.stderr, result.stderr


def test_dicomweb_destinations_get_their_credentials_by_reference(tmp_path: Path, fresh_orthanc: Orthanc):
    token_file = tmp_path / "password"
    token_file.write_text("s3cret\n")
    with HealthcareApiFake() as bearer, HealthcareApiFake() as basic:
        rules = [{"filter": "", "destinations": [
            {"dicomweb_destination": bearer.url, "auth": {"bearer_token_secret": "env:EXPORT_TOKEN"}},
            {"dicomweb_destination": basic.url, "auth": {"username": "exporter", "password_secret": f"file:{token_file}"}},
        ]}]
        instance = make_ct_instance(tmp_path / "ct.dcm")
        adapter = LocalAdapter(tmp_path / "adapter", fresh_orthanc.dicomweb_url, extra_args=["--export_config_inline", json.dumps(rules)],
                               extra_env={"EXPORT_TOKEN": "t0ken"})
        with adapter:
            assert [r.status for r in send_files([instance.path], adapter.port, called_aet=ADAPTER_AET)] == [0]
            _wait(lambda: bearer.instance_count() == 1 and basic.instance_count() == 1, 90, "delivered", adapter)
            logs = adapter.logs()
        [bearer_stow] = bearer.stow_requests()
        [basic_stow] = basic.stow_requests()
    assert bearer_stow.headers["Authorization"] == "Bearer t0ken"
    assert basic_stow.headers["Authorization"] == "Basic " + base64.b64encode(b"exporter:s3cret").decode()
    assert "t0ken" not in logs and "s3cret" not in logs
