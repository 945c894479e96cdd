"""The default number of listener processes follows a container's CPU limit (cgroup quota)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_listener.runtime.cpus import available_cpus, cgroup_cpu_quota

CPUS = len(os.sched_getaffinity(0))


def _v2(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(text + "\n")
    return root


def _v1(root: Path, quota: str, period: str = "100000") -> Path:
    (root / "cpu").mkdir(parents=True, exist_ok=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(period + "\n")
    return root


@pytest.mark.parametrize(("text", "limit"), [("max 100000", None), ("150000 100000", 1.5), ("50000 100000", 0.5), ("0 100000", None), ("garbage", None)])
def test_cgroup_v2_quota(tmp_path: Path, text: str, limit):
    assert cgroup_cpu_quota(_v2(tmp_path, text)) == limit


@pytest.mark.parametrize(("quota", "limit"), [("-1", None), ("200000", 2.0), ("25000", 0.25)])
def test_cgroup_v1_quota(tmp_path: Path, quota: str, limit):
    assert cgroup_cpu_quota(_v1(tmp_path, quota)) == limit


def test_no_cgroup_files_means_no_limit(tmp_path: Path):
    assert cgroup_cpu_quota(tmp_path) is None
    assert available_cpus(tmp_path) == CPUS


def test_a_quota_caps_the_count_rounded_up_never_below_one(tmp_path: Path):
    assert available_cpus(_v2(tmp_path / "half", "50000 100000")) == 1
    assert available_cpus(_v2(tmp_path / "one-and-a-half", "150000 100000")) == min(CPUS, 2)
    assert available_cpus(_v2(tmp_path / "many", "6400000 100000")) == CPUS  # more than we have: affinity decides
