"""Several queued instances in one STOW-RS request: a backlog goes up in fewer requests, and
each instance of a batch still gets its own verdict (stored, conflict, rejection, retry)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

from dicom_adapter.buffers.spool import Spool
from dicom_adapter.events import buffered_instance_from_cloud_event
from dicom_adapter.upload import TransientUploadError
from edge_listener.buffer.dispatcher import Dispatcher, DispatchSettings
from support.adapter import LocalAdapter, adapter_command
from support.dicom_files import dataset_bytes_after_meta, make_ct_instance
from support.healthcare_api_fake import HealthcareApiFake
from test_dispatcher import _queue, _wait

BATCHING = DispatchSettings(workers=2, retry_min_s=0.01, retry_max_s=0.05, scan_interval_s=0.2, batch_max=4, batch_linger_s=0.5)


def _name(event) -> str:
    return Path(buffered_instance_from_cloud_event(event).buffer_uri).name


def _uploading_batches(spool: Spool, sizes: list[int]):
    """A stand-in batch handler that 'uploads' (removes) each entry and records batch sizes."""

    def handle_batch(deliveries):
        sizes.append(len(deliveries))
        for event, _ in deliveries:
            (spool.queue / _name(event)).unlink()
        return [None] * len(deliveries)

    return handle_batch


def test_a_backlog_is_delivered_in_batches_each_entry_once(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    entries = _queue(spool, tmp_path, 10)
    batches: list[int] = []
    singles: list[str] = []

    def handle(event, attempt):
        singles.append(_name(event))
        (spool.queue / _name(event)).unlink()

    dispatcher = Dispatcher(spool, handle, BATCHING, _uploading_batches(spool, batches))
    dispatcher.start()
    try:
        _wait(lambda: not any(entry.exists() for entry in entries))
    finally:
        dispatcher.stop(5)
    # Each exactly once: a second delivery would find its entry gone and fail the unlink.
    assert len(singles) + sum(batches) == len(entries)
    assert batches and max(batches) == BATCHING.batch_max


def test_each_entry_of_a_batch_is_settled_on_its_own(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    ok, later, broken = _queue(spool, tmp_path, 3)
    attempts: dict[str, list[int]] = {}
    roles = {ok.name: "ok", later.name: "later", broken.name: "broken"}

    def outcome(name: str, attempt: int):
        attempts.setdefault(name, []).append(attempt)
        if roles[name] == "later" and attempt == 1:
            return TransientUploadError("store busy")
        if roles[name] == "broken":
            return ValueError("an answer nobody can read")
        (spool.queue / name).unlink()
        return None

    def handle(event, attempt):
        result = outcome(_name(event), attempt)
        if isinstance(result, Exception):
            raise result

    def handle_batch(deliveries):
        return [outcome(_name(event), attempt) for event, attempt in deliveries]

    dispatcher = Dispatcher(spool, handle, BATCHING, handle_batch)
    dispatcher.start()
    try:
        _wait(lambda: not ok.exists() and not later.exists() and (spool.dead / broken.name).exists())
    finally:
        dispatcher.stop(5)
    assert attempts[ok.name] == [1]
    assert attempts[later.name] == [1, 2]  # retried after its backoff, alone or with others
    assert len(attempts[broken.name]) == BATCHING.max_unexpected_failures


def test_entries_arriving_during_an_upload_wait_for_one_fuller_request(tmp_path: Path):
    """While an upload is in flight, a worker lingers (batch_linger_s) to gather what arrives."""
    spool = Spool(tmp_path / "spool")
    release = threading.Event()
    first_started = threading.Event()
    batches: list[int] = []

    def handle(event, attempt):
        first_started.set()
        release.wait(20)
        (spool.queue / _name(event)).unlink()

    dispatcher = Dispatcher(spool, handle, BATCHING, _uploading_batches(spool, batches))
    dispatcher.start()
    try:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        [first] = _queue(spool, tmp_path / "a", 1)
        dispatcher.announce(spool.describe(first))
        assert first_started.wait(10)  # nothing was in flight: it went at once, alone
        later = _queue(spool, tmp_path / "b", 3)
        for entry in later:
            dispatcher.announce(spool.describe(entry))
            time.sleep(0.05)  # one by one, as C-STOREs arrive
        _wait(lambda: not any(entry.exists() for entry in later))
    finally:
        release.set()
        dispatcher.stop(5)
    assert batches == [3]


def test_a_batch_stores_what_it_can_and_resolves_the_rest_one_by_one(tmp_path: Path, healthcare_fake: HealthcareApiFake):
    """A backlog of 10 against the Healthcare API's answers: 8 new, one identical to a stored
    instance, one different from a stored one (409), one the store rejects (400)."""
    stored_before = make_ct_instance(tmp_path / "stored.dcm", seed=1)
    identical = stored_before  # queued again: a re-send of what the store holds
    other_stored = make_ct_instance(tmp_path / "other.dcm", seed=3)
    conflict = make_ct_instance(
        tmp_path / "conflict.dcm", seed=4, study_instance_uid=other_stored.study_instance_uid,
        series_instance_uid=other_stored.series_instance_uid, sop_instance_uid=other_stored.sop_instance_uid,
    )
    rejected = make_ct_instance(tmp_path / "rejected.dcm", seed=5)
    new = [make_ct_instance(tmp_path / f"new{i}.dcm", seed=10 + i) for i in range(7)]
    healthcare_fake.reject_with(400, 0xA900, detail="IOD violation", sop_instance_uids={rejected.sop_instance_uid})

    # The store already holds two of them.
    with LocalAdapter(tmp_path / "seed", healthcare_fake.url) as seed:
        for instance in (stored_before, other_stored):
            subprocess.run([*adapter_command(), "import", "--spool_dir", str(seed.spool_dir), str(instance.path)], check=True, capture_output=True)
        seed.wait_until_drained(timeout=60)
    assert healthcare_fake.instance_count() == 2
    requests_before = len(healthcare_fake.stow_requests())

    # The backlog is queued while no adapter runs, then one starts on it.
    spool_dir = tmp_path / "adapter" / "spool"
    backlog = [identical, conflict, rejected, *new]
    folder = tmp_path / "backlog"
    folder.mkdir()
    for instance in backlog:
        (folder / instance.path.name).write_bytes(instance.path.read_bytes())
    subprocess.run([*adapter_command(), "import", "--spool_dir", str(spool_dir), str(folder)], check=True, capture_output=True)
    with LocalAdapter(tmp_path / "adapter", healthcare_fake.url, spool_dir=spool_dir, extra_args=["--upload_batch", "16"]) as adapter:
        adapter.wait_until_drained(timeout=60)
        letters = {p.name.split("-")[1]: json.loads(p.with_suffix(".json").read_text()) for p in adapter.dead_letters()}
        # The line is written just after the queue entry goes, so it may lag the emptied queue.
        adapter.wait_for_log("stored sop_instance_uid=" + identical.sop_instance_uid)

    stow = healthcare_fake.stow_requests()[requests_before:]
    assert max(len(r.sop_instance_uids) for r in stow) > 1, "the backlog went up one instance per request"
    assert len(stow) < len(backlog)
    for instance in new:  # byte for byte
        kept = healthcare_fake.get_instance(instance.sop_instance_uid)
        assert dataset_bytes_after_meta(kept.read_bytes()) == dataset_bytes_after_meta(instance.path)
    assert set(letters) == {conflict.sop_instance_uid, rejected.sop_instance_uid}
    assert "conflict" in letters[conflict.sop_instance_uid]["reason"]
    assert letters[rejected.sop_instance_uid]["failure_reason"] == 0xA900
    # The identical re-send is answered 200 like a new one (as the Healthcare API does): it left
    # the queue without a dead letter, and the store still holds one copy, the same bytes.
    assert identical.sop_instance_uid not in letters
    kept = healthcare_fake.get_instance(identical.sop_instance_uid)
    assert dataset_bytes_after_meta(kept.read_bytes()) == dataset_bytes_after_meta(identical.path)
    kept = healthcare_fake.get_instance(other_stored.sop_instance_uid)  # the first copy stays
    assert dataset_bytes_after_meta(kept.read_bytes()) == dataset_bytes_after_meta(other_stored.path)
    assert healthcare_fake.instance_count() == 2 + len(new)
