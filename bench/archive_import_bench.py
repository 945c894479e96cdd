#!/usr/bin/env python3
"""Folder import benchmark: `dicom-adapter import` against `dcmsend` of the same folder.

In one run, on loopback, with a fresh Orthanc (+ DICOMweb) for each side:
  (a) dcmsend   /usr/bin/dcmsend +sd +r FOLDER straight into Orthanc's DIMSE port (TCP_NODELAY=1
                for both),
                timed until dcmsend exits (every instance acknowledged by Orthanc)
  (b) import    `dicom-adapter import --spool_dir S FOLDER` into the spool of a running
                `dicom-adapter local` whose uploads go to Orthanc by STOW-RS: "buffered" is the
                import command's own time, "in store" until Orthanc counts every instance
The corpus is generated with pydicom (fresh UIDs every run): N single-frame CTs of ~SIZE KiB.
It reuses the test-support layer (tests/support) for Orthanc, DCMTK and the adapter process.

    python bench/archive_import_bench.py [--count 1000] [--size-kb 70] [--workers 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.adapter import LocalAdapter, adapter_command  # noqa: E402
from support.dcmtk import dcmsend  # noqa: E402
from support.dicom_files import make_ct_series  # noqa: E402
from support.orthanc import Orthanc  # noqa: E402


def wait_for_count(store: Orthanc, count: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while store.instance_count() < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"Orthanc holds {store.instance_count()} of {count}")
        time.sleep(0.1)
    return time.monotonic()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--size-kb", type=int, default=70)
    ap.add_argument("--workers", type=int, default=4, help="import --workers (and local --upload_workers)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    # DCMTK leaves Nagle's algorithm on unless this is set, also in Orthanc's DIMSE (DCMTK inside):
    # without it a receiver answers ~20 instances/s whatever the sender does (bench/README.md).
    os.environ["TCP_NODELAY"] = "1"

    with tempfile.TemporaryDirectory(prefix="archive-import-bench-") as tmp:
        work = Path(tmp)
        started = time.monotonic()
        series = make_ct_series(work / "archive", args.count, size_kb=args.size_kb)
        nbytes = sum(i.size for i in series)
        print(f"generated {len(series)} instances, {nbytes / len(series) / 1000:.1f} KB each, in {time.monotonic() - started:.1f}s")
        os.sync()
        rows = []

        with Orthanc(work / "orthanc-a", cleanup_scope="session") as store:
            t0 = time.monotonic()
            sent = dcmsend(work / "archive", "127.0.0.1", store.dimse_port, called_aet=store.aet, extra_args=["+sd", "+r"], timeout=1800)
            elapsed = time.monotonic() - t0
            assert sent.returncode == 0, sent.stderr[-2000:]
            assert store.instance_count() == args.count
            rows.append({"side": "(a) dcmsend -> Orthanc DIMSE", "seconds": elapsed})
        os.sync()

        with Orthanc(work / "orthanc-b", cleanup_scope="session") as store:
            extra = ["--upload_workers", str(args.workers)]
            with LocalAdapter(work / "adapter", store.dicomweb_url, extra_args=extra) as adapter:
                t0 = time.monotonic()
                done = subprocess.run(
                    adapter_command() + ["import", "--spool_dir", str(adapter.spool_dir), "--workers", str(args.workers),
                                         "--report", str(work / "report.json"), str(work / "archive")],
                    capture_output=True, text=True, timeout=1800,
                )
                buffered = time.monotonic() - t0
                assert done.returncode == 0, done.stderr[-2000:]
                in_store = wait_for_count(store, args.count, timeout=1800) - t0
            rows.append({"side": "(b) import, buffered (spool)", "seconds": buffered})
            rows.append({"side": "(b) import, in store (STOW-RS)", "seconds": in_store})

    reference = rows[0]["seconds"]
    print(f"\n{args.count} instances, {nbytes / 1e6:.1f} MB, {os.cpu_count()} CPUs, import --workers {args.workers}")
    print(f"{'side':34} {'s':>7} {'inst/s':>8} {'MB/s':>7} {'vs (a)':>7}")
    for row in rows:
        row["inst_per_s"] = args.count / row["seconds"]
        row["mb_per_s"] = nbytes / 1e6 / row["seconds"]
        row["ratio_to_dcmsend"] = reference / row["seconds"]
        print(f"{row['side']:34} {row['seconds']:7.2f} {row['inst_per_s']:8.1f} {row['mb_per_s']:7.1f} {row['ratio_to_dcmsend']:7.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"count": args.count, "bytes": nbytes, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
