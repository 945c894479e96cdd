"""Whether the installed pynetdicom is the one the fast path was written against.

The fast path replaces pynetdicom internals and relies on how others work (the names of its
reactor loops, the DUL reading a PDU in two `recv` calls, the private attributes it reads).
A pynetdicom release that changes one of them could break C-STORE in ways no error names, so
before anything is replaced this module checks two things:

- the installed version is exactly PYNETDICOM_VERSION (the one pyproject.toml and
  functions/requirements.txt pin; tests/test_shipped.py checks that they agree), and
- every pynetdicom function and class the fast path replaces or depends on has exactly the
  source it was written against: FINGERPRINTS, sha256 of `inspect.getsource`, so a patched or
  locally edited install is caught too, and the WARNING names what changed.

Upgrading pynetdicom (docs/architecture.md): read the diff of each name below, adapt the fast
path, then `python -m edge_listener.front.fastpath.guard` prints the new table to paste here,
and the DIMSE suite must pass with the fast path on and off.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from importlib import metadata
from typing import Iterable

PYNETDICOM_VERSION = "3.0.4"

# "module:qualified name" -> sha256 of its source (first 16 hex digits), in PYNETDICOM_VERSION.
FINGERPRINTS = {
    "pynetdicom.association:Association.__init__": "eb07516b8009ad8f",
    "pynetdicom.association:Association._handle_no_response": "6f3d62518395c3a8",
    "pynetdicom.association:Association._run_reactor": "f28838c5559e462a",
    "pynetdicom.dimse:DIMSEServiceProvider.get_msg": "890e3e04283f5aeb",
    "pynetdicom.dimse:DIMSEServiceProvider.receive_primitive": "5f99c86b14a15cef",
    "pynetdicom.dimse:DIMSEServiceProvider.send_msg": "a839cf2fb46976d9",
    "pynetdicom.dimse_messages:DIMSEMessage.decode_msg": "f51c777e841a76be",
    "pynetdicom.dul:DULServiceProvider._decode_pdu": "fc71dd1bf853e1ce",
    "pynetdicom.dul:DULServiceProvider._is_transport_event": "8725ed03bb8fbdef",
    "pynetdicom.dul:DULServiceProvider._read_pdu_data": "19f2d4e38c13c835",
    "pynetdicom.dul:DULServiceProvider.__init__": "c82dafa9438ddf70",
    "pynetdicom.dul:DULServiceProvider.kill_dul": "5ceccf8dd01c2072",
    "pynetdicom.dul:DULServiceProvider.run_reactor": "e3a10eb3a0931e48",
    "pynetdicom.dul:DULServiceProvider.send_pdu": "7cbce5da8594124e",
    "pynetdicom.dul:DULServiceProvider.stop_dul": "28a7e0be126e7b30",
    "pynetdicom.fsm:StateMachine.do_action": "9a883f44c7f31641",
    "pynetdicom.service_class:QueryRetrieveServiceClass.SCP": "e59ba54b9071ffc3",
    "pynetdicom.service_class:QueryRetrieveServiceClass._c_find_scp": "da242b908ef4848c",
    "pynetdicom.service_class:QueryRetrieveServiceClass._get_scp": "8ca1538e3e56c4f7",
    "pynetdicom.service_class:QueryRetrieveServiceClass._move_scp": "5c14d1be3d737bef",
    "pynetdicom.timer:Timer": "77ddae7423f544b1",
    "pynetdicom.transport:AssociationSocket.recv": "6bc20a33b1b7cfe7",
    "pynetdicom.transport:RequestHandler._create_association": "05c8d12b79863cdb",
}


def installed_pynetdicom_version() -> str | None:
    """The version of the pynetdicom distribution on sys.path (read without importing it)."""
    try:
        return metadata.version("pynetdicom")
    except metadata.PackageNotFoundError:
        return None


def fingerprint(name: str) -> str:
    """sha256 (16 hex digits) of the source of `module:qualified.name`; "" if it is gone."""
    module_name, _, qualname = name.partition(":")
    try:
        target: object = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
        source = inspect.getsource(target)  # type: ignore[arg-type]
    except (ImportError, AttributeError, OSError, TypeError):
        return ""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


# What bounds.py relies on. The bounds protect rather than speed up, so they stay on whenever
# this code is unchanged: with the fast path turned off, and on another pynetdicom release.
BOUNDS_FINGERPRINTS = (
    "pynetdicom.dul:DULServiceProvider._read_pdu_data",
    "pynetdicom.transport:AssociationSocket.recv",
    "pynetdicom.transport:RequestHandler._create_association",
)


def mismatches() -> list[str]:
    """Why the fast path must not be installed on this pynetdicom: [] when it may."""
    installed = installed_pynetdicom_version()
    if installed != PYNETDICOM_VERSION:
        return [f"pynetdicom {installed or '(none)'} is installed, the fast path is written for {PYNETDICOM_VERSION}"]
    return _changed(FINGERPRINTS)


def bounds_mismatches() -> list[str]:
    """Why bounds.py must not be used on this pynetdicom (any version): [] when it may."""
    return _changed(BOUNDS_FINGERPRINTS)


def _changed(names: Iterable[str]) -> list[str]:
    return [f"{name} is not the code the fast path was written against" for name in names if fingerprint(name) != FINGERPRINTS[name]]


def main() -> None:
    """Print FINGERPRINTS as the installed pynetdicom has them (for an upgrade)."""
    print(f'PYNETDICOM_VERSION = "{installed_pynetdicom_version()}"')
    print("FINGERPRINTS = {")
    for name in FINGERPRINTS:
        print(f'    "{name}": "{fingerprint(name)}",')
    print("}")


if __name__ == "__main__":
    main()
    sys.exit(0)
