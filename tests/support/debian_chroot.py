"""A stock Debian in a temporary folder, for tests that need a machine with nothing else on it.

`debootstrap SUITE` runs once per machine; its result is cached as a tarball
($DICOM_ADAPTER_TEST_CACHE, default /var/cache/dicom-adapter-tests) and unpacked for each use.
While a DebianChroot is open, /proc, /sys, /dev and /dev/pts are mounted in it and it shares
this machine's network (and its resolv.conf and hosts). On leaving, every process whose root
is the chroot is killed, the mounts are undone (innermost first) and the folder is removed,
also when the test failed. Needs root and debootstrap (scripts/test.sh installs it).

A chroot has no init system, so a package's postinst must not start its service (Orthanc's
would listen on 8042/4242 and outlive the test): /usr/sbin/policy-rc.d says no, as Debian's
own chroot builders (pbuilder, sbuild) do. Nothing else is changed from what debootstrap gives.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

MIRROR = "http://deb.debian.org/debian"
CACHE_DIR = Path(os.environ.get("DICOM_ADAPTER_TEST_CACHE", "/var/cache/dicom-adapter-tests"))
MOUNTS = (("proc", ["-t", "proc", "proc"]), ("sys", ["-t", "sysfs", "sysfs"]), ("dev", ["--bind", "/dev"]), ("dev/pts", ["--bind", "/dev/pts"]))
PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _can_mount() -> bool:
    """CAP_SYS_ADMIN in the effective set (bit 21): a plain container (Cloud Build's) lacks it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 21 & 1)
    return False


def chroot_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, mount)"
    if not _can_mount():
        return "needs CAP_SYS_ADMIN to mount /proc, /sys and /dev in the chroot (an unprivileged container)"
    if not shutil.which("debootstrap"):
        return "debootstrap is not installed (scripts/test.sh installs it)"
    return None


def require_chroot() -> None:
    """Skip the calling test where a chroot cannot be made; under CI=true fail instead, since
    CI must run what needs one (the stock-Debian Quick start, the second DICOMweb store)."""
    import pytest

    reason = chroot_unavailable_reason()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"CI must be able to make a Debian chroot: {reason}")
    if reason:
        pytest.skip(reason)


def base_tarball(suite: str) -> Path:
    """The debootstrapped `suite` as a tarball, made on first use (about a minute) and kept."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tarball = CACHE_DIR / f"debootstrap-{suite}.tar.gz"
    if tarball.exists():
        return tarball
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as work:
        root = Path(work) / "root"
        result = subprocess.run(["debootstrap", suite, str(root), MIRROR], capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise RuntimeError(f"debootstrap {suite} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        partial = Path(work) / tarball.name
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-czf", str(partial), "."], check=True, timeout=900)
        partial.rename(tarball)  # whole or not at all: an interrupted run leaves no half tarball
    return tarball


class DebianChroot:
    """A fresh, unpacked `suite` under `root` (a folder that must not exist yet)."""

    def __init__(self, suite: str, root: Path) -> None:
        self.suite = suite
        self.root = Path(root)
        self.mounted: list[Path] = []

    def __enter__(self) -> "DebianChroot":
        tarball = base_tarball(self.suite)
        try:
            self.root.mkdir(parents=True)
            subprocess.run(["tar", "-C", str(self.root), "--numeric-owner", "-xzf", str(tarball)], check=True, timeout=900)
            for target, args in MOUNTS:
                path = self.root / target
                subprocess.run(["mount", *args, str(path)], check=True, timeout=60)
                self.mounted.append(path)
            # This machine's name service: resolv.conf, and hosts, which names this machine as
            # a real Debian's does. Without it every gethostid() asks DNS for the hostname, and a
            # dropped UDP answer stalls it for the resolver's 5 s: Orthanc's DICOMweb plugin 1.20
            # calls it once per study of a QIDO-RS answer (seen with strace; 1,000 studies took
            # ~100 s instead of 0.3 s).
            for name in ("resolv.conf", "hosts"):
                shutil.copy2(f"/etc/{name}", self.root / "etc" / name)
            policy = self.root / "usr" / "sbin" / "policy-rc.d"
            policy.write_text("#!/bin/sh\n# a chroot has no init: packages must not start their services\nexit 101\n")
            policy.chmod(0o755)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def share(self, folder: Path) -> None:
        """Bind-mount `folder` of this machine at the same path in the chroot (undone on close),
        so a program in the chroot sees the same paths as this machine."""
        target = self.root / str(folder).lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(folder), str(target)], check=True, timeout=60)
        self.mounted.append(target)

    def path(self, inside: str) -> Path:
        """This machine's path of `inside` (an absolute path in the chroot)."""
        return self.root / inside.lstrip("/")

    def command(self, script: str, *, user: str | None = None, env: Mapping[str, str] | None = None) -> list[str]:
        """`bash -c script` in the chroot with a clean environment (only PATH, HOME, LANG and
        `env`), as root or as `user`."""
        home = f"/home/{user}" if user else "/root"
        variables = {"PATH": PLAIN_PATH, "HOME": home, "LANG": "C.UTF-8", **(env or {})}
        as_user: Sequence[str] = ["/usr/sbin/runuser", "-u", user, "--"] if user else []
        return ["chroot", str(self.root), *as_user, "/usr/bin/env", "-i",
                *(f"{k}={v}" for k, v in variables.items()), "/bin/bash", "-c", script]

    def run(self, script: str, *, user: str | None = None, env: Mapping[str, str] | None = None,
            timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        """Run to the end; a failure raises with the script's output."""
        result = subprocess.run(self.command(script, user=user, env=env), capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{script!r} exited {result.returncode} in the chroot\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def processes(self) -> list[int]:
        """Every process whose root directory is this chroot."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "root") == str(self.root):
                        found.append(int(entry.name))
                except OSError:
                    continue  # gone meanwhile, or not ours to read
        return found

    def describe_processes(self) -> str:
        """The processes inside, one per line (pid, parent, state, command line), for a failure message."""
        lines = []
        for pid in self.processes():
            try:
                status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue  # gone meanwhile
            lines.append(f"{pid} (parent {status.get('PPid', '?')}, {status.get('State', '?')}): {command[:300]}")
        return "\n".join(lines) or "none"

    def close(self) -> None:
        """Kill what runs inside, unmount, remove. Safe to call twice."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.processes():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.1)
        for path in reversed(self.mounted):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "--lazy", str(path)], check=True)
        self.mounted.clear()
        still_mounted = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if line.split()[1].startswith(str(self.root) + "/")]
        if still_mounted:  # never rm -rf through a live /dev bind mount
            raise RuntimeError(f"still mounted under the chroot: {still_mounted}")
        shutil.rmtree(self.root, ignore_errors=True)
