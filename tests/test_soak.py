"""Soak under faults: several modalities store a few thousand small instances at once while the
uploads hit 429, 500, dropped connections and time-outs, the adapter is SIGKILLed and
restarted, and the store goes away and comes back. At the end every acknowledged instance is
in the store exactly once and byte-exact, the spool is empty and the adapter's memory stayed
flat. The figure (sent, acknowledged, stored, lost, duplicated, dead-lettered) is printed.

The modalities behave as real ones do: an instance without a Success answer (association
lost, refused, 0xA7xx) is sent again, on a new association if need be. Bounded in count
(SOAK_INSTANCES, default 1500, over SOAK_ASSOCIATIONS=4 associations) and time (SOAK_DEADLINE_S).

    SOAK_INSTANCES=1500 PYTHONPATH=$PWD:$PWD/functions python -m pytest -p no:cacheprovider -s tests/test_soak.py
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import AE
from support.adapter import ADAPTER_AET, LocalAdapter
from support.dicom_files import (
    GeneratedInstance,
    dataset_bytes_after_meta,
    make_ct_instance,
)
from support.healthcare_api_fake import HealthcareApiFake
from support.processes import RssSampler, free_port

INSTANCES = int(os.environ.get("SOAK_INSTANCES", "1500"))
ASSOCIATIONS = int(os.environ.get("SOAK_ASSOCIATIONS", "4"))
DEADLINE_S = float(os.environ.get("SOAK_DEADLINE_S", "240"))


@dataclass
class Modality:
    """One sending device: its own association, re-sending what was not acknowledged."""

    name: str
    port: int
    instances: list[GeneratedInstance]
    acknowledged: set[str] = field(default_factory=set)
    attempts: int = 0
    refusals: int = 0  # answered, but not with Success (sent again)
    broken: int = 0  # association lost or not established (sent again)

    def run(self, deadline: float) -> None:
        ae = AE(ae_title=self.name)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(self.instances[0].sop_class_uid, ["1.2.840.10008.1.2.1"])
        pending = list(self.instances)
        assoc = None
        while pending and time.monotonic() < deadline:
            if assoc is None or not assoc.is_established:
                assoc = ae.associate("127.0.0.1", self.port, ae_title=ADAPTER_AET)
                if not assoc.is_established:
                    self.broken += 1
                    assoc = None
                    time.sleep(0.2)
                    continue
            instance = pending[0]
            self.attempts += 1
            try:
                response = assoc.send_c_store(instance.path)
            except Exception:  # the adapter went away mid-send
                response = None
            status = int(response.Status) if response is not None and "Status" in response else None
            if status == 0:
                self.acknowledged.add(instance.sop_instance_uid)
                pending.pop(0)
            elif status is None:
                self.broken += 1
                assoc.abort()
                assoc = None
            else:
                self.refusals += 1
                time.sleep(0.1)
        if assoc is not None and assoc.is_established:
            assoc.release()


class MemoryWatch:
    """RSS of the adapter's process tree, sampled across restarts (pid changes)."""

    def __init__(self, adapter: LocalAdapter) -> None:
        self.adapter = adapter
        self.samples: list[tuple[float, int, int]] = []  # (time, pid, total RSS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                pid = self.adapter.process.pid
                sampler = RssSampler(pid)
                sampler.sample()
                self.samples.append((time.monotonic(), pid, sampler.peak_total_rss_bytes))
            except Exception:
                continue  # between kill and restart

    def __enter__(self) -> "MemoryWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _faults(fake: HealthcareApiFake, adapter: LocalAdapter, progress, log: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Inject the faults as the run progresses (fractions of the instances acknowledged)."""

    def at(fraction: float) -> None:
        while progress() < fraction:
            time.sleep(0.05)

    at(0.10)
    fake.fail_next(15, 429, retry_after="1")
    fake.fail_next(15, 500)
    log.append("429 x15, 500 x15")
    at(0.20)
    fake.delay_next(4, seconds=3)  # beyond --upload_read_timeout 1: client time-outs
    log.append("timeouts x4")
    at(0.28)
    fake.drop_next(5)
    log.append("dropped x5")
    at(0.35)
    adapter.kill()
    log.append("adapter SIGKILL")
    time.sleep(0.5)
    adapter.start()
    log.append("adapter restarted")
    at(0.55)
    fake.stop()
    log.append("store stopped")
    time.sleep(3)
    fake.start()
    log.append("store started")
    at(0.70)
    fake.fail_next(10, 503)
    log.append("503 x10")


def test_soak_under_faults_loses_nothing(tmp_path: Path):
    per = max(1, INSTANCES // ASSOCIATIONS)
    modality_files = [
        [make_ct_instance(tmp_path / f"m{m}" / f"{i}.dcm", size_kb=4, seed=m * 100000 + i) for i in range(per)]
        for m in range(ASSOCIATIONS)
    ]
    sent = {i.sop_instance_uid: i for files in modality_files for i in files}
    fake = HealthcareApiFake(port=free_port()).start()  # a fixed port: it comes back on it
    adapter = LocalAdapter(
        tmp_path / "adapter", fake.url,
        extra_args=["--upload_read_timeout", "1", "--min_upload_delay", "50", "--max_waiting_time_between_uploads", "500",
                    "--max_associations", str(ASSOCIATIONS + 2)],
    )
    fault_log: list[str] = []
    started = time.monotonic()
    try:
        adapter.start()
        modalities = [Modality(f"MODALITY{m}", adapter.port, files) for m, files in enumerate(modality_files)]
        progress = lambda: sum(len(m.acknowledged) for m in modalities) / len(sent)
        deadline = time.monotonic() + DEADLINE_S
        with MemoryWatch(adapter) as memory:
            senders = [threading.Thread(target=m.run, args=(deadline,)) for m in modalities]
            injector = threading.Thread(target=_faults, args=(fake, adapter, progress, fault_log), daemon=True)
            injector.start()
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
            injector.join(30)
            fake.clear_faults()
            adapter.wait_until_drained(timeout=120)
        assert not injector.is_alive(), f"faults still pending: {fault_log}"
        adapter.stop()
    finally:
        if adapter.process.is_running():
            adapter.stop()
        fake.stop()
    duration = time.monotonic() - started

    acknowledged = set().union(*(m.acknowledged for m in modalities))
    stored = fake.instances()
    lost = sorted(uid for uid in acknowledged if uid not in stored)
    altered = sorted(
        uid for uid in acknowledged
        if uid in stored and dataset_bytes_after_meta(stored[uid].read_bytes()) != dataset_bytes_after_meta(sent[uid].path)
    )
    # The store keys instances by UID, as the Healthcare API does: a second copy of an instance
    # shows as an upload answered 409 (different bytes) or as a stored UID nobody sent.
    conflicts = [r for r in fake.request_log if r.method == "POST" and r.status == 409]
    strangers = sorted(set(stored) - set(sent))
    duplicated = len(conflicts) + len(strangers)
    dead = list((adapter.spool_dir / "dead").glob("*.dcm"))
    repeat_uploads = sum(1 for r in fake.stow_requests() if r.status == 200) - len(stored)
    faulted_by_kind: dict[str, int] = {}
    for r in fake.request_log:
        if r.fault in ("fail", "drop", "delay"):
            kind = f"{r.status}" if r.fault == "fail" else ("timeout" if r.fault == "delay" else "dropped")
            faulted_by_kind[kind] = faulted_by_kind.get(kind, 0) + 1
    faulted = " ".join(f"{kind}:{count}" for kind, count in sorted(faulted_by_kind.items()))

    after_restart = [rss for _, pid, rss in memory.samples if pid == adapter.process.pid]
    warm = after_restart[len(after_restart) // 3: 2 * len(after_restart) // 3] or after_restart
    late = after_restart[2 * len(after_restart) // 3:] or after_restart
    figure = (
        f"SOAK sent={len(sent)} acknowledged={len(acknowledged)} stored={len(stored)} lost={len(lost)} "
        f"duplicated={duplicated} dead-lettered={len(dead)} altered={len(altered)} | attempts={sum(m.attempts for m in modalities)} "
        f"refused={sum(m.refusals for m in modalities)} broken={sum(m.broken for m in modalities)} repeat_uploads={repeat_uploads} faulted_uploads=[{faulted}] "
        f"| rss_mid={max(warm) >> 20}MiB rss_late={max(late) >> 20}MiB | {duration:.0f}s | faults: {', '.join(fault_log)}"
    )
    print(f"\n{figure}")
    assert len(acknowledged) == len(sent), figure  # every instance eventually acknowledged
    assert lost == [] and altered == [] and duplicated == 0 and dead == [], figure
    assert adapter.queue_entries() == [] and adapter.incoming_files() == [], figure
    assert len(fault_log) == 8, figure
    assert {"429", "500", "timeout", "dropped"} <= set(faulted_by_kind), figure  # the uploads met the faults
    assert max(late) <= max(warm) * 1.25 + (16 << 20), figure  # flat, not growing with the count
