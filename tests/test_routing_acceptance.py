"""Routing incoming instances to several stores, end to end: two Orthancs (DICOMweb), a DCMTK
storescp (DIMSE) and a default store, with a routing file in the Google adapter's style."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from support.processes import wait_until
from support.adapter import ADAPTER_AET, LocalAdapter, adapter_command
from support.dcmtk import StoreSCP, echoscu, storescu
from support.dicom_files import GeneratedInstance, dataset_bytes_after_meta, make_ct_instance
from support.healthcare_api_fake import HealthcareApiFake
from support.orthanc import Orthanc
from support.sender import send_files


def _rules(tmp_path: Path, entries: list) -> Path:
    path = tmp_path / "destinations.json"
    path.write_text(json.dumps(entries, indent=2))
    return path


def _stored_exactly(store: Orthanc, instances: list[GeneratedInstance]) -> None:
    assert store.list_sop_instance_uids() == sorted(i.sop_instance_uid for i in instances)
    for instance in instances:
        stored = store.retrieve_instance_part10(instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid)
        assert dataset_bytes_after_meta(stored) == dataset_bytes_after_meta(instance.path)


def _received_exactly(scp: StoreSCP, instances: list[GeneratedInstance]) -> None:
    received = {path.name.split(".", 1)[1]: path for path in scp.received_files()}
    assert sorted(received) == sorted(i.sop_instance_uid for i in instances)
    for instance in instances:
        assert dataset_bytes_after_meta(received[instance.sop_instance_uid]) == dataset_bytes_after_meta(instance.path)


@pytest.fixture
def stores(orthanc_factory: Callable[..., Orthanc], fresh_orthanc: Orthanc) -> tuple[Orthanc, Orthanc, Orthanc]:
    """Cardiology (A), research (B), and the default store."""
    return orthanc_factory(), orthanc_factory(), fresh_orthanc


def test_each_instance_reaches_exactly_the_destinations_its_rules_name(
    tmp_path: Path, stores: tuple[Orthanc, Orthanc, Orthanc], storescp_peer: StoreSCP
):
    cardiology, research, default = stores
    rules = _rules(tmp_path, [
        # Google's own forms: a DICOMweb destination (its .../studies URL) and a DIMSE one.
        {"filter": "AETitle=CTSCANNER&Modality=CT", "dicomweb_destination": f"{cardiology.dicomweb_url}/studies"},
        {"filter": "Modality=MR", "dicomweb_destination": research.dicomweb_url},
        {"filter": "Modality=CT", "name": "STORESCP", "host": "127.0.0.1", "port": storescp_peer.port},
        # Ours: a virtual called AE with two destinations, one by AET dictionary name.
        {"filter": "CalledAETitle=RESEARCH", "destinations": [{"dicomweb_destination": research.dicomweb_url}, {"dimse_destination": "STORESCP"}]},
    ])
    aets = json.dumps([{"name": "STORESCP", "host": "127.0.0.1", "port": storescp_peer.port}])
    make = lambda name, **kw: make_ct_instance(tmp_path / f"{name}.dcm", **kw)  # noqa: E731
    ct_from_scanner = [make(f"ct{i}") for i in range(3)]
    mr = [make(f"mr{i}", modality="MR") for i in range(2)]
    ct_from_elsewhere = [make("ct-other")]
    us_for_research = [make("us", modality="US")]
    other = [make("ot", modality="OT")]
    with LocalAdapter(tmp_path / "adapter", default.dicomweb_url, extra_args=[
        "--destination_config_path", str(rules), "--aet_dictionary_inline", aets, "--send_to_all_matching_destinations",
    ]) as adapter:
        sent = storescu([i.path for i in ct_from_scanner], "127.0.0.1", adapter.port, called_aet=ADAPTER_AET, calling_aet="CTSCANNER")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        results = send_files([i.path for i in mr + ct_from_elsewhere + other], adapter.port, called_aet=ADAPTER_AET)
        assert all(r.status == 0 for r in results), results
        # One port, several AEs: RESEARCH is answered because a rule names it.
        results = send_files([i.path for i in us_for_research], adapter.port, called_aet="RESEARCH")
        assert [r.status for r in results] == [0]
        assert echoscu("127.0.0.1", adapter.port, called_aet="NOBODY").returncode != 0
        adapter.wait_until_drained()
        assert not adapter.dead_letters(), adapter.logs()[-3000:]
        adapter.wait_for_log("destination=STORESCP@127.0.0.1:")  # written just after the queue empties
    # storescu's files carry no trailing padding: bytes equal after the file meta.
    _stored_exactly(cardiology, ct_from_scanner)
    _stored_exactly(research, mr + us_for_research)
    _received_exactly(storescp_peer, ct_from_scanner + ct_from_elsewhere + us_for_research)
    _stored_exactly(default, other)


def test_first_match_sends_to_the_first_matching_rule_only(tmp_path: Path, stores: tuple[Orthanc, Orthanc, Orthanc]):
    cardiology, research, default = stores
    rules = _rules(tmp_path, [
        {"filter": "Modality=CT", "dicomweb_destination": cardiology.dicomweb_url},
        {"filter": "", "dicomweb_destination": research.dicomweb_url},
    ])
    ct, mr = make_ct_instance(tmp_path / "ct.dcm"), make_ct_instance(tmp_path / "mr.dcm", modality="MR")
    with LocalAdapter(tmp_path / "adapter", default.dicomweb_url, extra_args=["--destination_config_path", str(rules)]) as adapter:
        assert [r.status for r in send_files([ct.path, mr.path], adapter.port, called_aet=ADAPTER_AET)] == [0, 0]
        adapter.wait_until_drained()
    _stored_exactly(cardiology, [ct])
    _stored_exactly(research, [mr])
    assert default.instance_count() == 0


def test_a_destination_that_is_down_does_not_hold_up_the_others_and_catches_up(
    tmp_path: Path, stores: tuple[Orthanc, Orthanc, Orthanc], storescp_peer: StoreSCP
):
    cardiology, research, _ = stores
    rules = _rules(tmp_path, [{"filter": "", "destinations": [
        {"dicomweb_destination": cardiology.dicomweb_url},
        {"dicomweb_destination": research.dicomweb_url},
        {"name": "STORESCP", "host": "127.0.0.1", "port": storescp_peer.port},
    ]}])
    instances = [make_ct_instance(tmp_path / f"{i}.dcm") for i in range(5)]
    research.stop()
    with LocalAdapter(tmp_path / "adapter", extra_args=["--destination_config_path", str(rules)]) as adapter:
        assert all(r.status == 0 for r in send_files([i.path for i in instances], adapter.port, called_aet=ADAPTER_AET))
        # The live destinations get everything while the down store's copies wait in the queue.
        wait_until(lambda: len(adapter.queue_entries()) == 5, 60, "the live destinations served")
        assert cardiology.instance_count() == 5 and len(storescp_peer.received_files()) == 5
        status = subprocess.run(adapter_command() + ["status", "--spool_dir", str(adapter.spool_dir), "--json"], capture_output=True, text=True)
        assert json.loads(status.stdout)["queued_by_destination"] == {research.dicomweb_url: 5}
        research.start()
        adapter.wait_until_drained(timeout=90)
    _stored_exactly(cardiology, instances)
    _stored_exactly(research, instances)
    _received_exactly(storescp_peer, instances)


def test_a_rejection_dead_letters_for_that_destination_only_then_redrive(
    tmp_path: Path, fresh_orthanc: Orthanc, healthcare_fake: HealthcareApiFake
):
    rules = _rules(tmp_path, [{"filter": "", "destinations": [
        {"dicomweb_destination": fresh_orthanc.dicomweb_url}, {"dicomweb_destination": healthcare_fake.url},
    ]}])
    good, bad = make_ct_instance(tmp_path / "good.dcm"), make_ct_instance(tmp_path / "bad.dcm")
    healthcare_fake.reject_with(400, 0xA900, detail="IOD violation", sop_instance_uids={bad.sop_instance_uid})
    with LocalAdapter(tmp_path / "adapter", extra_args=["--destination_config_path", str(rules)]) as adapter:
        assert [r.status for r in send_files([good.path, bad.path], adapter.port, called_aet=ADAPTER_AET)] == [0, 0]
        adapter.wait_until_drained()
        _stored_exactly(fresh_orthanc, [good, bad])
        assert healthcare_fake.instance_count() == 1
        [letter] = adapter.dead_letters()
        record = json.loads(letter.with_suffix(".json").read_text())
        assert record["destination"] == healthcare_fake.url and bad.sop_instance_uid in letter.name
        assert dataset_bytes_after_meta(letter) == dataset_bytes_after_meta(bad.path)
        healthcare_fake.clear_faults()
        wrong = subprocess.run(adapter_command() + ["redrive", "--spool_dir", str(adapter.spool_dir), "--destination", fresh_orthanc.dicomweb_url], capture_output=True, text=True)
        assert wrong.returncode == 1  # nothing dead-lettered for that destination
        redriven = subprocess.run(adapter_command() + ["redrive", "--spool_dir", str(adapter.spool_dir), "--destination", healthcare_fake.url], capture_output=True, text=True)
        assert redriven.returncode == 0, redriven.stderr
        adapter.wait_until_drained()
    assert healthcare_fake.instance_count() == 2
    assert fresh_orthanc.instance_count() == 2  # the healthy store did not get anything twice


def test_unrouted_instances_are_refused_when_there_is_no_default_store(tmp_path: Path, fresh_orthanc: Orthanc):
    rules = _rules(tmp_path, [{"filter": "Modality=CT", "dicomweb_destination": fresh_orthanc.dicomweb_url}])
    ct, mr = make_ct_instance(tmp_path / "ct.dcm"), make_ct_instance(tmp_path / "mr.dcm", modality="MR")
    with LocalAdapter(tmp_path / "adapter", extra_args=["--destination_config_path", str(rules)]) as adapter:
        results = send_files([ct.path, mr.path], adapter.port, called_aet=ADAPTER_AET)
        assert results[0].status == 0
        assert results[1].status == 0x0110
        assert results[1].error_comment == "no routing rule matches and there is no default store"
        adapter.wait_until_drained()
        assert not adapter.incoming_files()
    _stored_exactly(fresh_orthanc, [ct])


def test_imported_files_are_routed_by_the_same_rules(tmp_path: Path, stores: tuple[Orthanc, Orthanc, Orthanc]):
    """`dicom-adapter import` applies routing rules too (the file meta's source AE is the calling AE)."""
    cardiology, research, default = stores
    rules = json.dumps([{"filter": "Modality=CT", "dicomweb_destination": cardiology.dicomweb_url},
                        {"filter": "Modality=MR", "dicomweb_destination": research.dicomweb_url}])
    folder = tmp_path / "archive"
    ct, mr, us = (make_ct_instance(folder / f"{m}.dcm", modality=m) for m in ("CT", "MR", "US"))
    with LocalAdapter(tmp_path / "adapter", default.dicomweb_url) as adapter:
        imported = subprocess.run(
            adapter_command() + ["import", "--spool_dir", str(adapter.spool_dir), "--destination_config_inline", rules, str(folder)],
            capture_output=True, text=True, timeout=120,
        )
        assert imported.returncode == 0, imported.stdout + imported.stderr
        wait_until(lambda: cardiology.instance_count() + research.instance_count() + default.instance_count() == 3, 60, "all three stored")
        adapter.wait_until_drained()
    _stored_exactly(cardiology, [ct])
    _stored_exactly(research, [mr])
    _stored_exactly(default, [us])
