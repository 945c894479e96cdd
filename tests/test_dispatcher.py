"""The local dispatcher's delivery rules, in process with a stand-in upload function."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

from dicom_adapter.buffers.spool import Spool
from dicom_adapter.events import buffered_instance_from_cloud_event
from dicom_adapter.upload import TransientUploadError
from edge_listener.buffer.dispatcher import Dispatcher, DispatchSettings
from support.dicom_files import make_ct_instance

FAST = DispatchSettings(workers=2, retry_min_s=0.01, retry_max_s=0.05, scan_interval_s=0.2)


def _queue(spool: Spool, tmp_path: Path, n: int) -> list[Path]:
    entries = []
    for i in range(n):
        instance = make_ct_instance(tmp_path / f"src{i}.dcm", size_kb=5)
        entry = spool.queue / spool.new_entry_name(instance.sop_instance_uid)
        shutil.copyfile(instance.path, entry)
        entries.append(entry)
    return entries


def _wait(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_transient_failures_are_redelivered_until_they_succeed(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    [entry] = _queue(spool, tmp_path, 1)
    attempts: list[int] = []

    def handle(event, attempt):
        attempts.append(attempt)
        if attempt < 3:
            raise TransientUploadError("store down")
        buffered_instance_from_cloud_event(event)  # a real CloudEvent carrying the event
        entry.unlink()

    dispatcher = Dispatcher(spool, handle, FAST)
    dispatcher.start()
    try:
        _wait(lambda: not entry.exists())
    finally:
        dispatcher.stop(5)
    assert attempts == [1, 2, 3]


def test_an_entry_that_keeps_failing_unexpectedly_is_dead_lettered_not_retried_for_ever(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    [entry] = _queue(spool, tmp_path, 1)
    calls = []

    def handle(event, attempt):
        calls.append(attempt)
        raise ValueError("an answer nobody can read")

    dispatcher = Dispatcher(spool, handle, FAST)
    dispatcher.start()
    try:
        _wait(lambda: (spool.dead / entry.name).exists())
    finally:
        dispatcher.stop(5)
    assert len(calls) == FAST.max_unexpected_failures
    record = json.loads((spool.dead / entry.name).with_suffix(".json").read_text())
    assert "ValueError" in record["reason"]


def test_unreadable_queue_entries_are_moved_aside_with_a_reason(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    broken = spool.queue / spool.new_entry_name("1.2.3")
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    dispatcher = Dispatcher(spool, lambda event, attempt: None, FAST)
    dispatcher.start()
    try:
        _wait(lambda: (spool.dead / broken.name).exists())
    finally:
        dispatcher.stop(5)
    assert "unreadable spool entry" in json.loads((spool.dead / broken.name).with_suffix(".json").read_text())["reason"]


def test_a_slow_upload_does_not_hold_up_the_next_entry(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    slow, quick = _queue(spool, tmp_path, 2)
    release = threading.Event()
    done: list[str] = []

    def handle(event, attempt):
        name = Path(buffered_instance_from_cloud_event(event).buffer_uri).name
        if name == slow.name:
            release.wait(20)
        done.append(name)

    dispatcher = Dispatcher(spool, handle, FAST)
    dispatcher.start()
    try:
        _wait(lambda: quick.name in done, timeout=10)  # the second worker takes it while the first is busy
        assert slow.name not in done
    finally:
        release.set()
        dispatcher.stop(5)


def test_an_entry_whose_notice_was_lost_is_found_within_a_second(tmp_path: Path):
    """The edge could not write the notice (the upload process was starting or busy): the
    buffer asks for a rescan, which the dispatcher honours well before its periodic scan."""
    import dataclasses

    from dicom_adapter.part10 import read_file_meta
    from edge_listener.buffer.buffering import SpoolBuffer
    from edge_listener.buffer.reception import ReceptionFile

    spool = Spool(tmp_path / "spool")
    delivered: list[str] = []
    slow_scans = DispatchSettings(workers=1, scan_interval_s=3600)
    dispatcher = Dispatcher(spool, lambda event, attempt: delivered.append(buffered_instance_from_cloud_event(event).sop_instance_uid), slow_scans)
    dispatcher.start()
    try:
        source = make_ct_instance(tmp_path / "a.dcm", size_kb=5)
        data = source.path.read_bytes()
        with open(source.path, "rb") as fp:
            meta = read_file_meta(fp)
        reception = ReceptionFile(str(spool.incoming), "test", None, None)  # as the fast path fills it
        reception.write_file_meta(meta.sop_class_uid, meta.sop_instance_uid, meta.transfer_syntax_uid)
        reception.write(data[meta.dataset_offset:])
        instance = dataclasses.replace(spool.describe(source.path), buffer_uri="")
        started = time.monotonic()
        SpoolBuffer(spool, lambda event: False).put(reception, instance, [None])  # the notice pipe was full
        _wait(lambda: delivered == [source.sop_instance_uid], timeout=5)
        assert time.monotonic() - started < 2.5
    finally:
        dispatcher.stop(5)


def test_a_batch_the_next_entry_would_overflow_goes_at_once_instead_of_lingering(tmp_path: Path):
    """While an upload is in flight a worker lingers to fill its batch, but not for entries
    that cannot join it: when the next due entry would exceed batch_max_bytes, it sends now."""
    spool = Spool(tmp_path / "spool")
    first, second, third = _queue(spool, tmp_path, 3)
    entry_size = second.stat().st_size
    settings = DispatchSettings(workers=2, scan_interval_s=60, batch_max=16, batch_max_bytes=entry_size + entry_size // 2, batch_linger_s=10)
    release = threading.Event()
    sent: dict[str, float] = {}

    def handle(event, attempt):
        path = Path(buffered_instance_from_cloud_event(event).buffer_uri.removeprefix("file://"))
        if path.name == first.name:
            release.wait(20)  # in flight while the others are gathered
        sent[path.name] = time.monotonic()
        path.unlink()

    def handle_batch(deliveries):
        return [handle(event, attempt) for event, attempt in deliveries]

    for entry in (second, third):  # not found by the start-up scan; announced below
        entry.rename(tmp_path / entry.name)
    dispatcher = Dispatcher(spool, handle, settings, handle_batch)
    dispatcher.start()
    try:
        _wait(lambda: dispatcher._in_flight == 1, timeout=10)
        started = time.monotonic()
        for entry in (second, third):
            (tmp_path / entry.name).rename(entry)
            dispatcher.announce(spool.describe(entry))
        _wait(lambda: second.name in sent, timeout=8)  # not the 10 s linger
        assert third.name not in sent  # it did not fit; it lingers for company of its own
    finally:
        release.set()
        dispatcher.stop(5)
