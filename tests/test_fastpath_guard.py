"""The fast path's guard (edge_listener/front/fastpath/guard.py), as users meet it.

On the pinned pynetdicom, untouched, the guard lets the fast path in. On another pynetdicom
release (a real one, 3.0.3, installed from the package registry), or on the pinned one with a
function it relies on changed, the edge must start on plain pynetdicom with a WARNING that
names the difference, and still store every instance byte for byte.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from support.adapter import LocalAdapter
from support.checks import assert_byte_exact
from support.dicom_files import pydicom_corpus, unique_by_sop_instance_uid
from support.sender import send_files
from support.shipped import clean_env, create_venv, wheel_venv

OTHER_PYNETDICOM = "3.0.3"  # a real release the fast path was not written against
# Any function the guard fingerprints: replaced by one that behaves the same (a local patch).
CHANGE_A_PINNED_FUNCTION = """
import pynetdicom.dul as dul
_kill_dul = dul.DULServiceProvider.kill_dul
def kill_dul(self):
    return _kill_dul(self)
dul.DULServiceProvider.kill_dul = kill_dul
"""


def _mismatches(python: Path, env: dict[str, str] | None = None) -> list[str]:
    code = "import json; from edge_listener.front.fastpath import guard; print(json.dumps(guard.mismatches()))"
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120, env=env or clean_env())
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_the_pinned_pynetdicom_as_installed_passes_the_guard():
    assert _mismatches(wheel_venv().python) == []


@pytest.fixture(scope="module")
def changed_function_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sitecustomize that changes a fingerprinted pynetdicom function in every process
    started with this folder on PYTHONPATH (the listener processes are children)."""
    folder = tmp_path_factory.mktemp("changed-pynetdicom")
    (folder / "sitecustomize.py").write_text(CHANGE_A_PINNED_FUNCTION)
    return folder


def test_a_changed_function_is_named(changed_function_dir: Path):
    env = {**clean_env(), "PYTHONPATH": str(changed_function_dir)}
    assert _mismatches(wheel_venv().python, env) == [
        "pynetdicom.dul:DULServiceProvider.kill_dul is not the code the fast path was written against"
    ]


@pytest.fixture(scope="module")
def other_pynetdicom_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with pynetdicom 3.0.3 in front of the wheel's installation (which it reaches
    through a .pth file): the adapter as shipped, on another pynetdicom release."""
    venv = create_venv(tmp_path_factory.mktemp("other-pynetdicom") / "venv")
    venv.pip_install("--no-deps", f"pynetdicom=={OTHER_PYNETDICOM}")
    (site,) = (venv.path / "lib").glob("python3*/site-packages")
    (wheel_site,) = (wheel_venv().path / "lib").glob("python3*/site-packages")
    (site / "dicom_adapter_wheel.pth").write_text(f"{wheel_site}\n")
    return venv.python


def test_another_pynetdicom_release_is_named(other_pynetdicom_python: Path):
    assert _mismatches(other_pynetdicom_python) == [
        f"pynetdicom {OTHER_PYNETDICOM} is installed, the fast path is written for 3.0.4"
    ]


def _corpus_sample() -> list:
    """One file of each transfer syntax of the corpus, distinct SOP Instance UIDs."""
    return unique_by_sop_instance_uid([files[0] for files in pydicom_corpus().values()])


@pytest.mark.parametrize("case", ["another release", "a changed function"])
def test_the_edge_serves_on_plain_pynetdicom_with_a_warning_and_stores_byte_exact(
    case, tmp_path, fresh_orthanc, other_pynetdicom_python, changed_function_dir
):
    if case == "another release":
        program, env, named = [str(other_pynetdicom_python), "-m", "edge_listener"], {}, f"pynetdicom {OTHER_PYNETDICOM} is installed"
    else:
        program, env = [str(wheel_venv().script("dicom-adapter"))], {"PYTHONPATH": str(changed_function_dir)}
        named = "DULServiceProvider.kill_dul is not the code"
    files = _corpus_sample()
    adapter = LocalAdapter(tmp_path, fresh_orthanc.dicomweb_url, program=program, extra_env=env, extra_args=["--dimse_processes", "2"])
    with adapter:
        adapter.wait_for_log("DIMSE fast path off: serving on plain pynetdicom")
        results = send_files([f.path for f in files], adapter.port)
        assert [r.status for r in results] == [0x0000] * len(files)
        adapter.wait_until_drained()
    logs = adapter.logs()
    warnings = [line for line in logs.splitlines() if "DIMSE fast path off" in line]
    assert len(warnings) == 2, "each listener process says so"
    assert all("WARNING" in line and named in line for line in warnings)
    for f in files:
        assert_byte_exact(fresh_orthanc, f.path, f.study_instance_uid, f.series_instance_uid, f.sop_instance_uid, "PYSCU")
