"""A newer Orthanc than this machine's, for running the same tests on a second DICOMweb store.

Debian 12 (this machine) packages Orthanc 1.10 with DICOMweb plugin 1.7; Debian 13 packages
1.12 with 1.20, which cannot be installed beside it. So Debian 13 is debootstrapped into a
folder (support/debian_chroot.py, cached as a tarball), Debian's orthanc and orthanc-dicomweb
are installed in it with apt, and support/orthanc.Orthanc runs that binary in the chroot
(`install=`), on free ports of the shared network. Nothing is started by the packages
(policy-rc.d); every process in the chroot dies when the context ends.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from .debian_chroot import DebianChroot
from .orthanc import OrthancInstall

SUITE = "trixie"


@contextmanager
def debian13_orthanc(share: Sequence[Path] = ()) -> Iterator[OrthancInstall]:
    """Debian 13's Orthanc and DICOMweb plugin, installed in a fresh chroot for as long as the
    context lasts (about 30 s the first time on a machine, 15 s after). `share`: folders of this
    machine seen at the same paths inside (bench/query_bench.py keeps its Orthanc's there)."""
    # Outside pytest's tmp folders: its clean-up of old runs must never walk into a bind mount.
    parent = Path(tempfile.mkdtemp(prefix="dicom-adapter-orthanc13-", dir="/var/tmp"))
    try:
        with DebianChroot(SUITE, parent / "root") as debian:
            debian.run("apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends orthanc orthanc-dicomweb")
            for folder in share:
                debian.share(Path(folder))
            version = debian.run("dpkg-query -W -f '${Version} ' orthanc orthanc-dicomweb").stdout.split()
            yield OrthancInstall(f"Debian 13 Orthanc {version[0]} with DICOMweb {version[1]}", root=debian.root)
    finally:
        shutil.rmtree(parent, ignore_errors=True)
