"""Bringing archives in: `dicom-adapter import` and the watched drop folder, end to end.

The import runs as users run it (the command, in its own process) into the spool of a running
`dicom-adapter local`, whose uploads go to a real Orthanc. Orthanc keeps STOW-RS bodies verbatim,
so what WADO-RS returns is what the adapter uploaded: a file with a valid file meta must come
back whole, byte for byte, and any file's data set (everything after group 0002) exactly.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import zipfile
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from pydicom.data import DATA_ROOT

from support.adapter import LocalAdapter, adapter_command
from support.dicom_files import (
    MARKER_PATIENT_NAME,
    corpus_files,
    dataset_sha256_after_meta,
    find_marker_phi,
    make_ct_instance,
    make_ct_series,
)
from support.orthanc import Orthanc
from support.processes import ManagedProcess

# A folder name as real archives have them: the patient's name. It must never reach a log.
PHI_FOLDER = MARKER_PATIENT_NAME.replace("^", "_")


def run_import(spool: Path, *paths: Path, report: Path, extra: list[str] | None = None) -> tuple[subprocess.CompletedProcess[str], dict]:
    command = adapter_command() + ["import", "--spool_dir", str(spool), "--report", str(report), *(extra or []), *map(str, paths)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    return done, json.loads(report.read_text())


def stored_dataset_sha256(store: Orthanc, instance) -> str:
    stored = store.retrieve_instance_part10(instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid)
    return dataset_sha256_after_meta(stored)


@pytest.fixture
def adapter(tmp_path: Path, fresh_orthanc: Orthanc):
    with LocalAdapter(tmp_path / "adapter", fresh_orthanc.dicomweb_url) as running:
        yield running


def _non_dicom_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True)
    files = {
        "notes.txt": b"scanned on the old PACS, 2009\n",
        "random.bin": random.Random(7).randbytes(5000),
        "image.png": b"\x89PNG\r\n\x1a\n" + bytes(300),
        "empty.dcm": b"",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def test_import_lands_every_valid_instance_byte_exact_and_a_second_run_imports_nothing(
    tmp_path: Path, fresh_orthanc: Orthanc, adapter: LocalAdapter
):
    store = fresh_orthanc
    archive = tmp_path / "archive"
    # pydicom's whole test folder as it ships: every encoding, DICOMDIR media, broken files, text.
    shutil.copytree(Path(DATA_ROOT, "test_files"), archive / "pydicom")
    generated = make_ct_series(archive / PHI_FOLDER / "ct", 2000, size_kb=1)
    # A ZIP with 300 of those (already present when met again) and 50 instances only it holds.
    zip_only = make_ct_series(tmp_path / "zip-only", 50, size_kb=1)
    with zipfile.ZipFile(archive / "part.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for instance in generated[:300] + zip_only:
            zf.write(instance.path, f"{PHI_FOLDER}/{instance.path.parent.name}/{instance.path.name}")
    non_dicom = _non_dicom_files(archive / "misc")
    truncated_source = make_ct_instance(tmp_path / "whole.dcm", size_kb=8)
    truncated = archive / "misc" / "truncated.dcm"
    truncated.write_bytes(truncated_source.read_bytes()[: truncated_source.size // 2])
    # A data set written without any file meta: imported behind the adapter's own.
    bare_source = make_ct_instance(tmp_path / "bare-source.dcm", size_kb=2, transfer_syntax=pydicom.uid.ImplicitVRLittleEndian)
    bare = archive / "misc" / "bare-dataset"
    with open(bare_source.path, "rb") as fp:
        ds = pydicom.dcmread(fp)
    del ds.file_meta
    ds.preamble = None  # no preamble, no 'DICM', no group 0002: a bare data set
    ds.save_as(bare, enforce_file_format=False, implicit_vr=True, little_endian=True)

    started = time.monotonic()
    first, report = run_import(adapter.spool_dir, archive, report=tmp_path / "first.json")
    import_s = time.monotonic() - started
    assert first.returncode == 1, first.stderr[-3000:]  # some files are not DICOM: exit 1, listed
    summary = report["summary"]
    not_imported = {Path(entry["source"].split("!")[0]).name: entry for entry in report["not_imported"]}
    # Every problem file is listed with a reason; nothing valid is among them.
    for name in non_dicom:
        assert not_imported[name]["outcome"] == "not_dicom" and not_imported[name]["reason"], not_imported.get(name)
    assert not_imported["truncated.dcm"]["outcome"] == "failed"
    assert "past the end" in not_imported["truncated.dcm"]["reason"] or "ends early" in not_imported["truncated.dcm"]["reason"]
    assert all(entry["reason"] for entry in report["not_imported"])
    usable = corpus_files()
    assert not {c.path.name for c in usable} & set(not_imported), "a valid corpus file was not imported"
    assert summary["already_present"] >= 300  # the ZIP's copies of the folder's files
    assert summary["rewrapped"] >= 1

    adapter.wait_until_drained(timeout=300)
    upload_s = time.monotonic() - started
    print(f"import of {summary['imported']} instances: {import_s:.1f}s buffered, {upload_s:.1f}s in Orthanc")

    # Generated instances (folder and ZIP): whole files back byte for byte.
    for instance in generated[::40] + zip_only[::10]:
        stored = store.retrieve_instance_part10(instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid)
        assert stored == instance.read_bytes(), f"{instance.path.name} changed on the way"
    # ...and every one of them present with its exact data set.
    stored_uids = set(store.list_sop_instance_uids())
    assert {i.sop_instance_uid for i in generated + zip_only} <= stored_uids
    for instance in generated + zip_only:
        assert stored_dataset_sha256(store, instance) == dataset_sha256_after_meta(instance.path)
    # The bare data set: the same data set bytes, now with a file meta.
    assert stored_dataset_sha256(store, bare_source) == dataset_sha256_after_meta(bare_source.path)
    # The corpus: pydicom ships some images in several encodings under one UID; the store keeps
    # one of them (Orthanc: the first to arrive), so its data set must be one of those files'.
    candidates: dict[str, set[str]] = defaultdict(set)
    for corpus_file in usable:
        candidates[corpus_file.sop_instance_uid].add(dataset_sha256_after_meta(corpus_file.path))
    for corpus_file in usable:
        assert corpus_file.sop_instance_uid in stored_uids, corpus_file.name
        assert stored_dataset_sha256(store, corpus_file) in candidates[corpus_file.sop_instance_uid], corpus_file.name
    # Files the import accepted but the store refused are dead letters with the reason (only
    # corpus files known to be broken may end there).
    for letter in adapter.dead_letters():
        assert json.loads(letter.with_suffix(".json").read_text())["reason"]
    assert len(adapter.dead_letters()) <= 6

    count = store.instance_count()
    second, again = run_import(adapter.spool_dir, archive, report=tmp_path / "second.json")
    assert again["summary"]["imported"] == 0
    assert again["summary"]["already_present"] == summary["imported"] + summary["already_present"]
    assert adapter.queue_entries() == []
    assert store.instance_count() == count
    # No demographics in any log line, though file names hold the patient's name.
    logs = first.stderr + second.stderr + adapter.logs()
    assert PHI_FOLDER not in logs
    assert find_marker_phi(logs) == []


def _start_import_and_wait_for(spool: Path, archive: Path, report: Path, entries: int, log_dir: Path) -> ManagedProcess:
    run = ManagedProcess(
        adapter_command() + ["import", "--spool_dir", str(spool), "--report", str(report), str(archive)], log_dir=log_dir, name="import"
    ).start()
    queue = spool / "queue"
    deadline = time.monotonic() + 60
    while not (queue.exists() and len(os.listdir(queue)) >= entries):
        assert run.is_running() and time.monotonic() < deadline, run.output_tail()
        time.sleep(0.01)
    return run


def test_interrupted_and_killed_import_resumes_and_buffers_every_instance_once(tmp_path: Path):
    spool, queue = tmp_path / "spool", tmp_path / "spool" / "queue"
    series = make_ct_series(tmp_path / "archive", 1500, size_kb=1)
    # Ctrl-C: what is in progress finishes, the report says so, exit 130.
    report = tmp_path / "interrupted.json"
    run = _start_import_and_wait_for(spool, tmp_path / "archive", report, 300, tmp_path)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=60) == 130
    interrupted = json.loads(report.read_text())
    assert interrupted["interrupted"] is True
    assert interrupted["summary"]["imported"] == len(os.listdir(queue)) < len(series)
    # kill -9 in the middle of the second run: no report, and the ledger is behind the spool.
    report = tmp_path / "report.json"
    run = _start_import_and_wait_for(spool, tmp_path / "archive", report, interrupted["summary"]["imported"] + 300, tmp_path)
    run.kill()
    assert len(os.listdir(queue)) < len(series), "the import finished before it could be killed"
    assert not report.exists()

    second, summary = run_import(spool, tmp_path / "archive", report=report)
    assert second.returncode == 0, second.stderr[-3000:]
    assert summary["summary"]["imported"] + summary["summary"]["already_present"] == len(series)
    entries = sorted(os.listdir(queue))
    uids = [pydicom.dcmread(queue / name, stop_before_pixels=True).SOPInstanceUID for name in entries]
    assert len(uids) == len(set(uids)) == len(series), "an instance was buffered twice, or lost"
    assert not any((spool / "importing").iterdir())  # staged copies of the killed run swept


def test_dicomdir_media_imports_the_files_it_lists(tmp_path: Path):
    media = tmp_path / "cd"
    shutil.copytree(Path(DATA_ROOT, "test_files", "dicomdirtests"), media)
    directory = pydicom.dcmread(media / "DICOMDIR")
    listed = [r.ReferencedFileID for r in directory.DirectoryRecordSequence if "ReferencedFileID" in r]
    done, report = run_import(tmp_path / "spool", media / "DICOMDIR", report=tmp_path / "r.json")
    assert done.returncode == 0, done.stderr
    assert report["summary"]["imported"] == len(listed)
    assert report["summary"]["skipped"] == 0  # the DICOMDIR itself is not counted as a file
    # A file the DICOMDIR lists that is missing from the media is reported, not skipped.
    missing = media.joinpath(*listed[0])
    missing.unlink()
    again, report = run_import(tmp_path / "spool", media / "DICOMDIR", report=tmp_path / "r2.json")
    assert again.returncode == 1
    assert report["not_imported"] == [
        {"source": str(missing), "file_ref": report["not_imported"][0]["file_ref"], "outcome": "failed", "reason": "listed in the DICOMDIR but missing on the media"}
    ]


def _write_slowly(path: Path, data: bytes, cuts: list[int], pause_s: float, *, keep_open: bool) -> None:
    """Write `data` in pieces ending at `cuts`, pausing between them, like a slow network copy."""
    pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    if keep_open:
        with open(path, "wb") as out:
            for piece in pieces:
                out.write(piece)
                out.flush()
                time.sleep(pause_s)
        return
    for piece in pieces:
        with open(path, "ab") as out:
            out.write(piece)
        time.sleep(pause_s)


def test_watched_folder_takes_slowly_written_files_only_once_complete(tmp_path: Path, fresh_orthanc: Orthanc):
    store = fresh_orthanc
    drop = tmp_path / "drop"
    drop.mkdir()
    args = ["--watch_dir", str(drop), "--watch_settle_time", "1", "--watch_incomplete_timeout", "30"]
    held = make_ct_instance(tmp_path / "src" / "held.dcm", size_kb=64)
    reopened = make_ct_instance(tmp_path / "src" / "reopened.dcm", size_kb=64)
    zipped = make_ct_series(tmp_path / "src" / "series", 5, size_kb=2)
    with LocalAdapter(tmp_path / "adapter", store.dicomweb_url, extra_args=args) as adapter:
        # Pauses longer than the settle time: one writer keeps the file open throughout (the
        # open-for-writing guard holds it back), the other re-opens it for every piece (the file
        # parses as cut short, so it waits for the incomplete timeout rather than being rejected).
        cuts = [16384, 32768, 49152]
        writers = [
            threading.Thread(target=_write_slowly, args=(drop / "held.dcm", held.read_bytes(), cuts, 1.6), kwargs={"keep_open": True}),
            threading.Thread(target=_write_slowly, args=(drop / "sub" / "reopened.dcm", reopened.read_bytes(), cuts, 1.6), kwargs={"keep_open": False}),
        ]
        (drop / "sub").mkdir()
        for writer in writers:
            writer.start()
        with zipfile.ZipFile(tmp_path / "series.zip", "w") as zf:
            for instance in zipped:
                zf.write(instance.path, instance.path.name)
        shutil.copy(tmp_path / "series.zip", drop / ".series.zip.part")
        os.rename(drop / ".series.zip.part", drop / "series.zip")  # the atomic way
        (drop / "not-dicom.txt").write_text("hello")
        for writer in writers:
            writer.join()
        expected = [held, reopened, *zipped]
        deadline = time.monotonic() + 60
        while not all((drop / "done" / p).exists() for p in ("held.dcm", "sub/reopened.dcm", "series.zip")):
            assert time.monotonic() < deadline, sorted(str(p.relative_to(drop)) for p in drop.rglob("*"))
            time.sleep(0.2)
        adapter.wait_until_drained()
        assert sorted(store.list_sop_instance_uids()) == sorted(i.sop_instance_uid for i in expected)
        for instance in expected:
            stored = store.retrieve_instance_part10(instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid)
            assert stored == instance.read_bytes()
        # The bad file is set aside with its reason; no good file was ever rejected.
        assert sorted(p.name for p in (drop / "rejected").iterdir()) == ["not-dicom.txt", "not-dicom.txt.reason.json"]
        assert "DICM" in json.loads((drop / "rejected" / "not-dicom.txt.reason.json").read_text())["reason"]
        assert [p for p in drop.iterdir() if p.is_file()] == []
        logs = adapter.logs()
    assert logs.count("watched file rejected") == 1
    assert "file looks cut short; waiting for the rest" in logs  # the re-opening writer was waited for
