"""The one pynetdicom release this edge is built for, and the check that it is the one installed.

The listener replaces some of pynetdicom's internals for speed (reactor_tuning, direct_store,
dimse_wire, bounds), so a pynetdicom release it was not tested with could break C-STORE in ways
no error names. pyproject.toml and functions/requirements.txt pin this same version (a test
checks that they agree); the serving commands call `require_pinned_pynetdicom` before they
import anything of pynetdicom, so a venv with another version fails at start with a message
that says what to install, not at the first association.
"""

from __future__ import annotations

from importlib import metadata

import click

PYNETDICOM_VERSION = "3.0.4"


def installed_pynetdicom_version() -> str | None:
    """The version of the pynetdicom distribution on sys.path (read without importing it)."""
    try:
        return metadata.version("pynetdicom")
    except metadata.PackageNotFoundError:
        return None


def require_pinned_pynetdicom() -> None:
    """Refuse to serve on any pynetdicom but PYNETDICOM_VERSION (exit 1 with the fix)."""
    installed = installed_pynetdicom_version()
    if installed == PYNETDICOM_VERSION:
        return
    found = f"pynetdicom {installed} is installed" if installed else "pynetdicom is not installed"
    raise click.ClickException(
        f"this dicom-adapter is built for pynetdicom {PYNETDICOM_VERSION} (its listener replaces "
        f"some of pynetdicom's internals), but {found}; install the pinned version: "
        f"pip install 'pynetdicom=={PYNETDICOM_VERSION}'"
    )
