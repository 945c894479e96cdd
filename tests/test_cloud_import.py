"""The import path in its cloud shape, on emulated Google Cloud with the real clients.

`dicom-adapter edge` buffers into fake-gcs-server (google-cloud-storage) and publishes to
Google's Pub/Sub emulator (google-cloud-pubsub); a push subscription delivers each event to
functions-framework serving `functions/main.py` (`stow_upload`), whose dead-letter topic is
pushed to `dead_letter`; the store is Orthanc or the Healthcare API fake.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from support.adapter import ADAPTER_AET, CloudEdge, adapter_command
from support.checks import assert_byte_exact, corpus_rounds
from support.dcmtk import storescu
from support.dicom_files import (
    dataset_bytes_after_meta,
    dataset_sha256_after_meta,
    find_marker_phi,
    make_ct_instance,
    make_ct_series,
    write_large_instance,
)
from support.gcp import FakeGcs, FunctionServer, PubSubEmulator
from support.healthcare_api_fake import HealthcareApiFake
from support.image_recipe import ImageBuild, image_build
from support.orthanc import Orthanc
from support.processes import RssSampler
from support.sender import send_files

PREFIX = "dicom"
FAST_RETRIES = {"DICOM_ADAPTER_MIN_UPLOAD_DELAY": "10", "DICOM_ADAPTER_MAX_WAITING_TIME_BETWEEN_UPLOADS": "50"}


@dataclass
class CloudStack:
    """One deployment's worth of emulated cloud: bucket, topics, subscriptions, functions, edge."""

    work: Path
    gcs: FakeGcs
    pubsub: PubSubEmulator
    store_url: str
    bucket: str = field(default_factory=lambda: f"buffer-{uuid.uuid4().hex[:10]}")
    functions: list[FunctionServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gcs.create_bucket(self.bucket)
        self.gcs_buffer = f"gs://{self.bucket}/{PREFIX}"
        suffix = self.bucket.split("-")[1]
        self.topic = self.pubsub.create_topic(f"buffered-{suffix}")
        self.dead_topic = self.pubsub.create_topic(f"buffered-dead-{suffix}")
        self.function_env = {
            **self.gcs.env(),
            **self.pubsub.env(),
            **FAST_RETRIES,
            "DICOM_ADAPTER_DICOMWEB_ADDRESS": self.store_url,
            "DICOM_ADAPTER_GCS_BUFFER": self.gcs_buffer,
            "DICOM_ADAPTER_PUBSUB_TOPIC": self.topic,
        }
        self.stow = self.serve("stow_upload")
        self.dead = self.serve("dead_letter")
        self.pubsub.create_push_subscription(f"stow-{suffix}", self.topic, self.stow.url, dead_letter_topic=self.dead_topic)
        self.pubsub.create_push_subscription(f"dead-{suffix}", self.dead_topic, self.dead.url)

    def serve(self, target: str, signature: str | None = None) -> FunctionServer:
        server = FunctionServer(self.work, target, self.function_env, signature=signature).start()
        self.functions.append(server)
        return server

    def edge(self, *extra_args: str, pubsub: PubSubEmulator | None = None, image: ImageBuild | None = None) -> CloudEdge:
        """The edge from the wheel, or as the edge image runs it (its ENTRYPOINT and ENV)."""
        env = {**(image.env if image else {}), **self.gcs.env(), **(pubsub or self.pubsub).env()}
        return CloudEdge(self.work / "edge", self.gcs_buffer, self.topic, extra_env=env, program=image.command() if image else None,
                         extra_args=["--log_format", "json", "--health_check_interval", "1", *extra_args])

    def objects(self, folder: str) -> dict[str, object]:
        blobs = self.gcs.client().list_blobs(self.bucket, prefix=f"{PREFIX}/{folder}/")
        return {blob.name: blob for blob in blobs}

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                logs = "\n".join(f.logs()[-1500:] for f in self.functions)
                raise TimeoutError(f"{what} not reached in {timeout}s; queue={list(self.objects('queue'))}\n{logs}")
            time.sleep(0.1)

    def wait_until_uploaded(self, timeout: float = 120) -> None:
        self.wait_until(lambda: not self.objects("queue"), timeout, "empty buffer queue")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.gcs.env(), **self.pubsub.env()}
        return subprocess.run(adapter_command() + list(args), capture_output=True, text=True, env=env, timeout=120)

    def logs(self) -> str:
        return "\n".join(f.logs() for f in self.functions)


@pytest.fixture
def cloud_factory(tmp_path: Path, fake_gcs: FakeGcs, pubsub_emulator: PubSubEmulator) -> Iterator[Callable[[str], CloudStack]]:
    stacks: list[CloudStack] = []

    def make(store_url: str, pubsub: PubSubEmulator | None = None) -> CloudStack:
        stack = CloudStack(tmp_path / f"cloud-{len(stacks)}", fake_gcs, pubsub or pubsub_emulator, store_url)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        for server in stack.functions:
            server.stop()


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_pacs_to_store_through_gcs_pubsub_and_the_function_byte_exact(
    tmp_path: Path, fresh_orthanc: Orthanc, cloud_factory: Callable[..., CloudStack]
):
    stack = cloud_factory(fresh_orthanc.dicomweb_url)
    with stack.edge() as edge:
        assert requests.get(edge.health_url("/healthz"), timeout=5).status_code == 200
        stack.wait_until(lambda: requests.get(edge.health_url("/readyz"), timeout=5).status_code == 200, 30, "ready")
        # Every transfer syntax of the corpus (one file per UID), sent byte-exactly...
        first_round = corpus_rounds([])[0]
        for start in range(0, len(first_round), 40):
            results = send_files([f.path for f in first_round[start : start + 40]], edge.port, called_aet=ADAPTER_AET)
            assert all(r.status == 0 for r in results), [(r.path.name, r.status, r.error_comment) for r in results if r.status]
        # ...and a series from DCMTK's storescu, as a PACS sends it.
        series = make_ct_series(tmp_path / "ct", 5)
        sent = storescu([i.path for i in series], "127.0.0.1", edge.port, called_aet=ADAPTER_AET)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        stack.wait_until_uploaded()
        edge_logs = edge.logs()
        # The pod's counters, as GKE's managed Prometheus scrapes them from the health port.
        scraped = requests.get(edge.health_url("/metrics"), timeout=5).text
    assert f'dicom_adapter_instances_buffered_total{{destination="default store"}} {float(len(first_round) + len(series))}' in scraped, scraped
    assert f"dicom_adapter_instances_received_total {float(len(first_round) + len(series))}" in scraped
    assert not stack.objects("dead"), stack.logs()[-3000:]
    for corpus_file in first_round:
        assert_byte_exact(fresh_orthanc, corpus_file.path, corpus_file.study_instance_uid,
                          corpus_file.series_instance_uid, corpus_file.sop_instance_uid, "PYSCU")
    for instance in series:
        assert_byte_exact(fresh_orthanc, instance.path, instance.study_instance_uid,
                          instance.series_instance_uid, instance.sop_instance_uid, "STORESCU")
    # Cloud Logging structured lines: severity, message, labels; and not one marker of PHI.
    edge_lines, function_lines = _json_lines(edge_logs), _json_lines(stack.logs())
    buffered = [line for line in edge_lines if line.get("message") == "buffered"]
    assert len(buffered) == len(first_round) + len(series)
    assert buffered[0]["severity"] == "INFO"
    assert buffered[0]["logging.googleapis.com/labels"]["calling_aet"] == "PYSCU"
    stored = [line for line in function_lines if line.get("message") == "stored"]
    assert len(stored) == len(first_round) + len(series)
    assert {"sop_instance_uid", "store"} <= set(stored[0]["logging.googleapis.com/labels"])
    assert not find_marker_phi(edge_logs + stack.logs())


def test_the_edge_as_its_image_recipe_installs_it_stores_through_the_cloud_path(
    tmp_path: Path, fresh_orthanc: Orthanc, cloud_factory: Callable[..., CloudStack]
):
    """The Dockerfile's build stage reproduced (support/image_recipe.py: its COPYs through
    .dockerignore, its `python -m venv` and `pip install .`), then run as the final stage runs it:
    ENTRYPOINT with its ENV and CMD `edge`, in front of the deployed functions."""
    image = image_build()
    assert image.cmd == ["edge"] and image.env["DICOM_ADAPTER_LOG_FORMAT"] == "json"
    stack = cloud_factory(fresh_orthanc.dicomweb_url)
    series = make_ct_series(tmp_path / "ct", 3)
    with stack.edge(image=image) as edge:
        assert edge.process.cmd[0].startswith(str(image.root))
        stack.wait_until(lambda: requests.get(edge.health_url("/readyz"), timeout=5).status_code == 200, 30, "ready")
        sent = storescu([i.path for i in series], "127.0.0.1", edge.port, called_aet=ADAPTER_AET)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        stack.wait_until_uploaded()
    for instance in series:
        assert_byte_exact(fresh_orthanc, instance.path, instance.study_instance_uid,
                          instance.series_instance_uid, instance.sop_instance_uid, "STORESCU")
    assert not stack.objects("dead")


def test_publish_failure_fails_the_c_store_and_leaves_no_object(
    tmp_path: Path, fresh_orthanc: Orthanc, fake_gcs: FakeGcs, cloud_factory: Callable[..., CloudStack]
):
    own_pubsub = PubSubEmulator(tmp_path / "own-pubsub", cleanup_scope="test").start()
    stack = cloud_factory(fresh_orthanc.dicomweb_url, pubsub=own_pubsub)
    instance = make_ct_instance(tmp_path / "a.dcm")
    with stack.edge("--publish_timeout", "3") as edge:
        stack.wait_until(lambda: requests.get(edge.health_url("/readyz"), timeout=5).status_code == 200, 30, "ready")
        own_pubsub.stop()
        [result] = send_files([instance.path], edge.port, called_aet=ADAPTER_AET)
        assert result.status == 0xA700, result
        assert "publish" in result.error_comment, result
        # Not ready while Pub/Sub is away, so a load balancer stops sending associations here.
        stack.wait_until(lambda: requests.get(edge.health_url("/readyz"), timeout=5).status_code == 503, 30, "not ready")
        assert "pubsub_topic" in requests.get(edge.health_url("/readyz"), timeout=5).json()["failing"]
    assert not stack.objects("queue"), "an object was left without an event"
    assert fresh_orthanc.instance_count() == 0


def test_function_crash_mid_upload_then_redelivery_stores_once(
    tmp_path: Path, healthcare_fake: HealthcareApiFake, cloud_factory: Callable[..., CloudStack]
):
    stack = cloud_factory(healthcare_fake.url)
    instance = make_ct_instance(tmp_path / "a.dcm")
    healthcare_fake.delay_next(1, seconds=30)  # the first STOW hangs: the function is mid-upload
    with stack.edge() as edge:
        [result] = send_files([instance.path], edge.port, called_aet=ADAPTER_AET)
        assert result.status == 0, result
        stack.wait_until(lambda: len(healthcare_fake.stow_requests()) >= 1, 60, "a STOW request in flight")
        stack.stow.process.kill()  # the function instance dies mid-upload
        stack.stow.start()  # a new instance on the same URL; Pub/Sub redelivers to it
        stack.wait_until_uploaded(timeout=120)
    assert healthcare_fake.instance_count() == 1
    stored = healthcare_fake.get_instance(instance.sop_instance_uid)
    assert dataset_bytes_after_meta(stored.read_bytes()) == dataset_bytes_after_meta(instance.path)
    assert not stack.objects("dead")


def test_permanent_rejection_lands_in_the_dead_letter_prefix_then_redrive(
    tmp_path: Path, healthcare_fake: HealthcareApiFake, cloud_factory: Callable[..., CloudStack]
):
    stack = cloud_factory(healthcare_fake.url)
    good = make_ct_instance(tmp_path / "good.dcm")
    bad = make_ct_instance(tmp_path / "bad.dcm")
    healthcare_fake.reject_with(400, 0xA900, detail="IOD violation", sop_instance_uids={bad.sop_instance_uid})
    with stack.edge() as edge:
        results = send_files([good.path, bad.path], edge.port, called_aet=ADAPTER_AET)
        assert [r.status for r in results] == [0, 0]
        stack.wait_until_uploaded()
    dead = stack.objects("dead")
    [dead_name] = [name for name in dead if name.endswith(".dcm")]
    assert bad.sop_instance_uid in dead_name
    dead_blob = dead[dead_name]
    assert "0xA900" in dead_blob.metadata["reason"]
    assert dead_blob.metadata["sop_instance_uid"] == bad.sop_instance_uid
    assert dataset_bytes_after_meta(dead_blob.download_as_bytes()) == dataset_bytes_after_meta(bad.path)
    record = json.loads(dead[dead_name[: -len(".dcm")] + ".json"].download_as_bytes())
    assert record["http_status"] == 400 and record["failure_reason"] == 0xA900
    assert record["redrive"].startswith(f"dicom-adapter redrive --gcs_buffer {stack.gcs_buffer} ")
    assert any(line.get("severity") == "ERROR" for line in _json_lines(stack.logs()))

    status = stack.cli("status", "--gcs_buffer", stack.gcs_buffer, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["dead_letters"] == 1

    healthcare_fake.clear_faults()
    redriven = stack.cli("redrive", "--gcs_buffer", stack.gcs_buffer, "--pubsub_topic", stack.topic,
                         "--sop_instance_uid", bad.sop_instance_uid)
    assert redriven.returncode == 0, redriven.stderr
    stack.wait_until(lambda: healthcare_fake.instance_count() == 2, 60, "the redriven instance stored")
    stack.wait_until_uploaded()
    assert not stack.objects("dead")


def test_deliveries_exhausted_end_in_the_dead_letter_function(
    tmp_path: Path, healthcare_fake: HealthcareApiFake, cloud_factory: Callable[..., CloudStack]
):
    stack = cloud_factory(healthcare_fake.url)
    instance = make_ct_instance(tmp_path / "a.dcm")
    healthcare_fake.fail_next(1000, status=503)
    with stack.edge() as edge:
        [result] = send_files([instance.path], edge.port, called_aet=ADAPTER_AET)
        assert result.status == 0
        stack.wait_until(lambda: any(n.endswith(".dcm") for n in stack.objects("dead")), 120, "a dead letter")
    [dead_name] = [name for name in stack.objects("dead") if name.endswith(".dcm")]
    assert "gave up after" in stack.objects("dead")[dead_name].metadata["reason"]
    assert not stack.objects("queue")
    # Each delivery retried inside the function before giving it back to Pub/Sub.
    assert len(healthcare_fake.stow_requests()) >= 5


def test_sweep_reannounces_an_object_whose_event_was_lost(
    tmp_path: Path, fresh_orthanc: Orthanc, cloud_factory: Callable[..., CloudStack]
):
    from dicom_adapter.buffers.gcs import GcsBuffer, GcsLocation
    from dicom_adapter.buffers.spool import Spool
    from dicom_adapter.events import BufferedInstance

    stack = cloud_factory(fresh_orthanc.dicomweb_url)
    instance = make_ct_instance(tmp_path / "a.dcm")
    # The edge uploaded the object and died before its publish: an object with no event.
    os.environ.update(stack.gcs.env())
    event = BufferedInstance(
        "", instance.sop_class_uid, instance.sop_instance_uid, instance.study_instance_uid,
        instance.series_instance_uid, "1.2.840.10008.1.2.1", "MODALITY", ADAPTER_AET, instance.path.stat().st_size,
    )
    GcsBuffer(GcsLocation.parse(stack.gcs_buffer), stack.gcs.client()).put_file(
        instance.path, Spool.new_entry_name(instance.sop_instance_uid), event
    )
    stack.function_env["DICOM_ADAPTER_SWEEP_MIN_AGE_MINUTES"] = "0"
    sweeper = stack.serve("sweep", signature="http")
    response = requests.post(sweeper.url, timeout=60)
    assert response.status_code == 200, sweeper.logs()
    assert response.json() == {"republished": 1, "unreadable": 0, "failed": 0}
    stack.wait_until_uploaded()
    stored = fresh_orthanc.retrieve_instance_part10(instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid)
    assert dataset_bytes_after_meta(stored) == dataset_bytes_after_meta(instance.path)
    # A second sweep finds nothing left to announce.
    assert requests.post(sweeper.url, timeout=60).json()["republished"] == 0


@pytest.mark.slow
def test_one_gigabyte_instance_streams_through_edge_gcs_and_function(
    tmp_path: Path, fresh_orthanc: Orthanc, cloud_factory: Callable[..., CloudStack]
):
    big = write_large_instance(tmp_path / "big.dcm", 1 << 30, fill="random", seed=11)
    stack = cloud_factory(fresh_orthanc.dicomweb_url)
    # fake-gcs-server rewrites the whole object for every resumable chunk (1 GiB in 8 MiB
    # chunks: 7 MB/s, quadratic), so the test uses 32 MiB chunks; memory stays bounded by them.
    with stack.edge("--gcs_chunk_size", "32") as edge:
        with RssSampler(edge.process.pid) as edge_rss, RssSampler(stack.stow.process.pid) as function_rss:
            [result] = send_files([big.path], edge.port, called_aet=ADAPTER_AET, timeout=600)
            assert result.status == 0, result
            stack.wait_until_uploaded(timeout=600)
    edge_peak, function_peak = edge_rss.peak_total_rss_bytes, function_rss.peak_total_rss_bytes
    print(f"\n1 GiB through the cloud path: edge peak RSS {edge_peak / 2**20:.0f} MiB, "
          f"stow_upload function peak RSS {function_peak / 2**20:.0f} MiB")
    assert edge_peak < 200 << 20
    assert function_peak < 200 << 20
    stored = tmp_path / "stored.dcm"
    fresh_orthanc.retrieve_instance_to_file(big.study_instance_uid, big.series_instance_uid, big.sop_instance_uid, stored)
    assert dataset_sha256_after_meta(stored) == dataset_sha256_after_meta(big.path)


def test_buffer_objects_are_created_only_once(tmp_path: Path, fake_gcs: FakeGcs):
    """The create-only precondition (if_generation_match=0) on the buffer's uploads.

    Neither GCS emulator available here returns 412 for a create-only *resumable* upload, so
    this proves the precondition on simple (multipart) uploads, which instances up to 8 MiB use;
    larger ones go by resumable upload with the same precondition, which real GCS enforces."""
    from dicom_adapter.buffers.gcs import BufferWriteFailed, GcsBuffer, GcsLocation
    from dicom_adapter.events import BufferedInstance

    bucket = f"create-only-{uuid.uuid4().hex[:8]}"
    fake_gcs.create_bucket(bucket)
    buffer = GcsBuffer(GcsLocation(bucket, "p"), fake_gcs.client())
    first, second = make_ct_instance(tmp_path / "1.dcm"), make_ct_instance(tmp_path / "2.dcm")
    event = BufferedInstance("", first.sop_class_uid, first.sop_instance_uid, "1", "2", "1.2.840.10008.1.2.1", "A", "B", 1)
    [stored] = buffer.put_file(first.path, "entry.dcm", event)
    assert stored.buffer_uri.startswith(f"gs://{bucket}/p/queue/entry.dcm#")
    # A retried request after a lost answer finds its own object: that is success, not a clash.
    assert buffer.put_file(first.path, "entry.dcm", event)[0].buffer_uri == stored.buffer_uri
    with pytest.raises(BufferWriteFailed, match="already taken"):
        buffer.put_file(second.path, "entry.dcm", event)
    blob = fake_gcs.client().bucket(bucket).get_blob("p/queue/entry.dcm")
    assert blob.download_as_bytes() == first.path.read_bytes()
    assert blob.metadata["sop_instance_uid"] == first.sop_instance_uid
    assert blob.metadata["crc32c"] == blob.crc32c


def test_routing_sends_one_object_and_event_per_destination(
    tmp_path: Path, fresh_orthanc: Orthanc, healthcare_fake: HealthcareApiFake, cloud_factory: Callable[..., CloudStack]
):
    """The destinations travel in the events: one object and one Pub/Sub message per
    destination, each uploaded (and retried, and dead-lettered) on its own."""
    stack = cloud_factory(fresh_orthanc.dicomweb_url)
    rules = json.dumps([
        {"filter": "Modality=CT", "destinations": [{"dicomweb_destination": healthcare_fake.url}, {"dicomweb_destination": fresh_orthanc.dicomweb_url}]},
    ])
    ct, mr = make_ct_instance(tmp_path / "ct.dcm"), make_ct_instance(tmp_path / "mr.dcm", modality="MR")
    healthcare_fake.fail_next(3, status=503)  # the fake's first attempts fail; Orthanc's copy is not held up
    with stack.edge("--destination_config_inline", rules) as edge:
        assert [r.status for r in send_files([ct.path, mr.path], edge.port, called_aet=ADAPTER_AET)] == [0, 0]
        stack.wait_until_uploaded()
    assert healthcare_fake.instance_count() == 1  # CT only
    assert sorted(fresh_orthanc.list_sop_instance_uids()) == sorted([ct.sop_instance_uid, mr.sop_instance_uid])  # MR: the default store
    stored = healthcare_fake.get_instance(ct.sop_instance_uid)
    assert dataset_bytes_after_meta(stored.read_bytes()) == dataset_bytes_after_meta(ct.path)
    assert not stack.objects("dead")


@pytest.mark.parametrize("kind", ["fake"])
def test_the_pubsub_stand_in_carries_the_cloud_path_where_the_emulator_is_absent(
    tmp_path: Path, kind: str, fake_gcs: FakeGcs, healthcare_fake: HealthcareApiFake
):
    """On a plain Debian without the Cloud SDK the suite runs against pubsub_fake.py; prove here
    (on every machine) that it carries the same path: publish, push, redelivery, dead letter."""
    pubsub = PubSubEmulator(tmp_path / "pubsub", cleanup_scope="test", kind=kind).start()
    stack = CloudStack(tmp_path / "cloud", fake_gcs, pubsub, healthcare_fake.url)
    try:
        good, bad = make_ct_instance(tmp_path / "good.dcm"), make_ct_instance(tmp_path / "bad.dcm")
        healthcare_fake.fail_next(2, status=503)  # a redelivery or two before the first store
        with stack.edge("--publish_timeout", "3") as edge:
            assert [r.status for r in send_files([good.path], edge.port, called_aet=ADAPTER_AET)] == [0]
            stack.wait_until_uploaded()
            assert healthcare_fake.instance_count() == 1
            healthcare_fake.fail_next(1000, status=503)
            assert [r.status for r in send_files([bad.path], edge.port, called_aet=ADAPTER_AET)] == [0]
            stack.wait_until(lambda: any(n.endswith(".dcm") for n in stack.objects("dead")), 120, "a dead letter")
            pubsub.stop()
            [refused] = send_files([make_ct_instance(tmp_path / "late.dcm").path], edge.port, called_aet=ADAPTER_AET)
            assert refused.status == 0xA700 and "publish" in refused.error_comment
    finally:
        for server in stack.functions:
            server.stop()


def test_folder_import_into_the_cloud_buffer(tmp_path: Path, fresh_orthanc: Orthanc, cloud_factory: Callable[..., CloudStack]):
    """`dicom-adapter import --gcs_buffer`: files take the cloud path of a received C-STORE
    (create-only object + Pub/Sub event → stow_upload), and a second run imports nothing new."""
    stack = cloud_factory(fresh_orthanc.dicomweb_url)
    series = make_ct_series(tmp_path / "archive", 6)
    command = ["import", "--gcs_buffer", stack.gcs_buffer, "--pubsub_topic", stack.topic,
               "--work_dir", str(tmp_path / "import-work"), "--report", str(tmp_path / "report.json"), str(tmp_path / "archive")]
    first = stack.cli(*command)
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads((tmp_path / "report.json").read_text())["summary"]["imported"] == len(series)
    stack.wait_until_uploaded()
    for instance in series:
        stored = fresh_orthanc.retrieve_instance_part10(instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid)
        assert dataset_bytes_after_meta(stored) == dataset_bytes_after_meta(instance.path)
    again = stack.cli(*command)
    assert again.returncode == 0 and not stack.objects("queue")
    # Orthanc would keep quiet about a duplicate, so the ledger's word is the proof: nothing new.
    summary = json.loads((tmp_path / "report.json").read_text())["summary"]
    assert summary["imported"] == 0 and summary["already_present"] == len(series)
    assert fresh_orthanc.instance_count() == len(series)
