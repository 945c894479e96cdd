#!/usr/bin/env python3
"""Query/retrieve benchmark: C-FIND latency and C-MOVE throughput, adapter vs Orthanc directly.

One run on one machine, everything on loopback (see bench/README.md, "Query/retrieve"):

  one Orthanc with DICOMweb, loaded by STOW-RS with 1,000 studies: 999 of one small instance
  each (varied patients, dates, modalities) and one of 500 CT instances of ~70 KB;
  `dicom-adapter local` backed by that Orthanc; DCMTK storescp as the C-MOVE destination DEST.

  C-FIND  /usr/bin/findscu, Study Root, STUDY level, a few return keys, per query of FIND_QUERIES
          (every study, a name wildcard, an exact name with '^', a date range, a Patient ID,
          a modality): Orthanc's own DIMSE port vs the adapter vs a bare client fetching the
          QIDO-RS pages the adapter asks for (qido.translate, the same store profile);
          seconds from the C-FIND request to the final response and to the first Pending
          (findscu -v's lines as they arrive: its start and the association stay out), median
          of --repeat runs.
          Orthanc's answer is the oracle: the adapter's must hold the same studies.
  C-MOVE  /usr/bin/movescu of the 500-instance study to DEST: Orthanc vs the adapter;
          instances/s, median of --repeat runs, every run checked to deliver all of them.

Targets (issue 22): per query, the adapter's C-FIND time <= 1.15 x the bare client's QIDO-RS
pages, and its first Pending before Orthanc's own C-FIND has finished. (Issue 5: C-MOVE >= 0.8 x
Orthanc's instances/s.) `--store orthanc-1.12` runs Debian 13's Orthanc 1.12 + DICOMweb 1.20 in
a debootstrapped chroot (tests/support/newer_orthanc.py; root, debootstrap, network to Debian).

    python bench/query_bench.py [--quick] [--repeat 5] [--store orthanc-1.12] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from import_bench import (
    CLK_TCK,
    LOOPBACK,
    Corpus,
    Monitor,
    Orthanc,
    Proc,
    _base_dataset,
    _cleanup_all,
    _group_sample,
    add_run_options,
    count_files,
    dcmtk_env,
    find_adapter,
    finish_storescu,
    free_port,
    log,
    log_says_ready,
    make_small_corpus,
    port_listening,
    stow_direct,
    wait_for_quiet,
    wait_until,
)

FINDSCU = "/usr/bin/findscu"  # absolute: pynetdicom puts its own tools on PATH
MOVESCU = "/usr/bin/movescu"
STORESCP = "/usr/bin/storescp"
ADAPTER_AET = "ADAPTER"
DEST_AET = "DEST"
SCU_AET = "BENCHSCU"
# What a worklist/viewer asks for in a study list; matching on nothing, so every study answers.
FIND_KEYS = (
    "StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber",
    "StudyDescription", "ModalitiesInStudy",
)
IGNORED_IN_ANSWERS = {"SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle"}
TARGET_FIND = 1.15  # adapter time <= 1.15 x the store's QIDO-RS pages (bare client)
TARGET_FIRST = 1.0  # adapter's first Pending before Orthanc's C-FIND ends
# The C-FIND queries: name -> match values (the return keys are FIND_KEYS); see make_study_corpus.
FIND_QUERIES = {
    "all": {},
    "name*": {"PatientName": "Smith*"},
    "name^": {"PatientName": "Jones^Ben^19"},
    "dates": {"StudyDate": "20180101-20191231"},
    "pid": {"PatientID": "QB00042"},
    "modality": {"ModalitiesInStudy": "MR"},
}
# Each store, and the profile the adapter trusts it with unless --profile says otherwise.
STORES = {"orthanc-1.10": "orthanc-1.10", "orthanc-1.12": "orthanc-1.12"}
TARGET_MOVE = 0.8  # adapter instances/s >= 0.8 x Orthanc's

FAMILY = ("Smith", "Jones", "Garcia", "Martin", "Nguyen", "Kowalski", "Rossi", "Dubois", "Silva",
          "Murphy", "Novak", "Jansen", "Larsen", "Costa", "Weber", "Sato", "Khan", "Ivanova")
GIVEN = ("Anna", "Ben", "Carla", "David", "Eva", "Felix", "Grace", "Hugo", "Ines", "Jonas", "Kim",
         "Lena", "Marco", "Nora")
MODALITIES = ("CT", "MR", "US", "CR", "DX", "MG", "NM", "PT", "XA")
DESCRIPTIONS = {"CT": "CT CHEST", "MR": "MR BRAIN", "US": "US ABDOMEN", "CR": "CR THORAX",
                "DX": "DX HAND", "MG": "MG SCREENING", "NM": "NM BONE", "PT": "PET WB",
                "XA": "XA CORONARY"}


# --------------------------------------------------------------------------------------------
# Corpus: many one-instance studies for C-FIND, one big study for C-MOVE
# --------------------------------------------------------------------------------------------


def make_study_corpus(root: Path, count: int, side: int = 16) -> Corpus:
    """`count` studies of one small instance each (~1 KB): varied names, IDs, dates, modalities.

    About four studies per patient; dates spread over ten years; nine modalities."""
    from pydicom.uid import (
        CTImageStorage,
        MRImageStorage,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    root.mkdir(parents=True)
    files = []
    pixels = bytes(side * side * 2)
    for i in range(count):
        modality = MODALITIES[i % len(MODALITIES)]
        sop_class = {"CT": CTImageStorage, "MR": MRImageStorage}.get(modality, SecondaryCaptureImageStorage)
        ds = _base_dataset(str(sop_class), generate_uid(), generate_uid())
        patient = i // 4
        ds.PatientName = f"{FAMILY[patient % len(FAMILY)]}^{GIVEN[patient // len(FAMILY) % len(GIVEN)]}^{patient}"
        ds.PatientID = f"QB{patient:05d}"
        ds.PatientBirthDate = f"{1940 + patient % 70}{patient % 12 + 1:02d}{patient % 28 + 1:02d}"
        ds.PatientSex = "FMO"[patient % 3]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = f"{2015 + i % 10}{i % 12 + 1:02d}{i % 28 + 1:02d}"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{8 + i % 10:02d}{i % 60:02d}00"
        ds.AccessionNumber = f"ACC{i:06d}"
        ds.StudyID = str(i + 1)
        ds.StudyDescription = DESCRIPTIONS[modality]
        ds.Modality = modality
        ds.SeriesNumber = ds.InstanceNumber = 1
        if sop_class == SecondaryCaptureImageStorage:
            ds.ConversionType = "WSD"
        ds.Rows = ds.Columns = side
        ds.PixelData = pixels
        path = root / f"study{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return Corpus("studies", files, [[root]])


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    test: str  # "C-FIND <query>" | C-MOVE
    side: str  # orthanc | adapter
    items: int  # studies expected (C-FIND) or instances (C-MOVE)
    seconds: list[float] = field(default_factory=list)  # the measured runs that were OK
    cpu_s: list[float] = field(default_factory=list)  # the serving process group's CPU per run
    store_cpu_s: list[float] = field(default_factory=list)  # Orthanc's behind the adapter
    peak_rss_mb: float = 0.0  # the serving process group, over every run
    store_peak_rss_mb: float = 0.0  # Orthanc behind the adapter, over every run
    noise_pct: list[float] = field(default_factory=list)  # a core used by others, per run
    failures: int = 0
    notes: list[str] = field(default_factory=list)
    first_s: list[float] = field(default_factory=list)  # C-FIND: to the first Pending response

    @property
    def ok(self) -> bool:
        return bool(self.seconds) and not self.failures

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def rate(self) -> float | None:
        """Studies/s (C-FIND) or instances/s (C-MOVE) of the median run."""
        m = self.median_s
        return self.items / m if m else None

    def as_json(self) -> dict:
        d = asdict(self)
        d.update(ok=self.ok, median_s=self.median_s, rate=self.rate,
                 median_first_s=statistics.median(self.first_s) if self.first_s else None)
        return d


# --------------------------------------------------------------------------------------------
# A store that answers at once: the floor under the adapter's own cost
# --------------------------------------------------------------------------------------------


class ReplayingStore:
    """An HTTP server in front of Orthanc's DICOMweb that forwards each GET it has not seen
    (the warm-up) and records the answer, then replays it from memory: a store whose QIDO-RS
    costs nothing, so that a C-FIND through the adapter over it is the adapter's own cost
    (DIMSE both ways, the search planned, matching, responses) and findscu's, with no store in
    it. http.server, not a framework: it only has to hand back recorded bytes."""

    def __init__(self, upstream_port: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        recorded: dict[str, tuple[int, str, bytes]] = {}
        lock = threading.Lock()
        counts = {"forwarded": 0, "replayed": 0}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real store
            # headers and body go out in two writes: with Nagle on, the second waits for the
            # client's delayed ACK (40 ms) on a kept-alive connection
            disable_nagle_algorithm = True

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                with lock:
                    answer = recorded.get(self.path)
                    counts["replayed" if answer is not None else "forwarded"] += 1
                if answer is None:
                    conn = http.client.HTTPConnection(LOOPBACK, upstream_port, timeout=120)
                    try:
                        conn.request("GET", self.path, headers={"Accept": self.headers.get("Accept", "*/*")})
                        resp = conn.getresponse()
                        answer = (resp.status, resp.getheader("Content-Type", ""), resp.read())
                    finally:
                        conn.close()
                    with lock:
                        recorded[self.path] = answer
                status, content_type, body = answer
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.counts = counts  # requests forwarded to Orthanc (recorded) and replayed
        self._thread = threading.Thread(target=self.server.serve_forever, name="replaying-store", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------------------------
# The bench
# --------------------------------------------------------------------------------------------


class QueryBench:
    def __init__(self, args: argparse.Namespace, workdir: Path, adapter: tuple[list[str], list[str]]):
        self.args = args
        self.work = workdir
        self.adapter_cmd = adapter
        self.orthanc: Orthanc | None = None
        self.storescp: Proc | None = None
        self.adapter: Proc | None = None
        self.replaying: ReplayingStore | None = None
        self.instant: Proc | None = None  # the adapter over the replaying store
        self.instant_port = 0
        self.dest_dir = workdir / "dest"
        self.adapter_port = 0
        self.find_keys = list(args.find_key or FIND_KEYS)
        self.page_size = args.page_size
        self.profile = args.profile or STORES[args.store]
        self._n = 0

    # -- setup ----------------------------------------------------------------------------------

    def start(self, corpora: list[Corpus], chroot: Path | None = None, instant: bool = False) -> None:
        """storescp (DEST), Orthanc loaded with `corpora`, the adapter over it and, with
        `instant`, a second adapter over the replaying store (the C-FIND `instant` side)."""
        self.dest_dir.mkdir()
        dest_port = free_port()
        argv = [STORESCP, "-aet", DEST_AET, "-od", str(self.dest_dir), "+B", "-dhl", str(dest_port)]
        self.storescp = Proc("storescp", argv, self.work / "storescp.log", dcmtk_env(True))
        wait_until(lambda: port_listening(dest_port), 30, self.storescp, "storescp listening")

        self.orthanc = Orthanc(self.work, extra_config={
            "DicomModalities": {DEST_AET: [DEST_AET, LOOPBACK, dest_port]},
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
        }, chroot=chroot)
        t = time.monotonic()
        total = sum(c.count for c in corpora)
        problems = [p for c in corpora for p in stow_direct(c, self.orthanc, workers=4)]
        if problems or self.orthanc.count() != total:
            raise RuntimeError(f"loading Orthanc: {self.orthanc.count()} of {total} stored; {problems[:3]}")
        log(f"loaded {total} instances into Orthanc by STOW-RS (4 workers) in {time.monotonic() - t:.1f}s")

        self.adapter, self.adapter_port = self._start_adapter("dicom-adapter", self.orthanc.dicomweb, dest_port)
        if instant:
            self.replaying = ReplayingStore(self.orthanc.http_port)
            self.instant, self.instant_port = self._start_adapter(
                "dicom-adapter over the replaying store", f"http://{LOOPBACK}:{self.replaying.port}/dicom-web", dest_port)

    def _start_adapter(self, name: str, dicomweb: str, dest_port: int) -> tuple[Proc, int]:
        """`dicom-adapter local` over the DICOMweb store at `dicomweb`, ready: (process, port)."""
        port = free_port()
        cmd, extra = self.adapter_cmd
        dictionary = json.dumps([{"name": DEST_AET, "host": LOOPBACK, "port": dest_port}])
        self._n += 1
        argv = [*cmd, "local", *extra, "--dimse_aet", ADAPTER_AET, "--dimse_port", str(port),
                "--dicomweb_address", dicomweb, "--spool_dir", str(self.work / f"spool-{self._n}"),
                "--aet_dictionary_inline", dictionary, "--qido_page_size", str(self.page_size),
                "--qido_store_profile", self.profile,
                *self.args.adapter_arg]
        env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        proc = Proc(name, argv, self.work / f"adapter-{self._n}.log", env)
        wait_until(lambda: log_says_ready(proc.log_path) and port_listening(port), 60, proc, f"{name} ready")
        return proc, port

    def stop(self) -> list[str]:
        notes = []
        for adapter in (self.adapter, self.instant):
            if adapter is not None:
                rc = adapter.stop(timeout=30)
                if rc != 0:
                    notes.append(f"{adapter.name} exited {rc} on SIGTERM")
        if self.replaying is not None:
            self.replaying.stop()
        if self.storescp is not None:
            self.storescp.stop(timeout=10)
        if self.orthanc is not None:
            self.orthanc.stop()
        return notes

    def target(self, side: str) -> tuple[str, int, Proc]:
        """(called AE, port, the serving process) of a side; the store's own DICOMweb
        (`qido-rs`, `wado-rs`) is served by Orthanc too."""
        assert self.orthanc is not None and self.adapter is not None
        if side == "adapter":
            return ADAPTER_AET, self.adapter_port, self.adapter
        if side == "instant":
            assert self.instant is not None
            return ADAPTER_AET, self.instant_port, self.instant
        return Orthanc.AET, self.orthanc.dicom_port, self.orthanc.proc

    def _rundir(self, label: str) -> Path:
        self._n += 1
        d = self.work / "runs" / f"{self._n:03d}-{label}"
        d.mkdir(parents=True)
        return d

    # -- one measured run -------------------------------------------------------------------------

    def measure(self, row: Row, work: Callable[[], list[str]], check: Callable[[], list[str]],
                timed: Callable[[], float] | None = None) -> bool:
        """Time `work()` (it returns problems) with the serving side monitored, then `check()`
        what arrived. Adds the figures to `row` (`timed`: the seconds to record instead of
        work's wall time); True when the run was OK."""
        assert self.orthanc is not None
        _, _, server = self.target(row.side)
        store = self.orthanc.proc.pgid
        os.sync()
        if self.args.quiet_wait:
            wait_for_quiet(self.args.quiet_wait, self.args.quiet_max)
        behind = row.side == "adapter"
        log_offset = server.log_path.stat().st_size if behind else 0
        store_cpu0 = _group_sample({store})[1] if behind else 0
        mon = Monitor([server.pgid], helpers=[store] if behind else [])
        store_mon = Monitor([store], interval=0.1) if behind else None
        t0 = time.perf_counter()
        try:
            problems = work()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            problems = [f"{type(exc).__name__}: {exc}"]
        seconds = time.perf_counter() - t0
        mon.stop()
        if store_mon is not None:
            store_mon.stop()
            row.store_peak_rss_mb = max(row.store_peak_rss_mb, store_mon.peak_mb)
            row.store_cpu_s.append((_group_sample({store})[1] - store_cpu0) / CLK_TCK)
        row.peak_rss_mb = max(row.peak_rss_mb, mon.peak_mb)
        if server.poll() is not None:
            problems.append(f"{server.name} exited ({server.poll()})")
        problems += check()
        if problems:
            row.failures += 1
            row.notes.extend(problems[:3])
            if behind:  # the adapter's log lines of this run (UIDs, statuses, reasons; no PHI)
                with open(server.log_path, "rb") as fh:
                    fh.seek(log_offset)
                    lines = fh.read().decode(errors="replace").splitlines()[-8:]
                row.notes.append("dicom-adapter log of the run:\n" + "\n".join("      | " + x for x in lines))
            return False
        row.seconds.append(timed() if timed else seconds)
        row.cpu_s.append(mon.cpu_s)
        row.noise_pct.append(mon.other_pct)
        return True

    def run_scu(self, argv: list[str], rd: Path) -> list[str]:
        """Run a DCMTK SCU to completion; its problems (exit code, E:/F: lines, log tail)."""
        scu = Proc(Path(argv[0]).name, argv, rd / "scu.log", dcmtk_env(True))
        problems = finish_storescu([scu], self.args.timeout)
        if problems:
            problems.append(f"{scu.name} log tail:\n{scu.tail(8)}")
        return problems

    # -- C-FIND ------------------------------------------------------------------------------------

    def find_once(self, row: Row, match: dict[str, str], expected: set[str] | None, extract: bool) -> dict[str, tuple] | None:
        """One findscu run; with `extract`, the answers by StudyInstanceUID (findscu -X, read
        back with pydicom), else findscu's own printout is checked. `expected`: the studies it
        must answer (None: any, this run is the oracle). None if the run failed."""
        aet, port, _ = self.target(row.side)
        rd = self._rundir(f"find-{row.side}")
        out = rd / "rsp"
        out.mkdir()
        keys = [a for k in self.find_keys for a in ("-k", f"{k}={match.get(k, '')}")]
        keys += [a for k, v in match.items() if k not in self.find_keys for a in ("-k", f"{k}={v}")]
        argv = [FINDSCU, "-S", "-v", "-aet", SCU_AET, "-aec", aet, *(["-X", "-od", str(out)] if extract else []),
                "-k", "QueryRetrieveLevel=STUDY", *keys, LOOPBACK, str(port)]
        answers: dict[str, tuple] = {}
        times: dict[str, float] = {}

        def work() -> list[str]:
            problems, seen = run_find_scu(argv, rd / "scu.log", self.args.timeout)
            times.update(seen)
            if not {"request", "final"} <= set(seen):
                problems.append("findscu printed no 'Sending Find Request' / 'Final Find Response'")
            return problems

        def check() -> list[str]:
            if extract:
                answers.update(read_find_answers(out))
                got, pending = set(answers), len(answers)
            else:
                got, pending = printed_answers(rd / "scu.log")
                answers.update({uid: () for uid in got})
            want = got if expected is None else expected
            if got != want or pending != len(want):
                return [f"{pending} responses, {len(got & want)} of the {len(want)} studies"]
            return []

        ok = self.measure(row, work, check, timed=lambda: times["final"] - times["request"])
        if ok and "first" in times:  # none for a query without matches
            row.first_s.append(times["first"] - times["request"])
        if not self.args.keep:
            shutil.rmtree(rd, ignore_errors=True)
        return answers if ok else None

    def qido_searches(self, match: dict[str, str]) -> list:
        """The QIDO-RS searches the adapter makes for this query (its own translation, with the
        same store profile): what the bare client fetches."""
        from dicom_adapter.qido import translate
        from dicom_adapter.store_profiles import store_profile
        from pydicom.dataset import Dataset

        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        for keyword in dict.fromkeys([*self.find_keys, *match]):
            setattr(identifier, keyword, match.get(keyword, ""))
        return translate(identifier, "STUDY", profile=store_profile(self.profile))

    def qido_once(self, row: Row, match: dict[str, str], expected: set[str]) -> bool:
        """The store's own QIDO-RS, as the adapter asks it (same parameters, same encoding, the
        same pages: the small first page, then full ones), one page after the other on one
        connection; its answer must hold every expected study."""
        from dicom_adapter.dicomweb import _query_string  # the adapter's encoding of the parameters
        from dicom_adapter.dicomweb import first_page_limits  # and its pages
        from edge_listener.runtime.assembly import FIND_FIRST_PAGE

        assert self.orthanc is not None
        searches = self.qido_searches(match)
        got: set[str] = set()

        def work() -> list[str]:
            conn = http.client.HTTPConnection(LOOPBACK, self.orthanc.http_port, timeout=self.args.timeout)
            try:
                for search in searches:
                    offset = 0
                    limits = itertools.chain(first_page_limits(FIND_FIRST_PAGE, self.page_size), itertools.repeat(self.page_size))
                    for limit in limits:
                        # encoded as the adapter encodes them (Orthanc 1.10 misses a %2A wildcard)
                        query = _query_string({**search.params, "limit": limit, "offset": offset})
                        conn.request("GET", f"/dicom-web/studies?{query}", headers={"Accept": "application/dicom+json"})
                        resp = conn.getresponse()
                        body = resp.read()
                        if resp.status == 204:
                            break
                        if resp.status != 200:
                            return [f"QIDO-RS HTTP {resp.status}"]
                        page = json.loads(body)
                        got.update(str(item.get("0020000D", {}).get("Value", [""])[0]) for item in page)
                        if len(page) < limit:
                            break
                        offset += len(page)
            finally:
                conn.close()
            return []

        def check() -> list[str]:
            return [] if got >= expected else [f"QIDO-RS gave {len(got)} studies, {len(got & expected)} of the {len(expected)} matches"]

        return self.measure(row, work, check)

    # -- C-MOVE ------------------------------------------------------------------------------------

    def move_once(self, row: Row, study_uid: str, expected: set[str]) -> bool:
        """One movescu run of the study to storescp; every instance must arrive."""
        aet, port, _ = self.target(row.side)
        for f in self.dest_dir.iterdir():
            f.unlink()
        rd = self._rundir(f"move-{row.side}")
        argv = [MOVESCU, "-S", "-aet", SCU_AET, "-aec", aet, "-aem", DEST_AET,
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                LOOPBACK, str(port)]

        def check() -> list[str]:
            # storescp writes each file (named <modality>.<SOP Instance UID>) before it answers
            got = {f.name.split(".", 1)[1] for f in self.dest_dir.iterdir() if "." in f.name}
            if got != expected:
                return [(f"destination received {count_files(self.dest_dir)} files, "
                         f"{len(got & expected)} of the {len(expected)} instances")]
            return []

        ok = self.measure(row, lambda: self.run_scu(argv, rd), check)
        if not self.args.keep:
            shutil.rmtree(rd, ignore_errors=True)
        return ok

    def wado_once(self, row: Row, refs: list[tuple[str, str, str]]) -> bool:
        """The store's own WADO-RS, as the adapter asks it: each series of the study in one
        response (as stored), one series after the other on one connection, streamed to a file;
        the parts (instances) are counted."""
        assert self.orthanc is not None
        rd = self._rundir("wado")
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        series = list(dict.fromkeys((study, series) for study, series, _ in refs))
        parts: list[int] = []

        def work() -> list[str]:
            conn = http.client.HTTPConnection(LOOPBACK, self.orthanc.http_port, timeout=self.args.timeout)
            try:
                for study, uid in series:
                    conn.request("GET", f"/dicom-web/studies/{study}/series/{uid}", headers={"Accept": accept})
                    resp = conn.getresponse()
                    if resp.status != 200:
                        resp.read()
                        return [f"WADO-RS HTTP {resp.status}"]
                    boundary = re.search(r'boundary="?([^";]+)', resp.getheader("Content-Type", ""))
                    delimiter = b"\r\n--" + (boundary.group(1).encode() if boundary else b"")
                    found, tail = 0, b""
                    with open(rd / "series", "wb") as out:
                        while block := resp.read(1 << 16):
                            out.write(block)
                            found += (tail + block).count(delimiter)
                            tail = block[-(len(delimiter) - 1):]
                    parts.append(found)  # the closing delimiter counts for the first part's missing CRLF
            finally:
                conn.close()
            return []

        def check() -> list[str]:
            got = sum(parts)
            return [] if got == len(refs) else [f"WADO-RS gave {got} of {len(refs)} instances"]

        ok = self.measure(row, work, check)
        shutil.rmtree(rd, ignore_errors=True)
        return ok


def read_find_answers(out: Path) -> dict[str, tuple]:
    """StudyInstanceUID -> sorted (keyword, value) pairs of one C-FIND's extracted responses
    (multi-values sorted; the character set and Query/Retrieve Level left out)."""
    import pydicom

    answers = {}
    for f in sorted(out.glob("rsp*.dcm")):
        ds = pydicom.dcmread(f, force=True)
        values = []
        for elem in ds:
            if elem.keyword in IGNORED_IN_ANSWERS:
                continue
            if elem.VM > 1:
                values.append((elem.keyword, tuple(sorted(str(x) for x in elem.value))))
            else:
                values.append((elem.keyword, str(elem.value or "").strip()))
        answers[str(ds.get("StudyInstanceUID", ""))] = tuple(sorted(values))
    return answers


# findscu -v lines that mark the C-FIND on the wire, as they reach the bench through a pipe.
FIND_MARKS = {"request": b"Sending Find Request", "first": b"(Pending)", "final": b"Final Find Response"}


def run_find_scu(argv: list[str], log_path: Path, timeout: float) -> tuple[list[str], dict[str, float]]:
    """Run findscu (-v) to its end, its output to `log_path`: (problems, {mark: perf_counter
    time its line arrived}) for the FIND_MARKS, each the first time it shows. The C-FIND is
    timed from the request to the final response, so findscu's start and the association,
    which a bare HTTP client does not pay, stay out of the comparison."""
    seen: dict[str, float] = {}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dcmtk_env(True), start_new_session=True)
    killer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    killer.start()
    try:
        with open(log_path, "wb") as out:
            for line in proc.stdout:  # type: ignore[union-attr]
                now = time.perf_counter()
                for mark, text in FIND_MARKS.items():
                    if mark not in seen and text in line:
                        seen[mark] = now
                out.write(line)
        rc = proc.wait()
    finally:
        killer.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    errors = [line for line in log_path.read_text(errors="replace").splitlines() if line.startswith(("E:", "F:"))]
    problems = [f"findscu rc={rc} {'; '.join(errors[:3])}"] if rc != 0 or errors else []
    return problems, seen


def printed_answers(log_path: Path) -> tuple[set[str], int]:
    """(StudyInstanceUIDs, number of Pending responses) from findscu's printout of the
    responses (its default log level dumps each one)."""
    text = log_path.read_text(errors="replace")
    uids = set(re.findall(r"^I: \(0020,000d\) UI \[([0-9.]+)", text, re.MULTILINE | re.IGNORECASE))
    return uids, len(re.findall(r"Find Response: \d+ \(Pending\)", text))


def compare_answers(a: dict[str, tuple], b: dict[str, tuple]) -> str | None:
    """None when both C-FIND answers hold the same values, else what differs (no values: PHI-free)."""
    diff = [uid for uid in a if a[uid] != b.get(uid)]
    if not diff and set(a) == set(b):
        return None
    keys = {k for uid in diff for k in dict(a[uid]).keys() | dict(b.get(uid, ())).keys()
            if dict(a[uid]).get(k) != dict(b.get(uid, ())).get(k)}
    return f"answers differ for {len(diff)} studies, keys {sorted(keys)}"


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

HEADER = (f"{'test':<16} {'side':<8} {'items':>5} {'runs':>4} {'median s':>9} {'min s':>7} {'max s':>7} "
          f"{'1st s':>6} {'rate/s':>8} {'ratio':>6} {'CPU s':>6} {'peakRSS MB':>10} {'Orthanc behind':>15} {'noise%':>6}")
# The table's sides: Orthanc's DIMSE port, the adapter, the store's own DICOMweb (the floor
# under the adapter: what it asks the store for, without DIMSE) and, for C-FIND, the adapter
# over a store that answers at once (ReplayingStore: the adapter's own cost, without the store).
SIDES = {"C-FIND": ("orthanc", "adapter", "qido-rs", "instant"), "C-MOVE": ("orthanc", "adapter", "wado-rs")}


def _f(v, spec: str, width: int) -> str:
    return f"{v:{width}{spec}}" if v is not None else f"{'-':>{width}}"


def fmt_row(r: Row, ratio: float | None) -> str:
    behind = (f"{statistics.median(r.store_cpu_s):.2f}s {r.store_peak_rss_mb:.0f}MB"
              if r.store_cpu_s else "")
    s = (f"{r.test:<16} {r.side:<8} {r.items:>5} {len(r.seconds):>4} {_f(r.median_s, '.3f', 9)} "
         f"{_f(min(r.seconds) if r.seconds else None, '.3f', 7)} "
         f"{_f(max(r.seconds) if r.seconds else None, '.3f', 7)} "
         f"{_f(statistics.median(r.first_s) if r.first_s else None, '.3f', 6)} {_f(r.rate, '.1f', 8)} "
         f"{_f(ratio, '.2f', 6)} {_f(statistics.median(r.cpu_s) if r.cpu_s else None, '.2f', 6)} "
         f"{_f(r.peak_rss_mb or None, '.0f', 10)} {behind:>15} "
         f"{_f(max(r.noise_pct) if r.noise_pct else None, '.0f', 6)}")
    short = [n for n in r.notes if "\n" not in n]
    flags = [] if r.ok else [f"NOT OK ({r.failures} failed)"]
    if flags or short:
        s += "  [" + "; ".join(flags + list(dict.fromkeys(short))) + "]"
    return s


def ratio(rows: dict[tuple[str, str], Row], test: str, side: str, ref: str = "orthanc") -> float | None:
    """C-FIND: time relative to `ref`'s; C-MOVE: instances/s relative to `ref`'s (medians)."""
    r, o = rows.get((test, side)), rows.get((test, ref))
    if not (r and o and r.ok and o.ok):
        return None
    return r.median_s / o.median_s if test.startswith("C-FIND") else r.rate / o.rate


def first_ratio(rows: dict[tuple[str, str], Row], test: str) -> float | None:
    """The adapter's median time to its first Pending over Orthanc's median whole C-FIND."""
    r, o = rows.get((test, "adapter")), rows.get((test, "orthanc"))
    if not (r and o and r.ok and o.ok and r.first_s):
        return None
    return statistics.median(r.first_s) / o.median_s


def ceiling(rows: dict[tuple[str, str], Row], test: str) -> float | None:
    """The adapter / QIDO-RS ratio an adapter with this one's own cost reaches when none of that
    cost overlaps the store's answer, as for an answer of one page: the store's answer (the
    qido-rs row) plus the adapter's own cost (the instant row), over the store's answer. Paging
    overlaps the two, so a many-page answer can do better."""
    q, i = rows.get((test, "qido-rs")), rows.get((test, "instant"))
    if not (q and i and q.ok and i.ok):
        return None
    return (q.median_s + i.median_s) / q.median_s


def checks(rows: dict[tuple[str, str], Row]) -> list[dict]:
    out = []

    def check(name: str, value: float | None, target: float | None, at_most: bool) -> None:
        if target is None:
            status = "SKIP" if value is None else "INFO"
        elif value is None:
            status = "SKIP"
        else:
            status = "PASS" if (value <= target if at_most else value >= target) else "FAIL"
        out.append(dict(check=name, target=target, ratio=value, status=status))

    for test in dict.fromkeys(t for t, _ in rows if t.startswith("C-FIND")):
        check(f"{test}: adapter <= {TARGET_FIND} x bare QIDO-RS", ratio(rows, test, "adapter", "qido-rs"),
              TARGET_FIND, at_most=True)
        if rows[(test, "adapter")].items:  # a query without matches has no first Pending
            check(f"{test}: 1st Pending before Orthanc ends", first_ratio(rows, test), TARGET_FIRST, at_most=True)
        check(f"{test}: adapter vs Orthanc's C-FIND", ratio(rows, test, "adapter"), None, at_most=True)
        check(f"{test}: ceiling (qido-rs + instant) / qido-rs", ceiling(rows, test), None, at_most=True)
    if ("C-MOVE", "adapter") in rows:
        check(f"C-MOVE adapter inst/s >= {TARGET_MOVE} x Orthanc's", ratio(rows, "C-MOVE", "adapter"),
              TARGET_MOVE, at_most=False)
        check("C-MOVE store's WADO-RS inst/s vs Orthanc's C-MOVE", ratio(rows, "C-MOVE", "wado-rs"),
              None, at_most=False)
        check("C-MOVE adapter inst/s vs the store's WADO-RS", ratio(rows, "C-MOVE", "adapter", "wado-rs"),
              None, at_most=False)
    return out


def print_report(rows: dict[tuple[str, str], Row], chk: list[dict]) -> None:
    log("\n" + HEADER)
    log("-" * len(HEADER))
    for r in rows.values():
        log(fmt_row(r, ratio(rows, r.test, r.side)))
    for r in rows.values():
        for n in dict.fromkeys(r.notes):
            if "\n" in n:
                log(f"\n{r.test} / {r.side}: {n}")
    log("\nTargets")
    for c in chk:
        value = f"{c['ratio']:5.2f}x" if c["ratio"] is not None else "    -"
        log(f"  {c['status']:<4}  {c['check']:<56} {value}")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def run_test(test: str, runner: Callable[[Row, bool], bool], rows: dict[tuple[str, str], Row], items: int,
             warmup: int, repeat: int) -> None:
    """Warm-up runs (not kept), then `repeat` measured runs of every side, the order rotating
    from one round to the next so that no side always goes first."""
    sides = SIDES[test.split()[0]]
    for side in sides:
        rows[(test, side)] = Row(test, side, items)
    for i in range(warmup + repeat):
        warm = i < warmup
        for side in sides[i % len(sides):] + sides[:i % len(sides)]:
            row = rows[(test, side)]
            target = Row(test, side, items) if warm else row
            ok = runner(target, warm)
            if warm and not ok:
                row.failures += 1
                row.notes.extend(target.notes)
            what = (f"{target.seconds[-1]:.3f}s" + (f", {items / target.seconds[-1]:.1f} inst/s"
                                                      if test == "C-MOVE" else "")) if ok else "FAILED"
            log(f"  {test} {side:<8} round {i + 1}{' (warm-up)' if warm else ''}: {what}")


def run_find_query(bench: QueryBench, rows: dict[tuple[str, str], Row], name: str, match: dict[str, str],
                   every_study: set[str], warmup: int, repeat: int) -> None:
    """One C-FIND query on the three sides. Orthanc's first (warm-up) answer is the oracle:
    the adapter must answer the same studies with the same values (compared key by key once),
    the bare QIDO-RS client must get at least those."""
    test = f"C-FIND {name}"
    searches = bench.qido_searches(match)
    sent = sorted(set(searches[0].params) - {"includefield"})
    log(f"\n== {test}: study root, STUDY level, match {sorted(match) or 'nothing (every study)'}, "
        f"{len(searches)} QIDO-RS search(es) with {sent or 'no match parameter'}")
    oracle: dict[str, dict] = {}
    first: dict[str, dict] = {}

    def find(row: Row, warm: bool) -> bool:
        # the oracle: Orthanc's warm-up answer, which for no match key must be the whole corpus
        expected = set(oracle["orthanc"]) if oracle else (None if match else every_study)
        if row.side == "qido-rs":
            return expected is not None and bench.qido_once(row, match, expected)
        extract = warm and row.side not in first  # the full answers, once per side
        answers = bench.find_once(row, match, expected, extract)
        if answers is None:
            return False
        if extract:
            first[row.side] = answers
        if not oracle and row.side == "orthanc":
            oracle["orthanc"] = answers
            for side in SIDES["C-FIND"]:
                rows[(test, side)].items = len(answers)
        return True

    if bench.replaying is not None:
        before = dict(bench.replaying.counts)
    run_test(test, find, rows, 0, warmup, repeat)
    if bench.replaying is not None:
        replayed = bench.replaying.counts["replayed"] - before["replayed"]
        log(f"  replaying store: {bench.replaying.counts['forwarded'] - before['forwarded']} requests forwarded "
            f"to Orthanc, {replayed} replayed")
        if not replayed:  # then the instant row timed Orthanc, not the adapter alone
            rows[(test, "instant")].failures += 1
            rows[(test, "instant")].notes.append("the replaying store replayed nothing")
    for side in ("adapter", "instant"):
        if "orthanc" not in first or side not in first:
            continue
        diff = compare_answers(first["orthanc"], first[side])
        if diff:
            rows[(test, side)].notes.append(diff)
            log(f"  NOTE {side}: {diff}")
        else:
            log(f"  the {side} side's answers equal Orthanc's ({len(first['orthanc'])} studies, every key)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="C-FIND / C-MOVE benchmark, adapter vs Orthanc (see bench/README.md)")
    ap.add_argument("--quick", action="store_true", help="100 studies, a 50-instance study, 2 runs: a smoke run")
    ap.add_argument("--studies", type=int, help="studies in the store, the C-MOVE one included (default 1000)")
    ap.add_argument("--move-instances", type=int, help="instances of the C-MOVE study (default 500)")
    ap.add_argument("--repeat", type=int, help="measured runs per side and test; the median counts (default 5; quick 2)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per side and test first (default 1)")
    ap.add_argument("--only", default="find,move", help="tests to run: find, move or both (default)")
    ap.add_argument("--query", action="append", choices=list(FIND_QUERIES), metavar="NAME",
                    help=f"C-FIND query to run (repeatable; default all: {', '.join(FIND_QUERIES)})")
    ap.add_argument("--find-key", action="append", metavar="KEYWORD",
                    help=f"C-FIND return key (repeatable; default {','.join(FIND_KEYS)})")
    ap.add_argument("--page-size", type=int, default=500,
                    help="the adapter's --qido_page_size, and the pages of the qido-rs row (default 500)")
    ap.add_argument("--store", choices=list(STORES), default="orthanc-1.10",
                    help="the DICOMweb store: this machine's Orthanc 1.10 (default) or Debian 13's 1.12 in a chroot")
    ap.add_argument("--profile", help="the adapter's --qido_store_profile (default: the store's, see STORES)")
    ap.add_argument("--json", metavar="OUT", help="write rows and checks as JSON")
    ap.add_argument("--timeout", type=float, default=600, help="per-run timeout in seconds")
    add_run_options(ap, "corpora, logs, answers")
    args = ap.parse_args(argv)

    q = args.quick
    n_studies = args.studies or (100 if q else 1000)
    n_move = args.move_instances or (50 if q else 500)
    repeat = args.repeat or (2 if q else 5)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if not only or only - {"find", "move"}:
        ap.error("--only takes find, move or find,move")
    if n_studies < 2 or n_move < 1 or repeat < 1 or args.warmup < 0:
        ap.error("--studies >= 2, --move-instances >= 1, --repeat >= 1, --warmup >= 0")
    if "find" in only and args.warmup < 1:
        ap.error("C-FIND needs --warmup >= 1: Orthanc's warm-up answer is the oracle")

    for tool in (FINDSCU, MOVESCU, STORESCP):
        if not os.path.exists(tool):
            log(f"missing {tool} (apt-get install dcmtk orthanc orthanc-dicomweb)")
            return 2
    adapter = find_adapter(args.adapter_cmd or this_checkout_adapter())
    if adapter is None:
        log("`dicom-adapter` not found (scripts/install-adapter.sh, then run the bench with .venv/bin/python)")
        return 2

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)

    workdir = Path(tempfile.mkdtemp(prefix="dicom-query-bench-", dir=args.workdir))
    bench = QueryBench(args, workdir, adapter)
    rows: dict[tuple[str, str], Row] = {}
    notes: list[str] = []
    log(f"dicom-adapter query/retrieve bench  {time.strftime('%Y-%m-%d %H:%M:%S')}  {platform.node()}  "
        f"{os.cpu_count()} CPUs  workdir {workdir}")
    log(f"adapter: {' '.join(adapter[0])} local {' '.join(adapter[1])} --qido_page_size {args.page_size} "
        f"{' '.join(args.adapter_arg)} ...")
    t_start = time.monotonic()
    stack = ExitStack()
    try:
        t = time.monotonic()
        studies = make_study_corpus(workdir / "corpus-studies", n_studies - 1)
        move = make_small_corpus(workdir / "corpus-move", n_move, shards=1)
        log(f"generated {studies.count} one-instance studies and a study of {move.count} CT instances "
            f"({move.nbytes / move.count / 1000:.1f} KB each) in {time.monotonic() - t:.1f}s")
        study_uids = {uids[0] for uids in corpus_uids(studies)}
        move_refs = corpus_uids(move)
        move_study = move_refs[0][0]
        expected_studies = study_uids | {move_study}
        expected_instances = {sop for _, _, sop in move_refs}
        store = stack.enter_context(store_chroot(args.store, workdir))
        bench.start([studies, move], chroot=store, instant="find" in only)
        log(f"store: {args.store}{f' in {store}' if store else ''}; adapter profile {bench.profile}")
        log(f"loadavg {os.getloadavg()[0]:.2f}; {args.warmup} warm-up and {repeat} measured rounds, "
            f"the order of the sides rotating")

        if "find" in only:
            for name, match in FIND_QUERIES.items():
                if args.query and name not in args.query:
                    continue
                run_find_query(bench, rows, name, match, expected_studies, args.warmup, repeat)

        if "move" in only:
            log(f"\n== C-MOVE study root, STUDY level, {move.count} instances "
                f"({move.nbytes / 1e6:.1f} MB) to storescp")

            def retrieve(row: Row, warm: bool) -> bool:
                if row.side == "wado-rs":
                    return bench.wado_once(row, move_refs)
                return bench.move_once(row, move_study, expected_instances)

            run_test("C-MOVE", retrieve, rows, move.count, args.warmup, repeat)
    except KeyboardInterrupt:
        log("\ninterrupted")
        notes.append("interrupted")
    except Exception as exc:
        log(f"\nbench failed: {exc}")
        notes.append(f"bench failed: {exc}")
    finally:
        notes += bench.stop()
        _cleanup_all()
        stack.close()  # the chroot, after its Orthanc
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    chk = checks(rows)
    print_report(rows, chk)
    for n in notes:
        log(f"NOTE {n}")
    log(f"\ntotal {time.monotonic() - t_start:.0f}s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(), "cpus": os.cpu_count(),
            "adapter": adapter, "adapter_args": args.adapter_arg,
            "params": dict(studies=n_studies, move_instances=n_move, repeat=repeat, warmup=args.warmup,
                           find_keys=bench.find_keys, page_size=args.page_size, quick=q,
                           only=sorted(only)),
            "rows": [r.as_json() for r in rows.values()],
            "checks": chk,
            "notes": notes,
        }, indent=2))
        log(f"wrote {args.json}")
    return 0 if rows and all(r.ok for r in rows.values()) and not notes else 1


@contextmanager
def store_chroot(store: str, workdir: Path) -> Iterator[Path | None]:
    """None for this machine's Orthanc; for orthanc-1.12, the root of a Debian 13 chroot with
    Debian's orthanc and orthanc-dicomweb installed that sees `workdir` at the same path (the
    suite's own machinery, tests/support/newer_orthanc.py), for as long as the context lasts."""
    if store == "orthanc-1.10":
        yield None
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support.newer_orthanc import debian13_orthanc

    t = time.monotonic()
    with debian13_orthanc(share=[workdir]) as install:
        log(f"{install.label} installed in a chroot in {time.monotonic() - t:.0f}s")
        yield install.root


def this_checkout_adapter() -> str:
    """`python -m edge_listener` from the checkout this bench is in (put first on PYTHONPATH,
    which the adapter's processes inherit), so the bench measures the code beside it rather
    than whichever checkout an installed `dicom-adapter` points to."""
    root = Path(__file__).resolve().parents[1]
    paths = [str(root), str(root / "functions"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return f"{shlex.quote(sys.executable)} -m edge_listener"


def corpus_uids(corpus: Corpus) -> list[tuple[str, str, str]]:
    """(Study, Series, SOP Instance UID) of every file of a corpus, in file order."""
    import pydicom

    tags = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
    out = []
    for f in corpus.files:
        ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=tags)
        out.append((str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)))
    return out


if __name__ == "__main__":
    sys.exit(main())
