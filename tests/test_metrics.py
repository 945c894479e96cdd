"""The pipeline's numbers as an operator reads them: /metrics (Prometheus) on the health port,
and `dicom-adapter status --watch` in a terminal, against a running `dicom-adapter local`
with two listener processes (their counts must add up) and a store that fails, then rejects.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pydicom
import requests
from prometheus_client.parser import text_string_to_metric_families
from support.adapter import ADAPTER_AET, LocalAdapter, adapter_command
from support.dicom_files import make_ct_instance
from support.healthcare_api_fake import HealthcareApiFake
from support.processes import free_port, wait_until
from support.sender import send_files

PREFIX = "dicom_adapter_"
DEFAULT = "default store"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((PREFIX + name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_what_the_pipeline_did_across_listener_processes(tmp_path: Path, healthcare_fake: HealthcareApiFake):
    health_port = free_port()
    good = [make_ct_instance(tmp_path / f"good{i}.dcm", seed=i) for i in range(4)]
    rejected_by_store = make_ct_instance(tmp_path / "bad.dcm", seed=9)
    mismatched = make_ct_instance(tmp_path / "mismatch.dcm", seed=10)
    ds = pydicom.dcmread(mismatched.path)
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(mismatched.path)
    healthcare_fake.fail_next(100_000, 503)  # the store is down at first
    healthcare_fake.reject_with(400, 0xA900, detail="IOD violation", sop_instance_uids={rejected_by_store.sop_instance_uid})
    extra = ["--health_port", str(health_port), "--dimse_processes", "2", "--min_upload_delay", "1", "--max_waiting_time_between_uploads", "10"]
    with LocalAdapter(tmp_path / "adapter", healthcare_fake.url, extra_args=extra) as adapter:
        # One association each: the two listener processes take turns, and /metrics adds them up.
        for instance in [*good, rejected_by_store]:
            [result] = send_files([instance.path], adapter.port, called_aet=ADAPTER_AET)
            assert result.status == 0
        [refused] = send_files([mismatched.path], adapter.port, called_aet=ADAPTER_AET)
        assert refused.status == 0xA900

        # While the store is down: everything acknowledged waits in the queue, and is retried.
        wait_until(lambda: value(scrape(health_port), "uploads_total", destination=DEFAULT, outcome="retried") >= 5, 60, "uploads retried")
        down = scrape(health_port)
        assert value(down, "instances_received_total") == 6
        assert value(down, "instances_rejected_total", status="0xA900") == 1
        assert value(down, "instances_buffered_total", destination=DEFAULT) == 5
        # The buffered entries are the sent files behind the adapter's own file meta.
        sent = sum(i.path.stat().st_size for i in [*good, rejected_by_store])
        assert abs(value(down, "buffered_bytes_total") - sent) < 5 * 512
        assert value(down, "queue_depth", destination=DEFAULT) == 5
        assert value(down, "queue_oldest_age_seconds") > 0
        assert value(down, "uploads_total", destination=DEFAULT, outcome="stored") == 0
        assert requests.get(f"http://127.0.0.1:{health_port}/readyz", timeout=5).json()["status"] == "ok"
        pids = {p.name.split("_")[-1] for p in (adapter.spool_dir / "metrics").glob("*.db")}
        assert len(pids) >= 3, pids  # the main listener, the second listener and the upload process count

        # The store is back: four stored, one dead-lettered by the store's rejection.
        healthcare_fake.clear_faults()
        healthcare_fake.reject_with(400, 0xA900, detail="IOD violation", sop_instance_uids={rejected_by_store.sop_instance_uid})
        adapter.wait_until_drained(timeout=90)
        wait_until(lambda: value(scrape(health_port), "uploads_total", destination=DEFAULT, outcome="dead_lettered") == 1, 30, "dead letter counted")
        after = scrape(health_port)
        assert value(after, "uploads_total", destination=DEFAULT, outcome="stored") == 4
        assert value(after, "dead_letters_total", stage="upload", destination=DEFAULT) == 1
        assert value(after, "dead_letter_entries", stage="upload") == 1
        assert value(after, "queue_depth", destination=DEFAULT) == 0
        attempts = sum(value(after, "uploads_total", destination=DEFAULT, outcome=o) for o in ("stored", "dead_lettered", "retried"))
        assert value(after, "upload_seconds_count", destination=DEFAULT) == attempts
        assert healthcare_fake.instance_count() == 4

        # `status --json` reads the queue as /metrics does.
        status = json.loads(subprocess.run([*adapter_command(), "status", "--json", "--spool_dir", str(adapter.spool_dir)], capture_output=True, text=True, check=True).stdout)
        assert status["queued"] == value(after, "queue_depth", destination=DEFAULT) == 0
        assert status["dead_letters"] == value(after, "dead_letter_entries", stage="upload") == 1

        frames = watch_in_a_terminal(adapter.spool_dir, seconds=3.0)
        assert "received" in frames and "uploads / default store / stored" in frames, frames
        assert re.search(r"received\s*│\s*6\b", frames), frames
        assert re.search(r"dead letters\s*│\s*1\b", frames), frames
        assert "IOD violation" in frames or "rejected" in frames, frames
        # No PHI, no UIDs in what an operator's scraper stores: labels are destinations, outcomes, statuses.
        text = requests.get(f"http://127.0.0.1:{health_port}/metrics", timeout=10).text
        assert str(ds.PatientName) not in text and str(ds.PatientID) not in text
        assert not any(i.sop_instance_uid in text or i.study_instance_uid in text for i in [*good, rejected_by_store])


def watch_in_a_terminal(spool_dir: Path, seconds: float) -> str:
    """Run `status --watch` on a pseudo-terminal for `seconds`, then Ctrl-C; what it drew."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "LINES": "50", "TERM": "xterm"}
    process = subprocess.Popen(
        [*adapter_command(), "status", "--watch", "--spool_dir", str(spool_dir)], stdin=terminal, stdout=terminal, stderr=terminal, env=env
    )
    os.close(terminal)
    output = bytearray()

    def read_for(duration: float) -> None:
        end = time.monotonic() + duration
        while time.monotonic() < end:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    output.extend(os.read(controller, 65536))
                except OSError:  # the terminal closed: the program exited
                    return

    try:
        read_for(seconds)
        assert process.poll() is None, output.decode(errors="replace")
        process.send_signal(signal.SIGINT)
        read_for(2.0)
        assert process.wait(timeout=30) == 0, output.decode(errors="replace")  # Ctrl-C ends it cleanly
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode(errors="replace"))


def test_a_copy_too_large_to_transcode_is_stored_as_received_warned_and_counted(tmp_path: Path, healthcare_fake: HealthcareApiFake):
    """--transcode_max_pixel_bytes bounds a transcode's memory (Terraform derives it from the
    function's memory): above it the copy keeps its transfer syntax, never dropped."""
    health_port = free_port()
    instance = make_ct_instance(tmp_path / "ct.dcm")
    extra = ["--health_port", str(health_port), "--store_compress_to_transfer_syntax", "1.2.840.10008.1.2.5", "--transcode_max_pixel_bytes", "1024"]
    with LocalAdapter(tmp_path / "adapter", healthcare_fake.url, extra_args=extra) as adapter:
        [result] = send_files([instance.path], adapter.port, called_aet=ADAPTER_AET)
        assert result.status == 0
        adapter.wait_until_drained(timeout=60)
        adapter.wait_for_log("transcode skipped")
        wait_until(lambda: value(scrape(health_port), "uploads_total", destination=DEFAULT, outcome="stored") == 1, 30, "upload counted")
        samples = scrape(health_port)
        assert value(samples, "transcodes_skipped_total", destination=DEFAULT) == 1
        assert "exceeds max_pixel_bytes=1024" in adapter.logs()
    stored = pydicom.dcmread(healthcare_fake.get_instance(instance.sop_instance_uid).open())
    assert stored.file_meta.TransferSyntaxUID == pydicom.dcmread(instance.path).file_meta.TransferSyntaxUID
    assert stored.PixelData == pydicom.dcmread(instance.path).PixelData
