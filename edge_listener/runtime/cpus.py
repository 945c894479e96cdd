"""How many CPUs the adapter may use: for the default number of listener processes.

`os.sched_getaffinity` counts the CPUs the process may be scheduled on, but in a container with
a CPU limit (Docker `--cpus`, a Kubernetes limit) those are all the node's CPUs, while the
cgroup's CFS quota is what the processes actually get; starting a listener per node CPU there
would only add memory and throttling. Python (before 3.13's os.process_cpu_count, which still
ignores quotas) and psutil do not read the quota, so it is read here: cgroup v2 `cpu.max`, or
cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs of this process's affinity, capped by its cgroup's CPU quota (rounded up)."""
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(cgroup_root)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup's CPU limit in CPUs (1.5 for 150000/100000), or None if there is none."""
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]  # v2: "max 100000" or "150000 100000"
    except (OSError, ValueError):
        try:  # v1
            quota = (cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text().strip()  # -1: no limit
            period = (cgroup_root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        limit = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return limit if limit > 0 else None
