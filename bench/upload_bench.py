#!/usr/bin/env python3
"""Upload-side benchmark: what the local runtime's upload path costs per instance, next to a bare
STOW-RS client sending the same files into the same kind of store.

In one run, each side with a fresh Orthanc (+ DICOMweb), the same generated corpus (N CTs of
~70 KB), 4 concurrent requests of up to 16 instances each:
  (a) bare STOW  import_bench's http.client STOW client, the files streamed into multipart
                 bodies, nothing else
  (b) upload     the adapter's own path in this process: the files are moved into a spool's
                 queue and announced at --rate per second as the edge does (0: all at once, a
                 backlog), and the Dispatcher hands them to the Uploader (`stow_upload`):
                 STOW-RS, reading the answer, removing each entry, a log line each
Prints inst/s, this process's CPU per instance (user/system) and Orthanc's, and (b)/(a).

    python bench/upload_bench.py [--count 1000] [--rate 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "functions"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from import_bench import Corpus, Orthanc, make_small_corpus, stow_direct  # noqa: E402

from dicom_adapter.buffers.spool import Spool  # noqa: E402
from dicom_adapter.config import UploadSettings  # noqa: E402
from dicom_adapter.events import BufferedInstance  # noqa: E402
from dicom_adapter.logs import configure_logging  # noqa: E402
from dicom_adapter.upload import Uploader  # noqa: E402
from edge_listener.buffer.dispatcher import Dispatcher, DispatchSettings  # noqa: E402

WORKERS = 4
BATCH = 16


def adapter_upload(files: list[Path], orthanc: Orthanc, spool_dir: Path, rate: float) -> dict:
    """(b): the Dispatcher and Uploader of `dicom-adapter local`, fed as the edge feeds them."""
    spool = Spool(spool_dir)
    staged = []
    for path in files:  # written and described beforehand, not measured: the edge's part
        name = spool.new_entry_name(path.stem)
        shutil.copyfile(path, spool.incoming / name)
        staged.append((spool.incoming / name, replace(spool.describe(spool.incoming / name), buffer_uri=spool.uri(spool.queue / name))))
    uploader = Uploader(UploadSettings(dicomweb_address=orthanc.dicomweb))
    dispatcher = Dispatcher(spool, uploader.handle_cloud_event, DispatchSettings(workers=WORKERS, batch_max=BATCH), uploader.handle_cloud_events)
    return _measured(lambda: _feed(dispatcher, spool, staged, rate), orthanc)


def _feed(dispatcher: Dispatcher, spool: Spool, staged: list[tuple[Path, BufferedInstance]], rate: float) -> None:
    """Move each entry into the queue and announce it, `rate` per second, as the edge does after
    its fsync; then wait until the queue is empty."""
    dispatcher.start()
    t0 = time.monotonic()
    for index, (path, instance) in enumerate(staged):
        os.rename(path, spool.queue / path.name)
        dispatcher.announce(instance)
        if rate:
            time.sleep(max(0.0, t0 + (index + 1) / rate - time.monotonic()))
    while next(os.scandir(spool.queue), None) is not None:
        time.sleep(0.02)
    dispatcher.stop()


def _bare_stow(corpus: Corpus, orthanc: Orthanc) -> None:
    """(a): import_bench's bare STOW client, BATCH instances per request, WORKERS threads."""
    problems = stow_direct(corpus, orthanc, WORKERS, per_request=BATCH)
    if problems:
        raise RuntimeError(f"bare STOW failed: {problems[:3]}")


def _measured(run, orthanc: Orthanc) -> dict:
    store = psutil.Process(orthanc.proc.p.pid)
    store_before = sum(store.cpu_times()[:2])
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    run()
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": seconds,
        "user_s": after.ru_utime - before.ru_utime,
        "sys_s": after.ru_stime - before.ru_stime,
        "orthanc_s": sum(store.cpu_times()[:2]) - store_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500.0, help="announcements per second for (b); 0: all at once")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    configure_logging(json_format=False, verbose=False, stream=open("/dev/null", "w"))
    logging.getLogger().setLevel(logging.INFO)  # the "stored" line per instance is part of the cost
    work = Path(tempfile.mkdtemp(prefix="upload-bench-"))
    rows = {}
    try:
        corpus = make_small_corpus(work / "corpus", args.count)
        for label in ("bare STOW", "adapter upload"):
            orthanc = Orthanc(work, name=label.replace(" ", "-"))
            try:
                if label == "bare STOW":
                    rows[label] = _measured(lambda: _bare_stow(corpus, orthanc), orthanc)
                else:
                    rows[label] = adapter_upload(corpus.files, orthanc, work / "spool", args.rate)
                if orthanc.count() != corpus.count:
                    raise RuntimeError(f"{label}: Orthanc holds {orthanc.count()} of {corpus.count}")
            finally:
                orthanc.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = args.count
    print(f"{n} instances, {WORKERS} concurrent requests of up to {BATCH}; (b) announced at {args.rate or 'once'}/s")
    print(f"{'':16} {'inst/s':>8} {'CPU ms/inst':>12} {'user':>6} {'sys':>6} {'Orthanc ms/inst':>16}")
    for label, row in rows.items():
        cpu = (row["user_s"] + row["sys_s"]) * 1000 / n
        print(f"{label:16} {n / row['seconds']:8.0f} {cpu:12.2f} {row['user_s'] * 1000 / n:6.2f} {row['sys_s'] * 1000 / n:6.2f} {row['orthanc_s'] * 1000 / n:16.2f}")
    bare, ours = rows["bare STOW"], rows["adapter upload"]
    ratio = (ours["user_s"] + ours["sys_s"]) / max(1e-9, bare["user_s"] + bare["sys_s"])
    print(f"upload path CPU / bare STOW CPU: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"count": n, "rate": args.rate, "rows": rows, "cpu_ratio": ratio}, indent=1))


if __name__ == "__main__":
    main()
