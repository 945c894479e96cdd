#!/usr/bin/env python3
"""Transcoding and de-identification benchmark (issue 24): the adapter's `apply_transform` next to
the command-line tool that does the same, in one run on one machine.

Cases: import_bench's small corpus (1000 CT of ~70 KB) and one multi-frame instance of 200 MiB
(import_bench's large instance). For each target (JPEG 2000 lossless, JPEG-LS lossless, RLE,
Explicit VR Little Endian) and for the Basic Profile alone (no transcode):

  adapter  one worker process runs apply_transform over the files (timed after its imports and
           a first, untimed corpus instance); its peak RSS is its VmHWM, next to its RSS before
           the run (the interpreter, pydicom, numpy, the codecs)
  peer     a worker process runs the peer once per file: gdcmconv --j2k (libgdcm-tools),
           dcmcjpls, dcmcrle (DCMTK), dcmconv +te; peak RSS is the largest child's ru_maxrss.
           No offline tool applies PS3.15's Basic Profile, so de-identification has no peer

The Explicit VR Little Endian rows read an implicit VR copy of the same files (the corpus is
explicit VR already: nothing to do). Each output is checked: its transfer syntax, and pixels
equal to the source's (first and last file; first and last frame of the large instance).

    python bench/transcode_bench.py [--quick] [--only j2k,deid] [--count 1000] [--large-mib 200] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "functions"))

from import_bench import log, make_small_corpus, wait_for_quiet, write_large_instance  # noqa: E402

KEY = b"transcode-bench"
# name -> (target transfer syntax, "" for de-identification only; the peer's command, or None)
TARGETS: dict[str, tuple[str, list[str] | None]] = {
    "j2k": ("1.2.840.10008.1.2.4.90", ["gdcmconv", "--j2k"]),
    "jls": ("1.2.840.10008.1.2.4.80", ["dcmcjpls"]),
    "rle": ("1.2.840.10008.1.2.5", ["dcmcrle"]),
    "evrle": ("1.2.840.10008.1.2.1", ["dcmconv", "+te"]),
    "deid": ("", None),
}
IMPLICIT_SOURCE = {"evrle"}  # targets whose source is the implicit VR copy


@dataclass
class Row:
    case: str  # "corpus" or "large"
    target: str
    side: str  # "adapter" or the peer's program
    count: int
    megabytes: float  # source file bytes / 10^6
    seconds: float
    peak_rss: int  # bytes
    base_rss: int = 0  # the adapter worker's RSS before the timed run (0: not measured)
    check: str = ""

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


# ---------------------------------------------------------------------------------------------
# Workers (one process per side and case, so that each peak RSS is that side's alone)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def adapter_worker(target: str, files: list[Path], out: Path, warmup: Path) -> dict:
    """apply_transform over `files`, after one untimed `warmup` instance (codec plugins load on
    first use; a small one, so that the RSS before the run is the process's idle size)."""
    from dicom_adapter.transforms import DeidConfig, Transform, apply_transform

    syntax = TARGETS[target][0]
    transform = Transform(DeidConfig.build(profile="basic")) if target == "deid" else Transform(transfer_syntax=syntax)
    apply_transform(warmup, transform, KEY, out / "warmup.dcm")
    base = _status_bytes("VmRSS")
    started = time.perf_counter()
    for index, path in enumerate(files):
        result = apply_transform(path, transform, KEY, out / f"{index:05d}.dcm")
        if result.skipped or result.output is None:
            raise RuntimeError(f"{path.name}: no copy made ({result.skipped})")
    return {"seconds": time.perf_counter() - started, "peak_rss": _status_bytes("VmHWM"), "base_rss": base}


def peer_worker(target: str, files: list[Path], out: Path, warmup: Path) -> dict:
    """The peer once per file, as a user would run it over a folder."""
    command = TARGETS[target][1]
    assert command is not None
    subprocess.run([*command, str(warmup), str(out / "warmup.dcm")], check=True, capture_output=True)  # as the adapter's
    started = time.perf_counter()
    for index, path in enumerate(files):
        subprocess.run([*command, str(path), str(out / f"{index:05d}.dcm")], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}


def run_worker(side: str, target: str, files: list[Path], warmup: Path, out: Path, timeout: float) -> dict:
    """A worker of this script in a fresh process; its figures (JSON on its last line)."""
    listing = out / "files.txt"
    listing.write_text("\n".join(str(f) for f in files))
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--target", target, "--files", str(listing),
               "--warmup", str(warmup), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{side} worker for {target} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Checks: what the copies hold


def _frames(path: Path) -> int:
    import pydicom

    return int(pydicom.dcmread(path, stop_before_pixels=True).get("NumberOfFrames") or 1)


def check_copy(source: Path, copy: Path, target: str) -> str:
    """'' if `copy` is what `target` asks of `source`, else what is wrong."""
    import numpy as np
    import pydicom
    from pydicom.pixels import pixel_array

    meta = pydicom.dcmread(copy, stop_before_pixels=True)
    syntax = TARGETS[target][0] or str(pydicom.dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    if meta.file_meta.TransferSyntaxUID != syntax:
        return f"{copy.name}: transfer syntax {meta.file_meta.TransferSyntaxUID}, not {syntax}"
    if target == "deid" and (meta.get("PatientName") or meta.get("PatientIdentityRemoved") != "YES"):
        return f"{copy.name}: not de-identified"
    last = _frames(source) - 1
    for index in sorted({0, last}):
        if not np.array_equal(pixel_array(copy, index=index), pixel_array(source, index=index)):
            return f"{copy.name}: frame {index} differs from the source's"
    return ""


def check_outputs(files: list[Path], out: Path, target: str) -> str:
    missing = [i for i in range(len(files)) if not (out / f"{i:05d}.dcm").is_file()]
    if missing:
        return f"FAIL: {len(missing)} copies missing"
    for index in sorted({0, len(files) - 1}):
        problem = check_copy(files[index], out / f"{index:05d}.dcm", target)
        if problem:
            return f"FAIL: {problem}"
    return "OK"


# ---------------------------------------------------------------------------------------------
# The run


def implicit_copies(files: list[Path], folder: Path) -> list[Path]:
    """The same instances in Implicit VR Little Endian (the source of the evrle rows)."""
    import pydicom
    from pydicom.uid import ImplicitVRLittleEndian

    folder.mkdir(parents=True)
    copies = []
    for path in files:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        copy = folder / path.name
        ds.save_as(copy, enforce_file_format=True)
        copies.append(copy)
    return copies


def peer_available(target: str) -> bool:
    command = TARGETS[target][1]
    return command is not None and shutil.which(command[0]) is not None


def measure(case: str, target: str, files: list[Path], warmup: Path, work: Path, args: argparse.Namespace) -> list[Row]:
    """The adapter's row and, where there is one, the peer's, over the same `files`."""
    sides = ["adapter"] + ([TARGETS[target][1][0]] if peer_available(target) else [])  # type: ignore[index]
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    rows = []
    for side in sides:
        out = work / "out" / side
        out.mkdir(parents=True, exist_ok=True)
        if args.quiet_wait:
            wait_for_quiet(args.quiet_wait, args.quiet_max)
        os.sync()
        got = run_worker("adapter" if side == "adapter" else "peer", target, files, warmup, out, args.timeout)
        rows.append(Row(case, target, side, len(files), megabytes, got["seconds"], got["peak_rss"], got.get("base_rss", 0), check_outputs(files, out, target)))
        log(_format(rows[-1], rows[0] if side != "adapter" else None))
    if len(sides) == 1 and TARGETS[target][1]:
        log(f"  ({TARGETS[target][1][0]} not installed: no peer row)")
    return rows


def _format(row: Row, adapter: Row | None = None) -> str:
    ratio = f"{adapter.seconds / row.seconds:7.2f}" if adapter else " " * 7
    base = f"{row.base_rss / 1e6:8.0f}" if row.base_rss else " " * 8
    return (f"{row.case:7} {row.target:6} {row.side:9} {row.count:6} {row.seconds:9.2f} {row.per_second:8.2f} "
            f"{row.megabytes / row.seconds:7.1f} {row.peak_rss / 1e6:8.0f} {base} {ratio}  {row.check}")


HEADER = (f"{'case':7} {'target':6} {'side':9} {'inst':>6} {'seconds':>9} {'inst/s':>8} {'MB/s':>7} {'peak MB':>8} "
          f"{'base MB':>8} {'ratio':>7}  check")


def run(args: argparse.Namespace, work: Path) -> list[Row]:
    targets = [t for t in args.only.split(",") if t]
    log(f"building the corpus ({args.count} CT) and a {args.large_mib} MiB multi-frame instance in {work}")
    corpus = make_small_corpus(work / "corpus", args.count).files
    large = work / "large" / "large.dcm"
    large.parent.mkdir()
    write_large_instance(large, frames=args.large_mib * 2)  # 512 x 512 x 16 bit: 0.5 MiB a frame
    sources = {("corpus", False): corpus, ("large", False): [large]}
    if IMPLICIT_SOURCE & set(targets):
        sources[("corpus", True)] = implicit_copies(corpus, work / "corpus-implicit")
        sources[("large", True)] = implicit_copies([large], work / "large-implicit")
    log(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    log(HEADER)
    rows = []
    for case in ("corpus", "large"):
        for target in targets:
            implicit = target in IMPLICIT_SOURCE
            rows += measure(case, target, sources[(case, implicit)], sources[("corpus", implicit)][0], work, args)
    log(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    log("ratio: the adapter's seconds / the peer's (> 1: the peer is faster); peak MB: worker VmHWM (adapter) or largest child (peer)")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="transcoding and de-identification benchmark (see bench/README.md)")
    ap.add_argument("--quick", action="store_true", help="20 instances and a 4 MiB multi-frame one, for a smoke run")
    ap.add_argument("--only", default=",".join(TARGETS), help=f"targets out of {','.join(TARGETS)}")
    ap.add_argument("--count", type=int, help="corpus instances (default 1000; quick 20)")
    ap.add_argument("--large-mib", type=int, help="the multi-frame instance's pixel data in MiB (default 200; quick 4)")
    ap.add_argument("--timeout", type=float, default=1800, help="per worker, in seconds")
    ap.add_argument("--quiet-wait", type=float, default=0, metavar="S", help="before each run wait up to S s for an idle machine")
    ap.add_argument("--quiet-max", type=float, default=10, metavar="PCT", help="'idle': others use < PCT %% of a core")
    ap.add_argument("--workdir", help="parent for the temp dir (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (corpus, copies)")
    ap.add_argument("--json", metavar="OUT", help="write the rows as JSON")
    ap.add_argument("--worker", choices=("adapter", "peer"), help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        files = [Path(line) for line in Path(args.files).read_text().splitlines()]
        work = adapter_worker if args.worker == "adapter" else peer_worker
        print(json.dumps(work(args.target, files, Path(args.out), Path(args.warmup))))
        return 0
    unknown = set(args.only.split(",")) - set(TARGETS)
    if unknown:
        ap.error(f"unknown target(s) {sorted(unknown)}")
    args.count = args.count or (20 if args.quick else 1000)
    args.large_mib = args.large_mib or (4 if args.quick else 200)
    work = Path(tempfile.mkdtemp(prefix="transcode-bench-", dir=args.workdir))
    try:
        rows = run(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    failed = [r for r in rows if r.check != "OK"]
    for row in failed:
        log(f"FAILED CHECK: {row.case} {row.target} {row.side}: {row.check}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
