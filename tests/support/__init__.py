"""Reusable test-support layer: real peers (Orthanc, DCMTK), fakes, processes, DICOM data.

Each module has one job:
  processes.py          ports, readiness waits, ManagedProcess, RSS measurement
  multipart.py          multipart/related encode and a streaming decoder
  dicomweb.py           minimal STOW-RS / WADO-RS client helpers for tests
  orthanc.py            a real Orthanc + DICOMweb plugin on free ports
  dcmtk.py              DCMTK command-line tools (storescu, dcmsend, echoscu, storescp)
  dicom_files.py        corpora, generators, byte-exactness helpers, PHI markers
  healthcare_api_fake.py  a DICOMweb server answering like the Cloud Healthcare API
  sender.py             a pynetdicom C-STORE SCU that sends files byte for byte
  adapter.py            the adapter under test as a process (`dicom-adapter local`)
  shipped.py            what users install, built once per session: the wheel's venv, functions/ deployed alone
  image_recipe.py       the Dockerfile's build stage reproduced in a venv (no container engine here)
  debian_chroot.py      a debootstrapped stock Debian in a folder (cached tarball, mounts, clean-up)

Tests import it as the top-level package `support` (tests/ is on sys.path under pytest's
default rootdir-relative import mode; tests/ itself is not a package).
"""
