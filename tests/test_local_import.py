"""The import path on one machine, end to end with real peers.

DCMTK and pynetdicom play the modalities, `dicom-adapter local` runs as a user runs it, and a
real Orthanc with its DICOMweb plugin is the store. Orthanc keeps STOW-RS bodies verbatim, so
what WADO-RS (transfer-syntax=*) returns is what the adapter uploaded.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest
from support.adapter import ADAPTER_AET, LocalAdapter, adapter_command
from support.checks import assert_byte_exact, corpus_rounds
from support.dcmtk import dcmsend, echoscu, storescu
from support.dicom_files import (
    make_ct_instance,
    make_ct_series,
)
from support.orthanc import Orthanc
from support.sender import send_files


@pytest.fixture
def store(fresh_orthanc: Orthanc) -> Orthanc:
    return fresh_orthanc


@pytest.fixture
def adapter(tmp_path: Path, store: Orthanc):
    with LocalAdapter(tmp_path / "adapter", store.dicomweb_url) as running:
        yield running


def test_pydicom_corpus_arrives_byte_exact_in_every_transfer_syntax(tmp_path: Path, store: Orthanc, adapter: LocalAdapter):
    syntaxes_seen: Counter[str] = Counter()
    # pydicom's only deflated file lacks the pad byte PS3.5 A.5 requires; add a valid one.
    deflated = make_ct_instance(tmp_path / "deflated.dcm", transfer_syntax="1.2.840.10008.1.2.1.99")
    for round_files in corpus_rounds([deflated]):
        store.delete_all()
        for start in range(0, len(round_files), 40):  # stay well under 128 presentation contexts
            batch = round_files[start : start + 40]
            results = send_files([f.path for f in batch], adapter.port, called_aet=ADAPTER_AET)
            refused = [(r.path.name, hex(r.status or 0), r.error_comment) for r in results if r.status != 0]
            assert not refused, refused
        adapter.wait_until_drained()
        assert not adapter.dead_letters(), adapter.logs()[-3000:]
        for corpus_file in round_files:
            assert_byte_exact(
                store,
                corpus_file.path,
                corpus_file.study_instance_uid,
                corpus_file.series_instance_uid,
                corpus_file.sop_instance_uid,
                "PYSCU",
            )
            syntaxes_seen[corpus_file.transfer_syntax_uid] += 1
    # The corpus must really cover the encodings the issue names.
    for required in (
        "1.2.840.10008.1.2",  # implicit VR LE
        "1.2.840.10008.1.2.1",  # explicit VR LE
        "1.2.840.10008.1.2.2",  # explicit VR BE
        "1.2.840.10008.1.2.1.99",  # deflated
        "1.2.840.10008.1.2.4.50",  # JPEG baseline
        "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
        "1.2.840.10008.1.2.5",  # RLE
    ):
        assert syntaxes_seen[required], f"no corpus file in {required}"


def test_dcmtk_storescu_and_dcmsend_store_like_a_pacs(tmp_path: Path, store: Orthanc, adapter: LocalAdapter):
    series = make_ct_series(tmp_path / "ct", 6)
    echo = echoscu("127.0.0.1", adapter.port, called_aet=ADAPTER_AET)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    first = storescu([i.path for i in series[:3]], "127.0.0.1", adapter.port, called_aet=ADAPTER_AET)
    assert first.returncode == 0, first.stdout + first.stderr
    second = dcmsend([i.path for i in series[3:]], "127.0.0.1", adapter.port, called_aet=ADAPTER_AET)
    assert second.returncode == 0, second.stdout + second.stderr
    adapter.wait_until_drained()
    assert store.list_sop_instance_uids() == sorted(i.sop_instance_uid for i in series)
    for instance in series[:3]:
        # storescu re-encodes nothing for uncompressed files without padding: still exact.
        assert_byte_exact(store, instance.path, instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid, "STORESCU")


def test_wrong_called_ae_is_rejected(adapter: LocalAdapter):
    echo = echoscu("127.0.0.1", adapter.port, called_aet="SOMEONEELSE")
    assert echo.returncode != 0
    assert "Called AE Title Not Recognized" in echo.stdout + echo.stderr


def test_calling_ae_allow_list(tmp_path: Path, store: Orthanc):
    dictionary = '[{"name": "KNOWN", "host": "127.0.0.1", "port": 11112}]'
    with LocalAdapter(
        tmp_path / "adapter", store.dicomweb_url, extra_args=["--require_known_calling_aet"], extra_env={"ENV_AETS_JSON": dictionary}
    ) as adapter:
        assert echoscu("127.0.0.1", adapter.port, called_aet=ADAPTER_AET, calling_aet="KNOWN").returncode == 0
        refused = echoscu("127.0.0.1", adapter.port, called_aet=ADAPTER_AET, calling_aet="STRANGER")
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr


def test_store_down_during_send_loses_nothing(tmp_path: Path, store: Orthanc, adapter: LocalAdapter):
    series = make_ct_series(tmp_path / "ct", 200, size_kb=20)
    store.stop()
    sent = storescu([i.path for i in series], "127.0.0.1", adapter.port, called_aet=ADAPTER_AET)
    assert sent.returncode == 0, sent.stdout[-2000:] + sent.stderr[-2000:]
    assert len(adapter.queue_entries()) == 200
    store.start()
    adapter.wait_until_drained(timeout=180)
    assert store.list_sop_instance_uids() == sorted(i.sop_instance_uid for i in series)
    assert not adapter.dead_letters()


def test_kill_9_after_acks_then_restart_uploads_everything_once(tmp_path: Path, store: Orthanc, adapter: LocalAdapter):
    series = make_ct_series(tmp_path / "ct", 200, size_kb=20)
    store.stop()  # hold the uploads back so the kill lands between ack and upload
    sent = storescu([i.path for i in series], "127.0.0.1", adapter.port, called_aet=ADAPTER_AET)
    assert sent.returncode == 0
    adapter.kill()
    assert len(adapter.queue_entries()) == 200
    store.start()
    adapter.start()
    adapter.wait_until_drained(timeout=180)
    uids = store.list_sop_instance_uids()
    assert uids == sorted(i.sop_instance_uid for i in series)
    assert store.instance_count() == 200
    assert "recovered queued instances from the spool" in adapter.logs()


def test_kill_9_while_uploading(tmp_path: Path, store: Orthanc, adapter: LocalAdapter):
    series = make_ct_series(tmp_path / "ct", 200, size_kb=20)
    sent = storescu([i.path for i in series], "127.0.0.1", adapter.port, called_aet=ADAPTER_AET)
    assert sent.returncode == 0
    adapter.kill()  # uploads run concurrently with the sends: some done, some not
    adapter.start()
    adapter.wait_until_drained(timeout=180)
    assert store.list_sop_instance_uids() == sorted(i.sop_instance_uid for i in series)
    for instance in series[::20]:
        assert_byte_exact(store, instance.path, instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid, "STORESCU")


def test_sigterm_drains_and_exits_zero_keeping_the_queue(tmp_path: Path, store: Orthanc, adapter: LocalAdapter):
    series = make_ct_series(tmp_path / "ct", 10, size_kb=10)
    store.stop()
    assert storescu([i.path for i in series], "127.0.0.1", adapter.port, called_aet=ADAPTER_AET).returncode == 0
    assert adapter.stop() == 0
    assert len(adapter.queue_entries()) == 10
    status = subprocess.run(
        adapter_command() + ["status", "--spool_dir", str(adapter.spool_dir), "--json"], capture_output=True, text=True, check=True
    )
    assert '"queued": 10' in status.stdout
    store.start()
    adapter.start()
    adapter.wait_until_drained()
    assert store.instance_count() == 10



def test_sigusr1_dumps_each_process_stacks_and_it_keeps_serving(tmp_path: Path, store: Orthanc):
    """The diagnostics for an adapter that does not stop: `kill -USR1` on any of its processes."""
    import os
    import signal
    import time

    from support.processes import descendant_pids

    first, second = (make_ct_instance(tmp_path / f"{name}.dcm") for name in ("first", "second"))
    with LocalAdapter(tmp_path / "adapter", store.dicomweb_url, extra_args=["--dimse_processes", "2"]) as adapter:
        # `ready` means the listeners are; an upload has shown the upload process is up too.
        assert storescu([first.path], "127.0.0.1", adapter.port, called_aet=ADAPTER_AET).returncode == 0
        adapter.wait_until_drained()
        processes = [adapter.process.pid, *descendant_pids(adapter.process.pid)]
        assert len(processes) >= 3  # main listener, second listener, upload process
        for pid in processes:
            os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + 15
        while adapter.logs().count("Current thread 0x") < len(processes) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert adapter.logs().count("Current thread 0x") == len(processes), adapter.logs()[-3000:]
        assert 'File "' in adapter.logs() and "(most recent call first)" in adapter.logs()
        assert "exited unexpectedly" not in adapter.logs()
        assert echoscu("127.0.0.1", adapter.port, called_aet=ADAPTER_AET).returncode == 0
        assert storescu([second.path], "127.0.0.1", adapter.port, called_aet=ADAPTER_AET).returncode == 0
        adapter.wait_until_drained()
        assert adapter.stop() == 0
    assert store.instance_count() == 2


def test_a_crashed_child_process_is_restarted_and_one_stopped_by_sigterm_is_not(tmp_path: Path, store: Orthanc):
    """Restart on failure only: a SIGTERM reaches a child when the whole group is stopped
    (systemd, the benchmark), and a listener restarted then would outlive nobody's request."""
    import os
    import signal
    import time

    from support.processes import descendant_pids

    def wait_for(text: str, count: int = 1) -> None:
        deadline = time.monotonic() + 15
        while adapter.logs().count(text) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        assert adapter.logs().count(text) >= count, adapter.logs()[-3000:]

    instances = [make_ct_instance(tmp_path / f"ct{i}.dcm") for i in range(3)]
    with LocalAdapter(tmp_path / "adapter", store.dicomweb_url, extra_args=["--dimse_processes", "2"]) as adapter:
        assert storescu([instances[0].path], "127.0.0.1", adapter.port, called_aet=ADAPTER_AET).returncode == 0
        adapter.wait_until_drained()  # the upload process is up
        children = descendant_pids(adapter.process.pid)
        assert len(children) == 2  # the second listener and the upload process
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        wait_for("listener process exited unexpectedly; restarting it")
        wait_for("upload process exited unexpectedly; restarting it")
        assert storescu([instances[1].path], "127.0.0.1", adapter.port, called_aet=ADAPTER_AET).returncode == 0
        adapter.wait_until_drained()

        restarted = descendant_pids(adapter.process.pid)
        assert len(restarted) == 2 and not set(restarted) & set(children)
        # The listener drains and exits 0 (or, still starting, is ended by the signal: also a
        # stop on request); the upload process ignores SIGTERM.
        for pid in restarted:
            os.kill(pid, signal.SIGTERM)
        wait_for("listener process stopped on request; not restarting it")
        time.sleep(2.5)  # two more supervision passes
        assert adapter.logs().count("exited unexpectedly") == 2
        assert len(descendant_pids(adapter.process.pid)) == 1
        assert echoscu("127.0.0.1", adapter.port, called_aet=ADAPTER_AET).returncode == 0
        assert storescu([instances[2].path], "127.0.0.1", adapter.port, called_aet=ADAPTER_AET).returncode == 0
        adapter.wait_until_drained()
        assert adapter.stop() == 0
    assert store.instance_count() == 3


def test_several_listener_processes_share_the_port(tmp_path: Path, store: Orthanc):
    import concurrent.futures

    shards = [make_ct_series(tmp_path / f"ct{i}", 25, size_kb=10) for i in range(4)]
    with LocalAdapter(tmp_path / "adapter", store.dicomweb_url, extra_args=["--dimse_processes", "2"]) as adapter:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            runs = list(pool.map(lambda shard: storescu([i.path for i in shard], "127.0.0.1", adapter.port, called_aet=ADAPTER_AET), shards))
        assert [r.returncode for r in runs] == [0, 0, 0, 0]
        adapter.wait_until_drained()
        assert adapter.stop() == 0
    assert store.list_sop_instance_uids() == sorted(i.sop_instance_uid for shard in shards for i in shard)


def test_concurrent_associations_are_spread_evenly_over_listener_processes(tmp_path: Path):
    """With SO_REUSEPORT the kernel's hash put 3 or 4 of 4 associations on one process now and
    then (one interpreter lock for all); sharing one socket, the less busy process accepts."""
    import time

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    with LocalAdapter(tmp_path / "adapter", "http://127.0.0.1:9/dicom-web", extra_args=["--dimse_processes", "2"]) as adapter:
        held = []
        try:
            for _ in range(4):
                ae = AE(ae_title="SPREAD")
                ae.add_requested_context(Verification)
                assoc = ae.associate("127.0.0.1", adapter.port, ae_title=ADAPTER_AET)
                assert assoc.is_established
                held.append(assoc)
            deadline = time.monotonic() + 10
            while (accepted := _accepting_processes(adapter.logs())).total() < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert sorted(accepted.values()) == [2, 2], accepted
        finally:
            for assoc in held:
                assoc.release()
        assert adapter.stop() == 0


def _accepting_processes(logs: str) -> Counter:
    """Associations accepted, by the process name in each log line."""
    return Counter(line.split("[", 1)[1].split("]", 1)[0] for line in logs.splitlines() if "edge_listener.front.server association accepted" in line)


def test_child_processes_do_not_outlive_a_killed_main_process(tmp_path: Path, store: Orthanc):
    import os
    import signal
    import time

    from support.processes import descendant_pids

    with LocalAdapter(tmp_path / "adapter", store.dicomweb_url, extra_args=["--dimse_processes", "2"]) as adapter:
        children = descendant_pids(adapter.process.pid)
        assert len(children) >= 2  # a listener and the upload process (and multiprocessing's helper)
        os.kill(adapter.process.pid, signal.SIGKILL)  # the main process only, as the OOM killer would
        deadline = time.monotonic() + 15
        alive = children
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [pid for pid in children if os.path.exists(f"/proc/{pid}") and "zombie" not in open(f"/proc/{pid}/status").read()]
        assert alive == [], f"orphaned child processes: {alive}"
