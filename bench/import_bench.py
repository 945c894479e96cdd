#!/usr/bin/env python3
"""Import benchmark: DCMTK storescu into storescp, the edge, Orthanc and the whole adapter.

One run on one machine, everything on loopback (see bench/README.md):

  (a)  /usr/bin/storescp writing to disk (+B bit-preserving is the reference; default mode too)
  (b)  the edge (`dicom-adapter local`) with its spool: ack throughput, uploads held back
  (c)  Orthanc's own DIMSE port
  (d)  the adapter end to end: first byte sent until Orthanc counts the last instance
  (e)  STOW-RS straight into Orthanc (N workers), the reference for (d)
  bare the bare pynetdicom receiver of bench/bare_receiver.py (streams + fsyncs, answers 0x0000)

Scenarios: small-1 (1000 CT of ~70 KB, one association), small-4 (the same split over 4 parallel
associations), nagle (the first 200 of them, one association, the sender leaves Nagle on),
large (5 instances of 200 MiB, one association).

    python bench/import_bench.py [--quick] [--only small-1,large] [--json out.json]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import http.client
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STORESCU = "/usr/bin/storescu"  # absolute: pynetdicom puts its own storescp/storescu on PATH
STORESCP = "/usr/bin/storescp"
ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
HERE = Path(__file__).resolve().parent
BARE_RECEIVER = HERE / "bare_receiver.py"
LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SCENARIOS = ("small-1", "small-4", "nagle", "large")


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    name: str
    files: list[Path]
    assoc_args: list[list[Path]]  # per association: the dirs (+sd) storescu sends

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def associations(self) -> int:
        return len(self.assoc_args)

    @property
    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def as_one_association(self) -> "Corpus":
        return Corpus(self.name, self.files, [[d for args in self.assoc_args for d in args]])


def _base_dataset(sop_class: str, study_uid: str, series_uid: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = "Bench^Synthetic"
    ds.PatientID = "BENCH-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = time.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time.strftime("%H%M%S")
    ds.AccessionNumber = "BENCH1"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "dicom-adapter bench"
    ds.InstitutionName = "Loopback"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def make_small_corpus(root: Path, count: int, shards: int = 4, side: int = 186) -> Corpus:
    """`count` single-frame CT instances of about 70 KB (side x side x 16 bit), fresh UIDs."""
    import numpy as np
    from pydicom.uid import CTImageStorage, generate_uid

    root.mkdir(parents=True)
    rng = np.random.default_rng()
    base = rng.integers(0, 1500, size=(side, side), dtype=np.uint16)
    study = generate_uid()
    study_date, study_time = time.strftime("%Y%m%d"), time.strftime("%H%M%S")  # one per study
    series_size = 250
    series = [generate_uid() for _ in range((count + series_size - 1) // series_size)]
    dirs = [root / f"shard{i}" for i in range(shards)]
    for d in dirs:
        d.mkdir()
    out: list[list[Path]] = [[] for _ in range(shards)]
    for i in range(count):
        ds = _base_dataset(str(CTImageStorage), study, series[i // series_size])
        ds.StudyDate, ds.StudyTime = study_date, study_time
        ds.Modality = "CT"
        ds.SeriesNumber = i // series_size + 1
        ds.InstanceNumber = i % series_size + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-120.0, -120.0, -0.5 * i]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = 0.5
        ds.KVP = 120
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.Rows = ds.Columns = side
        ds.PixelData = (base + (i % 256)).tobytes()
        shard = i % shards
        path = dirs[shard] / f"ct{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out[shard].append(path)
    return Corpus("small", [f for shard in out for f in shard], [[d] for d in dirs])


def write_large_instance(path: Path, frames: int, rows: int = 512, cols: int = 512) -> None:
    """Multi-frame 16-bit secondary capture: header via pydicom, Pixel Data streamed after it."""
    from pydicom.uid import (
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        generate_uid,
    )

    ds = _base_dataset(
        str(MultiFrameGrayscaleWordSecondaryCaptureImageStorage), generate_uid(), generate_uid()
    )
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = rows, cols
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.FrameTime = 40.0
    frame_bytes = rows * cols * 2
    nbytes = frames * frame_bytes
    chunk = bytearray(os.urandom(4 << 20))
    with open(path, "wb") as fh:
        ds.save_as(fh, enforce_file_format=True)  # everything but (7FE0,0010)
        # (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved bytes, 32-bit length
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, nbytes))
        left = nbytes
        n = 0
        while left:
            struct.pack_into("<Q", chunk, (n * 8) % len(chunk), n)  # keep chunks distinct
            piece = memoryview(chunk)[: min(left, len(chunk))]
            fh.write(piece)
            left -= len(piece)
            n += 1


def make_large_corpus(root: Path, count: int, frames: int) -> Corpus:
    root.mkdir(parents=True)
    d = root / "shard0"
    d.mkdir()
    files = []
    for i in range(count):
        p = d / f"large{i}.dcm"
        write_large_instance(p, frames)
        files.append(p)
    return Corpus("large", files, [[d]])


def subset(corpus: Corpus, n: int, root: Path) -> Corpus:
    """The first n files of a corpus as a one-shard corpus (hard links in a dir of their own)."""
    d = root / "shard0"
    d.mkdir(parents=True)
    files = []
    for f in sorted(corpus.files)[:n]:
        link = d / f.name
        os.link(f, link)
        files.append(link)
    return Corpus(f"{corpus.name}[:{n}]", files, [[d]])


# --------------------------------------------------------------------------------------------
# Processes: each in its own process group, always torn down
# --------------------------------------------------------------------------------------------

_LIVE: dict[int, "Proc"] = {}


class Proc:
    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own session => own process group, pgid == pid
        )
        self.pgid = self.p.pid
        _LIVE[self.pgid] = self

    def poll(self) -> int | None:
        return self.p.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.p.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the group, wait, then SIGKILL the group. Returns the leader's exit code."""
        rc = self.p.poll()
        try:
            os.killpg(self.pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if rc is None:
            try:
                rc = self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                rc = None
                if self.name == "dicom-adapter":  # where each of its processes is stuck, into its log
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.pgid, signal.SIGUSR1)
                    time.sleep(1)
                    # The run's folder is deleted at the end: keep the log (and its stacks).
                    kept = Path(tempfile.gettempdir()) / f"dicom-adapter-stuck-{self.pgid}.log"
                    with contextlib.suppress(OSError):
                        shutil.copyfile(self.log_path, kept)
                    log(f"  {self.name} did not exit within {timeout:.0f}s of SIGTERM; its log, with each thread's stack: {kept}")
        try:  # leftovers of the group (forked children), or a leader that ignored SIGTERM
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.p.poll() is None:
            self.p.wait(10)
        _LIVE.pop(self.pgid, None)
        self._log.close()
        return rc

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("      | " + line for line in lines[-n:])


def _cleanup_all() -> None:
    for proc in list(_LIVE.values()):
        try:
            proc.stop(timeout=5)
        except Exception:  # noqa: BLE001
            pass


atexit.register(_cleanup_all)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def port_listening(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            continue
    return False


def wait_until(pred, timeout: float, proc: Proc | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.poll()}) before {what}:\n{proc.tail()}")
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timeout waiting for {what}" + (f":\n{proc.tail()}" if proc else ""))


def log_says_ready(path: Path) -> bool:
    try:
        return "ready" in path.read_text(errors="replace").lower()
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Peak RSS and CPU of a process group, sampled from /proc
# --------------------------------------------------------------------------------------------


def _group_sample(pgids: set[int]) -> tuple[int, int]:
    """(sum of VmRSS in kB, sum of utime+stime+cutime+cstime in ticks) over the groups."""
    rss = cpu = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) not in pgids:  # field 5 (pgrp), counted from field 3 (state)
                continue
            cpu += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
            with open(f"/proc/{entry}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                        break
        except (OSError, ValueError, IndexError):
            continue
    return rss, cpu


def _all_ticks() -> dict[int, tuple[int, int, int, int]]:
    """pid -> (pgrp, ppid, utime+stime, cutime+cstime) for every process now."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            f = stat[stat.rindex(")") + 2 :].split()
            out[int(entry)] = (int(f[2]), int(f[1]), int(f[11]) + int(f[12]),
                               int(f[13]) + int(f[14]))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _others_ticks(before: dict, after: dict, ours: set[int]) -> int:
    """CPU ticks used between two snapshots by user processes outside our process groups.

    Own CPU of processes alive at the end; reaped children only for processes born in between
    (an older parent's cutime would bring in the whole life of a child that ended now)."""
    me = os.getpid()
    total = 0
    for pid, (pgrp, ppid, own, kids) in after.items():
        if pgrp in ours or pid == me or pid == 2 or ppid == 2:  # ours, this script, kthreads
            continue
        prev = before.get(pid)
        total += own - prev[2] if prev else own + kids
    return max(0, total)


def wait_for_quiet(max_wait: float, max_pct: float) -> None:
    """Wait (up to max_wait s) until other processes use < max_pct % of a core over 1 s."""
    deadline = time.monotonic() + max_wait
    said = False
    while True:
        a = _all_ticks()
        time.sleep(1.0)
        pct = _others_ticks(a, _all_ticks(), set(_LIVE)) / CLK_TCK * 100
        if pct < max_pct or time.monotonic() > deadline:
            if said:
                log(f"    (machine {'quiet' if pct < max_pct else 'still busy'}: others {pct:.0f}%)")
            return
        if not said:
            log(f"    waiting for a quiet machine (others use {pct:.0f}% of a core)")
            said = True


class Monitor:
    """Samples the receiver's process group(s) every `interval` seconds while a run lasts.

    Also accounts the CPU that unrelated user processes burn during the run (noise)."""

    def __init__(self, pgids: list[int], interval: float = 0.05, helpers: list[int] = ()):
        self.pgids = set(pgids)
        self.helpers = set(helpers)  # not the receiver, but part of the run (Orthanc behind (d))
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self.t0 = time.monotonic()
        self.snap0 = _all_ticks()
        _, self.cpu0 = _group_sample(self.pgids)
        self.cpu1 = self.cpu0
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, cpu = _group_sample(self.pgids)
            self.peak_kb = max(self.peak_kb, rss)
            self.cpu1 = max(self.cpu1, cpu)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        rss, cpu = _group_sample(self.pgids)
        self.peak_kb = max(self.peak_kb, rss)
        self.cpu1 = max(self.cpu1, cpu)
        self._stop.set()
        self._t.join()
        wall = max(1e-6, time.monotonic() - self.t0)
        ours = self.pgids | self.helpers | set(_LIVE)
        other = _others_ticks(self.snap0, _all_ticks(), ours)
        self.other_pct = max(0.0, other / CLK_TCK / wall * 100)

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024.0

    @property
    def cpu_s(self) -> float:
        return (self.cpu1 - self.cpu0) / CLK_TCK


# --------------------------------------------------------------------------------------------
# Orthanc
# --------------------------------------------------------------------------------------------


def http_json(port: int, method: str, path: str, timeout: float = 10.0):
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}")
        return json.loads(body)
    finally:
        conn.close()


class Orthanc:
    AET = "ORTHANC"

    def __init__(self, workdir: Path, name: str = "orthanc", nodelay: bool = True,
                 extra_config: dict | None = None, chroot: Path | None = None):
        """`extra_config` is merged last (e.g. DicomModalities for a C-MOVE destination).
        `chroot`: run the Orthanc installed there (query_bench.py --store orthanc-1.12), which
        must see `workdir` at the same path (tests/support/newer_orthanc.py shares it)."""
        self.dir = workdir / name
        (self.dir / "storage").mkdir(parents=True)
        self.http_port = free_port()
        self.dicom_port = free_port()
        config = {
            "Name": "dicom-adapter-bench",
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "storage"),
            "TemporaryDirectory": str(self.dir),
            "StorageCompression": False,
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.AET,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpCompressionEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "SaveJobs": False,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "UnknownSopClassAccepted": True,
            "SyncStorageArea": True,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        }
        config.update(extra_config or {})
        cfg = self.dir / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=1))
        # Orthanc's DIMSE is DCMTK: without TCP_NODELAY=1 it answers ~20 C-STOREs/s on Linux
        env = dcmtk_env(nodelay)
        argv = [ORTHANC, str(cfg)] if chroot is None else ["chroot", str(chroot), ORTHANC, str(cfg)]
        self.proc = Proc("Orthanc", argv, self.dir / "orthanc.log", env=env)
        wait_until(self._up, 60, self.proc, "Orthanc GET /system")

    def _up(self) -> bool:
        try:
            http_json(self.http_port, "GET", "/system", timeout=2)
            return True
        except (OSError, RuntimeError, ValueError):
            return False

    @property
    def dicomweb(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}/dicom-web"

    def count(self) -> int:
        return int(http_json(self.http_port, "GET", "/statistics")["CountInstances"])

    def stop(self) -> None:
        self.proc.stop(timeout=30)


# --------------------------------------------------------------------------------------------
# Senders
# --------------------------------------------------------------------------------------------


def dcmtk_env(nodelay: bool) -> dict:
    """Environment for a DCMTK program: TCP_NODELAY=1, or unset (DCMTK then leaves Nagle on)."""
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def start_storescu(corpus: Corpus, port: int, aec: str, nodelay: bool, logdir: Path) -> list[Proc]:
    procs = []
    for i, paths in enumerate(corpus.assoc_args):
        argv = [STORESCU, "-aet", "BENCHSCU", "-aec", aec, "-R", "+sd", LOOPBACK, str(port),
                *map(str, paths)]
        procs.append(Proc(f"storescu#{i}", argv, logdir / f"storescu{i}.log", dcmtk_env(nodelay)))
    return procs


def finish_storescu(procs: list[Proc], timeout: float) -> list[str]:
    """Wait for the senders; returns problems (non-zero exits, error lines)."""
    problems = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            rc = p.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            rc = None
        if rc is None:
            problems.append(f"{p.name} timed out")
            p.stop(timeout=2)
            continue
        p.stop(timeout=1)
        errors = [
            line for line in p.log_path.read_text(errors="replace").splitlines()
            if line.startswith(("E:", "F:"))
        ]
        if rc != 0 or errors:
            problems.append(f"{p.name} rc={rc} {'; '.join(errors[:3])}")
    return problems


def _stow_failed(body: bytes) -> bool:
    """True when a STOW-RS response lists a failed instance (00081198 FailedSOPSequence)."""
    try:
        return bool(json.loads(body).get("00081198", {}).get("Value"))
    except (ValueError, AttributeError):
        return True


def stow_direct(corpus: Corpus, orthanc: Orthanc, workers: int, per_request: int = 1) -> list[str]:
    """STOW-RS the corpus, `per_request` instances per request, with `workers` threads and
    keep-alive connections: a client that does nothing else (the files streamed as they are)."""
    batches = [corpus.files[i : i + per_request] for i in range(0, len(corpus.files), per_request)]
    lock = threading.Lock()
    nxt = [0]
    problems: list[str] = []
    boundary = "dicomadapterbenchboundary"
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    crlf = b"\r\n"  # after each part's bytes
    tail = f"--{boundary}--\r\n".encode()

    def worker() -> None:
        conn = http.client.HTTPConnection(LOOPBACK, orthanc.http_port, timeout=600)
        while True:
            with lock:
                if nxt[0] >= len(batches):
                    break
                batch = batches[nxt[0]]
                nxt[0] += 1
            what = batch[0].name if len(batch) == 1 else f"{batch[0].name} (+{len(batch) - 1})"
            try:
                conn.putrequest("POST", "/dicom-web/studies")
                conn.putheader("Content-Type", ctype)
                conn.putheader("Accept", "application/dicom+json")
                conn.putheader("Content-Length", str(sum(len(head) + path.stat().st_size + len(crlf) for path in batch) + len(tail)))
                conn.endheaders()
                for path in batch:
                    conn.send(head)
                    with open(path, "rb") as fh:
                        while block := fh.read(1 << 20):
                            conn.send(block)
                    conn.send(crlf)
                conn.send(tail)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or _stow_failed(body):
                    with lock:
                        problems.append(f"STOW {what}: HTTP {resp.status} {body[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    problems.append(f"STOW {what}: {exc!r}")
                conn.close()
                conn = http.client.HTTPConnection(LOOPBACK, orthanc.http_port, timeout=600)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return problems


# --------------------------------------------------------------------------------------------
# Receivers and one measured run
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    receiver: str
    instances: int
    nbytes: int
    seconds: float | None = None
    peak_rss_mb: float | None = None
    cpu_s: float | None = None
    other_cpu_pct: float | None = None  # % of one core used by unrelated processes (noise)
    received: int | None = None
    ok: bool = True
    skipped: bool = False
    ref: bool = False  # the scenario's (a)
    notes: list[str] = field(default_factory=list)
    ratio_a: float | None = None

    @property
    def inst_s(self) -> float | None:
        return self.instances / self.seconds if self.seconds else None

    @property
    def mb_s(self) -> float | None:
        return self.nbytes / 1e6 / self.seconds if self.seconds else None

    def as_json(self) -> dict:
        d = asdict(self)
        d.update(inst_s=self.inst_s, mb_s=self.mb_s)
        return d


def release_space(root: Path) -> None:
    """Free a finished run's disk space now, but delete its files only when the bench ends.

    On ext4 without a journal (this VM's root file system), the kernel passes over inodes freed
    in the last minute (six while their inode table is not written back) when it allocates new
    ones, checking each in turn. Deleting one run's thousands of files therefore made every
    file the next run created cost more: Orthanc's DIMSE intake fell from 922 to 630 inst/s
    over five repeats, and (d) measured 350 inst/s right after (c)'s runs against 455 on its
    own. Truncating frees the blocks and keeps the inodes."""
    for folder, _subfolders, files in os.walk(root):
        for name in files:
            try:
                os.truncate(os.path.join(folder, name), 0)
            except OSError:
                pass


def count_files(root: Path) -> int:
    n = 0
    for _dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        n += sum(1 for f in filenames if not f.startswith("."))
    return n


class BlackHole:
    """An HTTP 'server' that accepts connections and never answers: uploads hang, cost nothing.

    Used as the edge's --dicomweb_address when only the ack path is measured (b)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            c.close()


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.work = workdir
        self.rows: list[Row] = []
        self.adapter = find_adapter(args.adapter_cmd)
        self._n = 0

    def _rundir(self, label: str) -> Path:
        self._n += 1
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
        d = self.work / "runs" / f"{self._n:02d}-{safe}"
        d.mkdir(parents=True)
        return d

    # -- one run ------------------------------------------------------------------------------

    def run(self, scenario: str, receiver: str, corpus: Corpus, *, nodelay: bool = True) -> Row:
        row = Row(scenario, receiver, corpus.count, corpus.nbytes)
        rd = self._rundir(f"{scenario}-{receiver}")
        # "plain edge", "plain e2e ...": the adapter with its fast path off (plain pynetdicom)
        plain = receiver.startswith("plain ")
        kind = receiver.removeprefix("plain ").split()[0]
        if kind in ("edge", "e2e") and not self.adapter:
            row.ok, row.skipped = False, True
            row.notes.append("dicom-adapter not installed")
            self.rows.append(row)
            log(f"  {receiver:<22} SKIPPED (dicom-adapter command not found)")
            return row
        log(f"  {receiver:<22} ...")
        started: list[Proc] = []
        orthanc: Orthanc | None = None
        hole: BlackHole | None = None
        mon: Monitor | None = None
        timeout = self.args.timeout
        try:
            out = rd / "out"
            out.mkdir()
            aec, port = "ANY-SCP", free_port()
            watch: list[int] = []
            if kind == "storescp":
                argv = [STORESCP, "-aet", "STORESCP", "-od", str(out), "-dhl"]
                if "+B" in receiver:
                    argv.append("+B")
                if "--fork" in receiver:
                    argv.append("--fork")  # storescp serves associations one by one otherwise
                argv.append(str(port))
                p = Proc("storescp", argv, rd / "storescp.log", dcmtk_env("Nagle" not in receiver))
                started.append(p)
                wait_until(lambda: port_listening(port), 30, p, "storescp listening")
                aec, watch = "STORESCP", [p.pgid]
            elif kind == "bare":
                argv = [sys.executable, str(BARE_RECEIVER), "--port", str(port), "--dir", str(out),
                        "--aet", "BARE"]
                if "quickack" in receiver:
                    argv.append("--quickack")
                p = Proc("bare_receiver", argv, rd / "bare.log")
                started.append(p)
                wait_until(lambda: log_says_ready(p.log_path) and port_listening(port), 60, p,
                           "bare receiver ready")
                aec, watch = "BARE", [p.pgid]
            elif kind == "orthanc":
                orthanc = Orthanc(rd, nodelay="Nagle" not in receiver)
                aec, port, watch = Orthanc.AET, orthanc.dicom_port, [orthanc.proc.pgid]
            elif kind in ("edge", "e2e"):
                if kind == "e2e":
                    orthanc = Orthanc(rd)
                    url = orthanc.dicomweb
                else:
                    hole = BlackHole()
                    url = f"http://{LOOPBACK}:{hole.port}/dicom-web"
                cmd, extra = self.adapter
                argv = [*cmd, "local", *extra, "--dimse_aet", "ADAPTER", "--dimse_port", str(port),
                        "--dicomweb_address", url, "--spool_dir", str(out),
                        *(["--dimse_fast_path", "off"] if plain else []), *self.args.adapter_arg]
                env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
                p = Proc("dicom-adapter", argv, rd / "adapter.log", env)
                started.append(p)
                wait_until(lambda: log_says_ready(p.log_path) and port_listening(port), 60, p,
                           "dicom-adapter ready")
                aec, watch = "ADAPTER", [p.pgid]
            elif kind == "stow":
                orthanc = Orthanc(rd)
                watch = [orthanc.proc.pgid]
            else:
                raise ValueError(receiver)

            os.sync()  # the previous run's dirty pages must not be written back during this one
            if self.args.quiet_wait:
                wait_for_quiet(self.args.quiet_wait, self.args.quiet_max)
            mon = Monitor(watch, helpers=[orthanc.proc.pgid] if kind == "e2e" and orthanc else [])
            t0 = time.perf_counter()
            if kind == "stow":
                workers = int(receiver.split("x")[-1])
                problems = stow_direct(corpus, orthanc, workers)  # type: ignore[arg-type]
                row.seconds = time.perf_counter() - t0
            else:
                senders = start_storescu(corpus, port, aec, nodelay, rd)
                started.extend(senders)
                if kind == "e2e":
                    problems, acked, reached = self._wait_e2e(senders, orthanc, corpus.count, t0)
                    row.notes.append(f"storescu done after {acked:.2f}s")
                    if reached:
                        row.seconds = time.perf_counter() - t0
                else:
                    problems = finish_storescu(senders, timeout)
                    row.seconds = time.perf_counter() - t0
            mon.stop()
            row.peak_rss_mb = mon.peak_mb
            row.cpu_s = mon.cpu_s
            row.other_cpu_pct = mon.other_pct
            if problems:
                row.ok = False
                row.notes.extend(problems[:5])

            # what arrived
            if kind in ("orthanc", "stow", "e2e"):
                row.received = orthanc.count()  # type: ignore[union-attr]
            elif kind == "edge":
                row.received = count_files(out / "queue")  # uploads held back: every ack is a queue entry
                row.notes.append("received = entries in the spool's queue")
            else:
                row.received = count_files(out)
            if row.received != corpus.count:
                row.ok = False
                row.notes.append(f"received {row.received} of {corpus.count}")
            if kind == "e2e" and row.seconds is None:
                row.notes.append(f"timed out after {timeout:.0f}s")
        except Exception as exc:  # noqa: BLE001
            row.ok = False
            row.seconds = None
            row.notes.append(f"error: {exc}")
        finally:
            if mon is not None and not mon._stop.is_set():
                mon.stop()
            if hole is not None:
                hole.close()  # the edge's held uploads fail now, so its drain does not hang
            for p in reversed(started):
                rc = p.stop(timeout=30)
                if p.name == "dicom-adapter" and rc not in (0, None):
                    row.notes.append(f"dicom-adapter exited {rc} on SIGTERM")
                elif p.name == "dicom-adapter" and rc is None:
                    row.notes.append("dicom-adapter did not exit within 30s of SIGTERM")
            if orthanc is not None:
                orthanc.stop()
            if not row.ok:
                for p in started + ([orthanc.proc] if orthanc else []):
                    t = p.tail(8)
                    if t:
                        row.notes.append(f"{p.name} log tail:\n{t}")
            if not self.args.keep:
                release_space(rd)
        self.rows.append(row)
        log("    " + fmt_row(row, with_scenario=False))
        return row

    def _wait_e2e(self, senders: list[Proc], orthanc: Orthanc | None, n: int, t0: float):
        assert orthanc is not None
        deadline = t0 + self.args.timeout
        acked: float | None = None
        problems: list[str] = []
        reached = False
        last, last_change = -1, time.perf_counter()
        while time.perf_counter() < deadline:
            now = time.perf_counter()
            if acked is None and all(p.poll() is not None for p in senders):
                acked = now - t0
                problems = finish_storescu(senders, 1)
            try:
                count = orthanc.count()
            except (OSError, RuntimeError, ValueError):
                count = last
            if count >= n:
                reached = True
                break
            if count != last:
                last, last_change = count, now
            elif acked is not None and now - last_change > self.args.stall:
                problems.append(f"Orthanc stuck at {count} of {n} for {self.args.stall:.0f}s")
                break
            # Once the senders are done only the tail is left: ask often, so that the time
            # measured is not up to 0.1 s late (5 % of a 2 s run); before, ask rarely, since
            # each question costs Orthanc CPU that the run competes for.
            time.sleep(0.1 if acked is None else 0.01)
        if acked is None:
            problems = finish_storescu(senders, 5)
            acked = time.perf_counter() - t0
        return problems, acked, reached

    # -- scenarios ----------------------------------------------------------------------------

    def scenario(self, name: str, corpus: Corpus, receivers: list[str], nodelay: bool = True):
        mb = corpus.nbytes / 1e6
        log(f"\n== {name}: {corpus.count} instances, {mb:.1f} MB, {corpus.associations} association(s), "
            f"sender TCP_NODELAY={'1' if nodelay else 'unset (Nagle on)'}, "
            f"loadavg {os.getloadavg()[0]:.2f}")
        rows = []
        for r in receivers:
            tries = [self.run(name, r, corpus, nodelay=nodelay)
                     for _ in range(1 if r.removeprefix("plain ").split()[0] in ("edge", "e2e") and not self.adapter
                                    else self.args.repeat)]
            for t in tries:
                self.rows.remove(t)
            best = max(tries, key=lambda t: (t.ok, t.inst_s or 0.0))
            if len(tries) > 1:
                best.notes.append("best of " + "/".join(
                    f"{t.inst_s:.1f}" if t.inst_s else "-" for t in tries) + " inst/s")
            self.rows.append(best)
            rows.append(best)
        ref = next((r for r in rows if r.receiver.startswith("storescp +B")), None)
        if ref is not None:
            ref.ref = True
            for r in rows:
                if r.inst_s and ref.inst_s:
                    r.ratio_a = r.inst_s / ref.inst_s


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

HEADER = (f"{'scenario':<9} {'receiver':<22} {'inst':>5} {'seconds':>8} {'inst/s':>8} {'MB/s':>8} "
          f"{'ratio(a)':>8} {'peakRSS MB':>10} {'CPU ms/inst':>11} {'noise%':>6}")


def _f(v, spec: str, width: int) -> str:
    return f"{v:{width}{spec}}" if v is not None else f"{'-':>{width}}"


def fmt_row(r: Row, with_scenario: bool = True) -> str:
    cpu = r.cpu_s * 1000 / r.instances if r.cpu_s is not None and r.seconds else None
    s = (f"{r.receiver:<22} {r.instances:>5} {_f(r.seconds, '.2f', 8)} {_f(r.inst_s, '.1f', 8)} "
         f"{_f(r.mb_s, '.1f', 8)} {_f(r.ratio_a, '.2f', 8)} {_f(r.peak_rss_mb, '.0f', 10)} "
         f"{_f(cpu, '.2f', 11)} {_f(r.other_cpu_pct, '.0f', 6)}")
    if with_scenario:
        s = f"{r.scenario:<9} " + s
    flags = ["SKIPPED"] if r.skipped else ([] if r.ok else ["NOT OK"])
    short = [n for n in r.notes if "\n" not in n]
    if flags or short:
        s += "  [" + "; ".join(flags + short) + "]"
    return s


def find(rows: list[Row], scenario: str, prefix: str) -> Row | None:
    for r in rows:
        if r.scenario == scenario and r.receiver.startswith(prefix):
            return r
    return None


def time_durable_commits(folder: Path, size: int, count: int = 500) -> float:
    """Seconds per durable commit on `folder`'s disk, made the way the edge's spool makes one
    before each ack (write the data set, fsync it, rename it into the queue, fsync the queue
    folder), the entries deleted behind it as the uploader does. Every ack waits for it; a
    receiver that does not fsync (storescp) does not: so it bounds the edge's ratio to storescp."""
    incoming, queue = folder / "incoming", folder / "queue"
    incoming.mkdir(parents=True)
    queue.mkdir()
    data = os.urandom(size)
    queue_fd = os.open(queue, os.O_RDONLY)
    try:
        started = time.perf_counter()
        for i in range(count):
            with open(incoming / f"{i}.part", "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(incoming / f"{i}.part", queue / f"{i}.dcm")
            os.fsync(queue_fd)
            if i >= 16:
                os.unlink(queue / f"{i - 16}.dcm")
        return (time.perf_counter() - started) / count
    finally:
        os.close(queue_fd)
        shutil.rmtree(folder, ignore_errors=True)


def checks(rows: list[Row], commit_s: float | None = None) -> list[dict]:
    out = []

    def check(name: str, num: Row | None, den: Row | None, target: float, metric: str = "inst_s",
              info: bool = False) -> None:
        a = getattr(num, metric) if num and num.ok else None
        b = getattr(den, metric) if den and den.ok else None
        if num is None or den is None:
            return  # scenario not run
        if a is None or b is None:
            status, ratio = "SKIP", None
        else:
            ratio = a / b
            status = ("INFO" if info else ("PASS" if ratio >= target else "FAIL"))
        out.append(dict(check=name, target=target, ratio=ratio, status=status))

    check("(b) edge >= 0.9 x bare pynetdicom (small, 1 assoc)",
          find(rows, "small-1", "edge"), find(rows, "small-1", "bare"), 0.9)
    check("(b) edge vs (a) storescp +B (small, 1 assoc)",
          find(rows, "small-1", "edge"), find(rows, "small-1", "storescp +B"), 0.0, info=True)
    for sc in ("small-1", "small-4", "large"):
        check(f"(d) adapter e2e >= 0.5 x (c) Orthanc DIMSE ({sc})",
              find(rows, sc, "e2e"), find(rows, sc, "orthanc"), 0.5, info=(sc == "large"))
    check("(d) adapter e2e vs (e) STOW direct x4 (small)",
          find(rows, "small-4", "e2e"), find(rows, "small-4", "stow"), 0.0, info=True)
    storescp = find(rows, "small-1", "storescp +B")
    if commit_s is not None and storescp is not None and storescp.ok:
        # An edge whose Python cost nothing: storescp's whole exchange per instance, plus the
        # durable commit every ack waits for.
        exchange_s = 1 / storescp.inst_s
        out.append(dict(check="(b) ceiling: storescp +B's exchange + one durable commit per ack, vs storescp +B",
                        target=0.0, ratio=exchange_s / (exchange_s + commit_s), status="INFO"))
    check("(b) edge: 4 associations >= 1.3 x one",
          find(rows, "small-4", "edge"), find(rows, "small-1", "edge"), 1.3)
    check("(d) e2e: 4 associations vs one",
          find(rows, "small-4", "e2e"), find(rows, "small-1", "e2e"), 0.0, info=True)
    check("(b) edge large >= 0.15 x storescp +B MB/s",
          find(rows, "large", "edge"), find(rows, "large", "storescp +B"), 0.15, metric="mb_s")
    edge_large = find(rows, "large", "edge")
    if edge_large is not None:
        rss = edge_large.peak_rss_mb if edge_large.ok else None
        out.append(dict(check="(b) edge large peak RSS < 200 MB", target=200.0, ratio=rss,
                        status="SKIP" if rss is None else ("PASS" if rss < 200 else "FAIL")))
    # Issue 23: the same floors with the fast path on and off (plain pynetdicom).
    for edge, e2e, what in (("edge", "e2e", "fast path on"), ("plain edge", "plain e2e", "fast path off")):
        check(f"(b) {what}: acks >= 0.36 x storescp +B (small, 1 assoc; goal 0.5)",
              find(rows, "small-1", edge), find(rows, "small-1", "storescp +B"), 0.36)
        check(f"(d) {what}: e2e >= 0.85 x (c) Orthanc DIMSE (small, 1 assoc)",
              find(rows, "small-1", e2e), find(rows, "small-1", "orthanc"), 0.85)
        check(f"(b) {what}: 4 associations >= 1.3 x one",
              find(rows, "small-4", edge), find(rows, "small-1", edge), 1.3)
    check("(b) edge, Nagle-on sender: vs bare pynetdicom",
          find(rows, "nagle", "edge"), find(rows, "nagle", "bare pynetdicom"), 0.0, info=True)
    check("(b) edge, Nagle-on sender: vs bare +quickack",
          find(rows, "nagle", "edge"), find(rows, "nagle", "bare +quickack"), 0.0, info=True)
    check("(b) edge, Nagle-on sender: vs storescp, Nagle both ends",
          find(rows, "nagle", "edge"), find(rows, "nagle", "storescp +B Nagle"), 0.0, info=True)
    return out


def print_report(rows: list[Row], chk: list[dict]) -> None:
    log("\n" + HEADER)
    log("-" * len(HEADER))
    last = None
    for r in rows:
        if last is not None and r.scenario != last:
            log("")
        last = r.scenario
        log(fmt_row(r))
    long_notes = [(r, n) for r in rows for n in r.notes if "\n" in n]
    for r, n in long_notes:
        log(f"\n{r.scenario} / {r.receiver}: {n}")
    log("\nTargets")
    for c in chk:
        if c["ratio"] is None:
            val = "-"
        elif "RSS" in c["check"]:
            val = f"{c['ratio']:.0f} MB"
        else:
            val = f"{c['ratio']:.2f}x"
        log(f"  {c['status']:<4}  {c['check']:<52} {val}")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def add_run_options(ap, keep_what: str) -> None:
    """The options every benchmark of bench/ shares: quiet waiting, work dir, the adapter command."""
    ap.add_argument("--quiet-wait", type=float, default=0, metavar="S",
                    help="before each run wait up to S s until other processes are idle")
    ap.add_argument("--quiet-max", type=float, default=10, metavar="PCT",
                    help="'idle' for --quiet-wait: others use < PCT %% of one core (10)")
    ap.add_argument("--workdir", help="parent for the temp dir (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help=f"keep the temp dir ({keep_what})")
    ap.add_argument("--adapter-cmd", help="command for the adapter instead of `dicom-adapter`")
    ap.add_argument("--adapter-arg", action="append", default=[],
                    help="extra argument for `dicom-adapter local` (repeatable)")


def find_adapter(override: str | None) -> tuple[list[str], list[str]] | None:
    """(command, extra `local` flags): `--dimse_host 127.0.0.1` when its CLI has that flag."""
    candidates = [shlex.split(override)] if override else []
    if not override:
        for c in (Path(sys.executable).parent / "dicom-adapter", shutil.which("dicom-adapter")):
            if c and Path(c).is_file() and os.access(c, os.X_OK):
                candidates.append([str(c)])
    for cmd in candidates:
        try:  # a pyenv shim exists for every installed version: make sure it really runs
            r = subprocess.run([*cmd, "local", "--help"], capture_output=True, timeout=60, text=True)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0:
            return cmd, (["--dimse_host", LOOPBACK] if "--dimse_host" in r.stdout else [])
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="DIMSE import benchmark (see bench/README.md)")
    ap.add_argument("--quick", action="store_true", help="small corpora, for a smoke run")
    ap.add_argument("--only", default=",".join(SCENARIOS),
                    help=f"comma-separated scenarios out of {','.join(SCENARIOS)}")
    ap.add_argument("--receivers", default="",
                    help="comma-separated receiver prefixes to keep (e.g. storescp,edge); default all")
    ap.add_argument("--json", metavar="OUT", help="write rows and checks as JSON")
    ap.add_argument("--small-count", type=int, help="small CT instances (default 1000; quick 100)")
    ap.add_argument("--nagle-count", type=int, help="instances in the Nagle run (default 200; quick 40)")
    ap.add_argument("--large-count", type=int, help="large instances (default 5; quick 2)")
    ap.add_argument("--large-mib", type=int, help="size of a large instance in MiB (default 200; quick 16)")
    ap.add_argument("--timeout", type=float, default=600, help="per-run timeout in seconds")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each receiver N times and keep the fastest (noisy hosts)")
    ap.add_argument("--stall", type=float, default=90,
                    help="(d): give up when Orthanc's count stalls this long after the acks")
    add_run_options(ap, "corpora, logs")
    args = ap.parse_args(argv)

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SCENARIOS]
    if bad:
        ap.error(f"unknown scenario(s) {bad}; choose from {SCENARIOS}")
    q = args.quick
    small_n = args.small_count or (100 if q else 1000)
    nagle_n = args.nagle_count or (40 if q else 200)
    large_n = args.large_count or (2 if q else 5)
    large_mib = args.large_mib or (16 if q else 200)
    frames = max(1, large_mib * (1 << 20) // (512 * 512 * 2))

    for tool in (STORESCU, STORESCP, ORTHANC, DICOMWEB_PLUGIN):
        if not os.path.exists(tool):
            log(f"missing {tool} (apt-get install dcmtk orthanc orthanc-dicomweb)")
            return 2

    def on_signal(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)

    workdir = Path(tempfile.mkdtemp(prefix="dicom-import-bench-", dir=args.workdir))
    bench = Bench(args, workdir)
    keep = [s.strip() for s in args.receivers.split(",") if s.strip()]

    def pick(receivers: list[str]) -> list[str]:
        return [r for r in receivers if not keep or any(r.startswith(k) for k in keep)]

    log(f"dicom-adapter import bench  {time.strftime('%Y-%m-%d %H:%M:%S')}  {platform.node()}  "
        f"{os.cpu_count()} CPUs  workdir {workdir}")
    if bench.adapter:
        log(f"adapter: {' '.join(bench.adapter[0])} local {' '.join(bench.adapter[1])} ...")
    else:
        log("adapter: `dicom-adapter` not found (scripts/install-adapter.sh, then run the bench with .venv/bin/python): "
            "(b) edge and (d) e2e are SKIPPED")
    t_start = time.monotonic()
    commit_s: float | None = None
    try:
        small = None
        if any(s in only for s in ("small-1", "small-4", "nagle")):
            t = time.monotonic()
            small = make_small_corpus(workdir / "corpus-small", small_n)
            log(f"generated {small.count} CT instances, {small.nbytes / small.count / 1000:.1f} KB "
                f"each, in {time.monotonic() - t:.1f}s")
            commit_s = time_durable_commits(workdir / "commit-probe", small.nbytes // small.count)
            log(f"durable commit (write, fsync, rename, fsync of the folder) on the work dir's disk: "
                f"{commit_s * 1000:.2f} ms per instance")
        if "small-1" in only:
            # one association: one storescu scans all four shard dirs
            bench.scenario("small-1", small.as_one_association(), pick([  # type: ignore[union-attr]
                "storescp +B", "storescp", "bare pynetdicom", "edge", "plain edge", "orthanc dimse",
                "e2e adapter->orthanc", "plain e2e adapter->orthanc", "stow direct x1"]))
        if "small-4" in only:
            bench.scenario("small-4", small, pick([  # type: ignore[arg-type]
                "storescp +B --fork", "storescp --fork", "bare pynetdicom", "edge", "plain edge",
                "orthanc dimse", "e2e adapter->orthanc", "plain e2e adapter->orthanc", "stow direct x4"]))
        if "nagle" in only:
            sub = subset(small, min(nagle_n, small.count), workdir / "corpus-nagle")  # type: ignore[union-attr]
            bench.scenario("nagle", sub, pick([
                "storescp +B", "storescp +B Nagle too", "bare pynetdicom", "bare +quickack",
                "edge", "orthanc dimse", "orthanc dimse Nagle too"]),
                nodelay=False)
        if small is not None:
            release_space(workdir / "corpus-small")
            release_space(workdir / "corpus-nagle")
        if "large" in only:
            t = time.monotonic()
            large = make_large_corpus(workdir / "corpus-large", large_n, frames)
            log(f"\ngenerated {large.count} instances of {large.nbytes / large.count / 1e6:.1f} MB "
                f"in {time.monotonic() - t:.1f}s")
            bench.scenario("large", large, pick([
                "storescp +B", "storescp", "bare pynetdicom", "edge", "orthanc dimse",
                "e2e adapter->orthanc", "stow direct x1"]))
    except KeyboardInterrupt:
        log("\ninterrupted")
    finally:
        _cleanup_all()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    chk = checks(bench.rows, commit_s)
    print_report(bench.rows, chk)
    log(f"\ntotal {time.monotonic() - t_start:.0f}s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(), "cpus": os.cpu_count(),
            "adapter": bench.adapter,
            "params": dict(small=small_n, nagle=nagle_n, large=large_n, large_mib=large_mib,
                           quick=q, only=only),
            "rows": [r.as_json() for r in bench.rows],
            "checks": chk,
            "durable_commit_ms": commit_s * 1000 if commit_s is not None else None,
        }, indent=2))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
