"""Bounded memory (DESIGN invariant 4): a 1 GB instance passes through with a small, flat RSS.

The adapter's peak RSS (its whole process tree, sampled every 50 ms) is the figure; the test
prints it. The instance must also arrive byte-exact, compared by streamed hashes.
"""

from __future__ import annotations

from pathlib import Path

from support.adapter import ADAPTER_AET, FAST_PATH, LocalAdapter
from support.dicom_files import dataset_sha256_after_meta, write_large_instance
from support.orthanc import Orthanc
from support.processes import RssSampler
from support.sender import send_files

ONE_GB = 1 << 30
# What one large instance may add to the adapter's memory (all its processes) over its idle
# size: a flat amount, however large the instance. (An absolute ceiling would move with every
# library the processes import: the codec plugins of the transforms added 3 MiB each.)
RSS_GROWTH = 64 << 20


def _idle_rss(pid: int) -> int:
    sampler = RssSampler(pid)
    sampler.sample()
    return sampler.peak_total_rss_bytes


def _assert_flat(peak: int, idle: int) -> None:
    assert peak - idle < RSS_GROWTH, f"peak RSS {peak / 2**20:.0f} MiB, idle {idle / 2**20:.0f} MiB"


def test_one_gigabyte_instance_streams_through_with_small_rss(tmp_path: Path, fresh_orthanc: Orthanc):
    big = write_large_instance(tmp_path / "big.dcm", ONE_GB, fill="random", seed=7)
    assert big.size >= ONE_GB
    with LocalAdapter(tmp_path / "adapter", fresh_orthanc.dicomweb_url) as adapter:
        idle = _idle_rss(adapter.process.pid)
        with RssSampler(adapter.process.pid) as sampler:
            [result] = send_files([big.path], adapter.port, called_aet=ADAPTER_AET)
            assert result.status == 0, result
            adapter.wait_until_drained(timeout=600)
        peak = sampler.peak_total_rss_bytes
        print(f"\nadapter peak RSS while receiving and uploading a {big.size / 2**30:.2f} GiB instance: {peak / 2**20:.1f} MiB (idle {idle / 2**20:.1f})")
        _assert_flat(peak, idle)
        assert not adapter.dead_letters(), adapter.logs()[-2000:]
    stored = tmp_path / "stored.dcm"
    fresh_orthanc.retrieve_instance_to_file(big.study_instance_uid, big.series_instance_uid, big.sop_instance_uid, stored)
    assert dataset_sha256_after_meta(stored) == dataset_sha256_after_meta(big.path)


def test_a_large_instance_is_retrieved_by_c_get_with_small_rss(tmp_path: Path, fresh_orthanc: Orthanc):
    """WADO-RS streamed to the staging file, C-STOREd from disk: memory stays flat on the way out too."""
    from support.dcmtk import run_dcmtk

    big = write_large_instance(tmp_path / "big.dcm", 256 << 20, fill="random", seed=11)
    out = tmp_path / "got"
    out.mkdir()
    with LocalAdapter(tmp_path / "adapter", fresh_orthanc.dicomweb_url) as adapter:
        [result] = send_files([big.path], adapter.port, called_aet=ADAPTER_AET)
        assert result.status == 0, result
        adapter.wait_until_drained(timeout=600)
        keys = ["-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={big.study_instance_uid}",
                "-k", f"SeriesInstanceUID={big.series_instance_uid}", "-k", f"SOPInstanceUID={big.sop_instance_uid}"]
        idle = _idle_rss(adapter.process.pid)
        with RssSampler(adapter.process.pid) as sampler:
            got = run_dcmtk("getscu", ["-S", "+B", "-od", str(out), "-aec", ADAPTER_AET, *keys, "127.0.0.1", str(adapter.port)], timeout=600)
        peak = sampler.peak_total_rss_bytes
        print(f"\nadapter peak RSS while sending a {big.size / 2**20:.0f} MiB instance by C-GET: {peak / 2**20:.1f} MiB (idle {idle / 2**20:.1f})")
        _assert_flat(peak, idle)
        if not FAST_PATH:  # plain pynetdicom would hold it whole: it fails, with the reason logged
            assert list(out.iterdir()) == []
            adapter.wait_for_log("more than plain pynetdicom sends in bounded memory")
            return
        assert got.returncode == 0, got.stderr[-2000:]
    (received,) = out.iterdir()
    assert dataset_sha256_after_meta(received) == dataset_sha256_after_meta(big.path)
