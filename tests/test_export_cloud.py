"""Export in its cloud shape and the single-peer `dicom-adapter export`, on Google's Pub/Sub
emulator with the real client: the store notification (a Healthcare API WADO path, from the
Healthcare API fake as the store) → `export_fanout` (functions-framework) → the exports topic
→ `deliver` (functions-framework) → Orthanc (STOW-RS) and a DCMTK storescp (C-STORE)."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest
import requests

from support.adapter import adapter_command
from support.dcmtk import StoreSCP
from support.dicom_files import GeneratedInstance, dataset_bytes_after_meta, find_marker_phi, make_ct_instance
from support.dicomweb import stow_rs
from support.gcp import PROJECT, FunctionServer, PubSubEmulator
from support.healthcare_api_fake import DEFAULT_PARENT, HealthcareApiFake
from support.orthanc import Orthanc
from support.processes import ManagedProcess
from support.tls import make_pki

FAST_RETRIES = {"DICOM_ADAPTER_MIN_UPLOAD_DELAY": "10", "DICOM_ADAPTER_MAX_WAITING_TIME_BETWEEN_UPLOADS": "50"}


def _wait(condition: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}\n{logs()[-4000:]}")
        time.sleep(0.1)


def _wado_path(instance: GeneratedInstance) -> bytes:
    return (f"{DEFAULT_PARENT}/dicomWeb/studies/{instance.study_instance_uid}/series/{instance.series_instance_uid}"
            f"/instances/{instance.sop_instance_uid}").encode()


def _publish(topic: str, data: bytes, **attributes: str) -> None:
    from google.cloud import pubsub_v1

    pubsub_v1.PublisherClient().publish(topic, data, **attributes).result(timeout=30)


def _pull(subscription: str, expected: int, timeout: float = 60) -> list:
    from google.cloud import pubsub_v1

    client = pubsub_v1.SubscriberClient()
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        response = client.pull(subscription=subscription, max_messages=10, timeout=10)
        if response.received_messages:
            client.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
            got += [m.message for m in response.received_messages]
        else:
            time.sleep(0.2)
    return got


def _pull_subscription(pubsub: PubSubEmulator, topic: str, name: str) -> str:
    from google.cloud import pubsub_v1

    subscription = f"projects/{PROJECT}/subscriptions/{name}"
    pubsub_v1.SubscriberClient().create_subscription(request={"name": subscription, "topic": topic, "ack_deadline_seconds": 30})
    return subscription


def _received(scp: StoreSCP) -> dict[str, Path]:
    return {path.name.split(".", 1)[1]: path for path in scp.received_files()}


@pytest.fixture
def source(tmp_path: Path) -> HealthcareApiFake:
    with HealthcareApiFake() as fake:
        yield fake


def test_notifications_through_fanout_pubsub_and_deliver_reach_each_destination_byte_exact(
    tmp_path: Path, source: HealthcareApiFake, fresh_orthanc: Orthanc, storescp_peer: StoreSCP, pubsub_emulator: PubSubEmulator
):
    suffix = uuid.uuid4().hex[:8]
    os.environ.update(pubsub_emulator.env())
    notifications = pubsub_emulator.create_topic(f"notifications-{suffix}")
    notifications_dead = pubsub_emulator.create_topic(f"notifications-dead-{suffix}")
    exports = pubsub_emulator.create_topic(f"exports-{suffix}")
    exports_dead = pubsub_emulator.create_topic(f"exports-dead-{suffix}")
    held_notifications = _pull_subscription(pubsub_emulator, notifications_dead, f"notifications-dead-hold-{suffix}")
    held_exports = _pull_subscription(pubsub_emulator, exports_dead, f"exports-dead-hold-{suffix}")
    with HealthcareApiFake() as rejecting:
        rejecting_url = rejecting.url
        rules = [
            {"filter": "Modality=CT", "dimse_destination": "STORESCP"},
            {"filter": "StationName=ED1", "destinations": [{"dicomweb_destination": fresh_orthanc.dicomweb_url},
                                                            {"dicomweb_destination": rejecting.url}]},
        ]
        env = {
            **pubsub_emulator.env(), **FAST_RETRIES,
            "DICOM_ADAPTER_DICOMWEB_ADDRESS": source.url,
            "DICOM_ADAPTER_EXPORTS_TOPIC": exports,
            "DICOM_ADAPTER_EXPORTS_DEAD_LETTER_TOPIC": exports_dead,
            "DICOM_ADAPTER_NOTIFICATIONS_DEAD_LETTER_TOPIC": notifications_dead,
            "DICOM_ADAPTER_DESTINATION_CONFIG_JSON": json.dumps(rules),
            "DICOM_ADAPTER_AET_DICTIONARY_INLINE": json.dumps([{"name": "STORESCP", "host": "127.0.0.1", "port": storescp_peer.port}]),
            "DICOM_ADAPTER_SEND_TO_ALL_MATCHING_DESTINATIONS": "true",
        }
        fanout = FunctionServer(tmp_path, "export_fanout", env).start()
        deliver = FunctionServer(tmp_path, "deliver", env).start()
        logs = lambda: fanout.logs() + deliver.logs()  # noqa: E731
        try:
            pubsub_emulator.create_push_subscription(f"fanout-{suffix}", notifications, fanout.url)
            pubsub_emulator.create_push_subscription(f"deliver-{suffix}", exports, deliver.url, dead_letter_topic=exports_dead)
            ct_ed = [make_ct_instance(tmp_path / f"ct-ed{i}.dcm", extra={"StationName": "ED1"}) for i in range(2)]
            ct = [make_ct_instance(tmp_path / "ct.dcm", extra={"StationName": "CT9"})]
            mr_ed = [make_ct_instance(tmp_path / "mr-ed.dcm", modality="MR", extra={"StationName": "ED1"})]
            everything = ct_ed + ct + mr_ed
            assert stow_rs(source.url, [i.path for i in everything]).status_code == 200
            rejected = ct_ed[0]
            rejecting.reject_with(400, 0xA900, detail="IOD violation", sop_instance_uids={rejected.sop_instance_uid})
            for instance in everything:
                # Newer stores add attributes; the StationName rule needs the metadata anyway.
                _publish(notifications, _wado_path(instance), action="StoreInstances", modality="MR" if instance in mr_ed else "CT")
            # Malformed: not a WADO path; an instance the store does not have.
            _publish(notifications, b"projects/p/not-an-instance")
            ghost = make_ct_instance(tmp_path / "ghost.dcm")
            _publish(notifications, _wado_path(ghost), modality="CT")
            _wait(lambda: len(storescp_peer.received_files()) == 3 and fresh_orthanc.instance_count() == 3 and rejecting.instance_count() == 2,
                  120, "exports delivered", logs)
            # Bad base64, as a push could carry it: acknowledged and dead-lettered, not retried.
            event = requests.post(fanout.url, json={"message": {"data": "%%%not base64", "messageId": "1"}, "subscription": "s"}, headers={
                "ce-id": "bad-1", "ce-specversion": "1.0", "ce-source": "//pubsub.googleapis.com/x",
                "ce-type": "google.cloud.pubsub.topic.v1.messagePublished"}, timeout=30)
            assert event.status_code == 200, event.text
            dead_notifications = _pull(held_notifications, 3)
            dead_exports = _pull(held_exports, 1)
        finally:
            fanout.stop()
            deliver.stop()
    received = _received(storescp_peer)
    assert sorted(received) == sorted(i.sop_instance_uid for i in ct_ed + ct)
    for instance in ct_ed + ct:
        assert dataset_bytes_after_meta(received[instance.sop_instance_uid]) == dataset_bytes_after_meta(instance.path)
    assert fresh_orthanc.list_sop_instance_uids() == sorted(i.sop_instance_uid for i in ct_ed + mr_ed)
    for instance in ct_ed + mr_ed:
        stored = fresh_orthanc.retrieve_instance_part10(instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid)
        assert dataset_bytes_after_meta(stored) == dataset_bytes_after_meta(instance.path)
    # The rejection is dead-lettered for that destination only, with the reason; the message
    # is the export message as it was, so republishing it to the exports topic redrives it.
    reasons = {m.attributes["reason"] for m in dead_notifications}
    assert any("not a WADO instance path" in r for r in reasons), reasons
    assert any("not base64" in r for r in reasons), reasons
    [unknown] = [m for m in dead_notifications if "unknown instance" in m.attributes["reason"]]
    assert unknown.data == _wado_path(ghost)
    [rejection] = dead_exports
    assert "0xA900" in rejection.attributes["reason"]
    assert rejection.attributes["destination"] == rejecting_url
    assert json.loads(rejection.data)["instance"]["sop_instance_uid"] == rejected.sop_instance_uid
    assert not find_marker_phi(logs())
    lines = [json.loads(line) for line in logs().splitlines() if line.startswith("{")]
    assert any(line.get("severity") == "ERROR" and "dead-letter" in line.get("message", "") for line in lines)


@pytest.mark.parametrize("peer", ["dimse", "dimse-tls", "dicomweb"])
def test_single_peer_export_command_pulls_the_subscription(
    tmp_path: Path, peer: str, source: HealthcareApiFake, fresh_orthanc: Orthanc, storescp_peer: StoreSCP, pubsub_emulator: PubSubEmulator
):
    suffix = uuid.uuid4().hex[:8]
    os.environ.update(pubsub_emulator.env())
    topic = pubsub_emulator.create_topic(f"store-{suffix}")
    _pull_subscription(pubsub_emulator, topic, f"export-{suffix}")
    scp = storescp_peer
    if peer == "dimse-tls":  # a DCMTK storescp +tls that trusts only certificates of the test CA
        pki = make_pki(tmp_path / "pki")
        scp = StoreSCP(tmp_path / "tls-received", aet="TLSPACS", extra_args=pki.peer.dcmtk_args(pki.ca)).start()
        peer_args = ["--peer_dimse_aet", scp.aet, "--peer_dimse_ip", "127.0.0.1", "--peer_dimse_port", str(scp.port), "--peer_dimse_tls",
                     "--dimse_tls_cert", str(pki.adapter.cert), "--dimse_tls_key", str(pki.adapter.key), "--dimse_tls_ca", str(pki.ca)]
    elif peer == "dimse":
        peer_args = ["--peer_dimse_aet", scp.aet, "--peer_dimse_ip", "127.0.0.1", "--peer_dimse_port", str(scp.port)]
    else:
        peer_args = ["--peer_dicomweb_address", fresh_orthanc.dicomweb_url]
    command = ManagedProcess(adapter_command() + [
        "export", "--project_id", PROJECT, "--subscription_id", f"export-{suffix}", "--client_aet", "EXPORTER",
        "--dicomweb_address", source.url, *peer_args,
    ], log_dir=tmp_path, name="export", extra_env={**pubsub_emulator.env(), "PYTHONUNBUFFERED": "1", **FAST_RETRIES})
    instances = [make_ct_instance(tmp_path / f"{i}.dcm") for i in range(3)]
    assert stow_rs(source.url, [i.path for i in instances]).status_code == 200
    command.start()
    try:
        command.wait_for_output(r"\bready\b", timeout=60)
        for instance in instances:
            _publish(topic, _wado_path(instance))
        _publish(topic, b"garbage")  # logged and dropped (no --dead_letter_topic), never retried for ever
        if peer.startswith("dimse"):
            _wait(lambda: len(scp.received_files()) == 3, 90, "delivered", command.output)
        else:
            _wait(lambda: fresh_orthanc.instance_count() == 3, 90, "delivered", command.output)
        _wait(lambda: "not a WADO instance path" in command.output(), 30, "malformed message logged", command.output)
    finally:
        assert command.stop(timeout=60) == 0, command.output()[-3000:]
        if scp is not storescp_peer:
            scp.stop()
    for instance in instances:
        if peer.startswith("dimse"):
            got = _received(scp)[instance.sop_instance_uid].read_bytes()
        else:
            got = fresh_orthanc.retrieve_instance_part10(instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid)
        assert dataset_bytes_after_meta(got) == dataset_bytes_after_meta(instance.path)
