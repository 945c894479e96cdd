"""The README's Quick start on a stock Debian 12, as a newcomer would run it.

A debootstrapped bookworm (support/debian_chroot.py) with only what the README says the machine
needs first (`git ca-certificates sudo`), a user with sudo, this checkout copied into its home;
then, as that user, `./scripts/quickstart.sh` until the adapter says `ready`, and the README's
`storescu` (DCMTK's, found on the plain PATH) sends an instance that must arrive in Orthanc byte
for byte. The adapter must be in its own venv: the system Python stays clean and `storescu` stays
DCMTK's. Ports are free ones (the Quick start's documented ORTHANC_HTTP_PORT, ORTHANC_DIMSE_PORT
and DIMSE_PORT), since the chroot shares this machine's network.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from support.debian_chroot import DebianChroot, require_chroot
from support.dicom_files import dataset_bytes_after_meta, make_ct_instance
from support.dicomweb import retrieve_instance_part10
from support.processes import ManagedProcess, free_port
from support.shipped import REPO

pytestmark = pytest.mark.slow
USER = "newcomer"
CHECKOUT = f"/home/{USER}/dicom-adapter"
# The sandbox's HTTPS egress is re-signed by a local CA; a machine behind such a proxy trusts its
# CA the same way (Debian's pip, in the venv, uses the system store).
LOCAL_CAS = Path("/usr/local/share/ca-certificates")


def checkout_files() -> list[str]:
    """What `git clone` of this checkout would hold (tracked files, and new ones not yet committed)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout
    return sorted({name for name in listed.split("\0") if name and (REPO / name).is_file()})


@pytest.fixture
def stock_debian() -> Iterator[DebianChroot]:
    require_chroot()
    # Outside pytest's tmp folders: its clean-up of old runs must never walk into a bind mount.
    parent = Path(tempfile.mkdtemp(prefix="dicom-adapter-chroot-", dir="/var/tmp"))
    try:
        with DebianChroot("bookworm", parent / "root") as debian:
            debian.run("apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q git ca-certificates sudo")
            for ca in LOCAL_CAS.glob("*.crt"):
                shutil.copy2(ca, debian.path(str(LOCAL_CAS)) / ca.name)
            debian.run("update-ca-certificates")
            debian.run(f"useradd --create-home --shell /bin/bash {USER} && echo '{USER} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{USER}")
            for name in checkout_files():
                target = debian.path(CHECKOUT) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, target)
            debian.run(f"chown -R {USER}:{USER} {CHECKOUT}")
            yield debian
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_the_quick_start_works_on_a_stock_debian_12(tmp_path: Path, stock_debian: DebianChroot):
    http_port, orthanc_dimse_port, dimse_port = free_port(), free_port(), free_port()
    ports = {"ORTHANC_HTTP_PORT": str(http_port), "ORTHANC_DIMSE_PORT": str(orthanc_dimse_port), "DIMSE_PORT": str(dimse_port)}
    quickstart = ManagedProcess(
        stock_debian.command(f"cd {CHECKOUT} && exec setsid --wait ./scripts/quickstart.sh", user=USER, env=ports),
        log_dir=tmp_path, name="quickstart",
    )
    quickstart.start()
    try:
        quickstart.wait_for_output(r"\bready\b", timeout=1500)

        # The README's second terminal: DCMTK's storescu, whatever the venv installed.
        sent = make_ct_instance(stock_debian.path(f"/home/{USER}/some-image.dcm"))
        found = stock_debian.run("which storescu findscu storescp", user=USER).stdout.split()
        assert found == ["/usr/bin/storescu", "/usr/bin/findscu", "/usr/bin/storescp"]
        stock_debian.run(f"storescu -aec DICOMADAPTER 127.0.0.1 {dimse_port} ~/some-image.dcm", user=USER, timeout=120)

        dicomweb = f"http://127.0.0.1:{http_port}/dicom-web"
        deadline = time.monotonic() + 60
        while not requests.get(f"{dicomweb}/instances", params={"SOPInstanceUID": sent.sop_instance_uid}, timeout=5).content.strip(b"[] \n"):
            assert time.monotonic() < deadline, f"not in Orthanc after 60 s\n{quickstart.output_tail()}"
            assert quickstart.is_running(), quickstart.output_tail()
            time.sleep(0.5)
        stored = retrieve_instance_part10(dicomweb, sent.study_instance_uid, sent.series_instance_uid, sent.sop_instance_uid)
        assert dataset_bytes_after_meta(stored) == dataset_bytes_after_meta(sent.path)

        # Where the README says the command lives, and nothing of it in the system Python.
        assert stock_debian.path(f"{CHECKOUT}/.venv/bin/dicom-adapter").is_file()
        system_python = subprocess.run(stock_debian.command("python3 -c 'import pynetdicom'", user=USER), capture_output=True, text=True)
        assert system_python.returncode != 0 and "No module named 'pynetdicom'" in system_python.stderr

        # Ctrl-C: SIGINT to the terminal's foreground process group, the script's own (setsid
        # gave it one, as a shell gives each command line). runuser stands in for the login and
        # is not in it: runuser answers a signal of its own by killing the shell 2 s later.
        os.killpg(script_process_group(stock_debian), signal.SIGINT)
        try:
            quickstart.popen.wait(timeout=90)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            running = stock_debian.describe_processes()
            dump_adapter_stacks(stock_debian)
            pytest.fail(f"Ctrl-C did not stop the Quick start within 90 s; running:\n{running}\n{quickstart.output_tail()}")
        assert stock_debian.processes() == [], f"the Quick start left processes running:\n{stock_debian.describe_processes()}"
        assert "stopped queued=0 dead_letters=0" in quickstart.stderr(), quickstart.output_tail()
    finally:
        quickstart.stop(timeout=30)


def script_process_group(debian: DebianChroot) -> int:
    """The process group quickstart.sh leads."""
    for pid in debian.processes():
        with contextlib.suppress(OSError):
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            # `bash ./scripts/quickstart.sh` itself (runuser's command line names it too)
            if arguments[0].endswith(b"bash") and arguments[1:2] == [b"./scripts/quickstart.sh"] and os.getpgid(pid) == pid:
                return pid
    raise AssertionError(f"quickstart.sh is not running:\n{debian.describe_processes()}")


def dump_adapter_stacks(debian: DebianChroot) -> None:
    """SIGUSR1: each adapter process writes its threads' stacks to the log (runtime/stack_dumps.py)."""
    for pid in debian.processes():
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"dicom-adapter" in command or b"edge_listener" in command:
                os.kill(pid, signal.SIGUSR1)
    time.sleep(2)
