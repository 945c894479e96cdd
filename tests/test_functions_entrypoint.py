"""functions/main.py served by functions-framework exactly as Cloud Functions runs it, receiving
a Pub/Sub CloudEvent in binary mode (as Eventarc delivers it): the same upload code the local
dispatcher calls."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import requests
from cloudevents.conversion import to_binary

from dicom_adapter.buffers.spool import Spool
from dicom_adapter.events import buffered_instance_cloud_event
from support.dicom_files import dataset_bytes_after_meta, make_ct_instance
from support.orthanc import Orthanc
from support.gcp import PROJECT, FunctionServer
from support.processes import free_port

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"

def _serve(tmp_path: Path, store_url: str) -> tuple[FunctionServer, str]:
    server = FunctionServer(tmp_path, "stow_upload", {"DICOM_ADAPTER_DICOMWEB_ADDRESS": store_url, "DICOM_ADAPTER_MAX_WAITING_TIME_BETWEEN_UPLOADS": "200"})
    server.start()
    return server, server.url


def _queued(tmp_path: Path) -> tuple[Spool, Path, object]:
    spool = Spool(tmp_path / "spool")
    instance = make_ct_instance(tmp_path / "a.dcm")
    entry = spool.queue / spool.new_entry_name(instance.sop_instance_uid)
    shutil.copyfile(instance.path, entry)
    return spool, entry, instance


def _binary_event(spool: Spool, entry: Path) -> tuple[dict[str, str], bytes]:
    headers, body = to_binary(buffered_instance_cloud_event(spool.describe(entry)))
    assert headers["ce-type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    return headers, body


def test_stow_upload_entry_point_uploads_and_removes_the_buffered_object(tmp_path: Path, fresh_orthanc: Orthanc):
    spool, entry, instance = _queued(tmp_path)
    process, url = _serve(tmp_path, fresh_orthanc.dicomweb_url)
    try:
        headers, body = _binary_event(spool, entry)
        # Eventarc sends the trace context along; the log lines of this request carry it.
        headers["traceparent"] = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
        response = requests.post(url, headers=headers, data=body, timeout=60)
        assert response.status_code == 200, process.process.output_tail()
        assert not entry.exists()
        stored = fresh_orthanc.retrieve_instance_part10(instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid)
        assert dataset_bytes_after_meta(stored) == dataset_bytes_after_meta(instance.path)
        # Pub/Sub delivers at least once: the same message again is a success that does nothing.
        again = requests.post(url, headers=headers, data=body, timeout=60)
        assert again.status_code == 200
        assert "already uploaded by an earlier delivery" in process.logs()
    finally:
        process.stop()
    [stored_line] = [json.loads(line) for line in process.logs().splitlines() if '"message": "stored"' in line]
    assert stored_line["severity"] == "INFO", "Cloud Logging JSON lines expected"
    assert stored_line["logging.googleapis.com/trace"] == f"projects/{PROJECT}/traces/{TRACE_ID}"
    assert stored_line["logging.googleapis.com/labels"]["sop_instance_uid"] == instance.sop_instance_uid


def test_stow_upload_raises_on_a_transient_failure_so_pubsub_redelivers(tmp_path: Path):
    spool, entry, _ = _queued(tmp_path)
    process, url = _serve(tmp_path, f"http://127.0.0.1:{free_port()}/dicom-web")
    try:
        headers, body = _binary_event(spool, entry)
        response = requests.post(url, headers=headers, data=body, timeout=60)
        assert response.status_code == 500
        assert entry.exists(), "the buffered object must stay until the store has it"
    finally:
        process.stop()
    assert "STOW-RS attempt failed, retrying" in process.logs()
