"""A real Orthanc with the DICOMweb plugin, on free ports, for tests.

Orthanc is the local DICOMweb store of the design and, through its own DIMSE port, the oracle
for query/retrieve tests. Each instance gets its own storage directory and generated JSON
configuration; restart() keeps ports and storage so a test can take the store away mid-run
and bring it back.

`install` says which Orthanc: this machine's (Debian 12: Orthanc 1.10, DICOMweb 1.7) or one
installed in a Debian chroot (support/newer_orthanc.py: Debian 13's 1.12 with DICOMweb 1.20),
which then keeps its configuration and storage inside the chroot and shares the network.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import requests

from . import dicomweb
from .processes import LOOPBACK, ManagedProcess, free_port, wait_for_http, wait_for_port

__all__ = ["ORTHANC_BINARY", "DICOMWEB_PLUGIN", "HOST_ORTHANC", "Orthanc", "OrthancInstall", "orthanc_available"]

ORTHANC_BINARY = Path(os.environ.get("ORTHANC_BINARY", "/usr/sbin/Orthanc"))
DICOMWEB_PLUGIN = Path(
    os.environ.get("ORTHANC_DICOMWEB_PLUGIN", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
)


@dataclass(frozen=True)
class OrthancInstall:
    """An installed Orthanc: its binary and DICOMweb plugin, as paths inside `root` (a chroot;
    None: this machine)."""

    label: str
    binary: Path = ORTHANC_BINARY
    plugin: Path = DICOMWEB_PLUGIN
    root: Path | None = None

    def host_path(self, inside: Path) -> Path:
        return inside if self.root is None else self.root / str(inside).lstrip("/")

    def server_path(self, path: Path) -> Path:
        """`path` (on this machine) as the server sees it."""
        return path if self.root is None else Path("/") / path.relative_to(self.root)

    def server_dir(self, work_dir: Path) -> Path:
        """Where the server's configuration and storage go: in the work dir, or in the chroot."""
        return work_dir if self.root is None else self.root / "var" / "lib" / "orthanc-tests" / f"{work_dir.parent.name}-{work_dir.name}"

    def command(self, config: Path) -> list[str | Path]:
        run = [self.binary, self.server_path(config)]
        return run if self.root is None else ["chroot", self.root, *run]

    def available(self) -> bool:
        return self.host_path(self.binary).exists() and self.host_path(self.plugin).exists()


HOST_ORTHANC = OrthancInstall("Orthanc of this machine")


def orthanc_available() -> bool:
    return HOST_ORTHANC.available()


class Orthanc:
    """One Orthanc server process with DICOMweb at /dicom-web/.

    `modalities` maps a name to (AET, host, port): the peers Orthanc may C-STORE/C-MOVE to.
    `extra_config` is merged last (e.g. {"OverwriteInstances": True}).
    """

    def __init__(
        self,
        work_dir: str | os.PathLike[str],
        *,
        aet: str = "ORTHANC",
        http_port: int | None = None,
        dimse_port: int | None = None,
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        extra_config: Mapping[str, Any] | None = None,
        startup_timeout: float = 60.0,
        cleanup_scope: str = "test",
        install: OrthancInstall = HOST_ORTHANC,
    ) -> None:
        self.install = install
        self.work_dir = Path(work_dir)
        server_dir = install.server_dir(self.work_dir)
        self.storage_dir = server_dir / "storage"
        self.config_path = server_dir / "orthanc.json"
        self.host = LOOPBACK
        self.aet = aet
        self.http_port = http_port or free_port()
        self.dimse_port = dimse_port or free_port()
        self.modalities = dict(modalities or {})
        self.extra_config = dict(extra_config or {})
        self.startup_timeout = startup_timeout
        self.session = requests.Session()
        self.process = ManagedProcess(
            install.command(self.config_path),
            log_dir=self.work_dir,
            name="orthanc",
            cleanup_scope=cleanup_scope,
        )

    # -- addresses -------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    # -- configuration ---------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The JSON configuration Orthanc is started with."""
        config: dict[str, Any] = {
            "Name": f"test-orthanc-{self.http_port}",
            "StorageDirectory": str(self.install.server_path(self.storage_dir)),
            "IndexDirectory": str(self.install.server_path(self.storage_dir)),
            "StorageCompression": False,
            "HttpPort": self.http_port,
            "DicomPort": self.dimse_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": False,
            # Plain bodies keep byte-level checks of the HTTP traffic simple.
            "HttpCompressionEnabled": False,
            "Plugins": [str(self.install.plugin)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Ssl": False},
            # Tests play many AEs that are not declared: let them query and retrieve.
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomCheckCalledAet": False,
            "UnknownSopClassAccepted": True,
            "DicomModalities": {
                name: [aet, host, port] for name, (aet, host, port) in self.modalities.items()
            },
            "SaveJobs": False,
            "ExecuteLuaEnabled": False,
        }
        config.update(self.extra_config)
        return config

    def _write_config(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(parents=True, exist_ok=True)  # the config's folder too
        self.config_path.write_text(json.dumps(self.config(), indent=2))

    # -- lifecycle -------------------------------------------------------------------------

    def is_running(self) -> bool:
        return self.process.is_running()

    def start(self) -> "Orthanc":
        """Start and wait until REST (GET /system) and the DICOM port answer."""
        if not self.install.available():
            raise RuntimeError(f"{self.install.label}: Orthanc or its DICOMweb plugin missing ({self.install.binary}, {self.install.plugin})")
        self._write_config()
        self.process.start()
        try:
            wait_for_http(f"{self.http_url}/system", self.startup_timeout, process=self.process)
            wait_for_port(self.host, self.dimse_port, self.startup_timeout, process=self.process)
        except BaseException:
            self.process.kill()
            raise
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful stop (SIGTERM): Orthanc flushes its index before exiting."""
        self.session.close()
        self.process.stop(timeout=timeout)

    def kill(self) -> None:
        """Crash the store (SIGKILL) to test how clients survive an outage."""
        self.session.close()
        self.process.kill()

    def restart(self) -> "Orthanc":
        """Stop and start again with the same ports, configuration and storage."""
        self.stop()
        return self.start()

    def wipe(self) -> None:
        """Stop and delete all storage (index included)."""
        self.stop()
        shutil.rmtree(self.storage_dir, ignore_errors=True)

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- REST helpers ----------------------------------------------------------------------

    def rest(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call Orthanc's REST API; raises for HTTP errors."""
        kwargs.setdefault("timeout", 60)
        response = self.session.request(method, f"{self.http_url}{path}", **kwargs)
        response.raise_for_status()
        return response

    def instance_count(self) -> int:
        return int(self.rest("GET", "/statistics").json()["CountInstances"])

    def list_sop_instance_uids(self) -> list[str]:
        instances = self.rest("GET", "/instances", params={"expand": ""}).json()
        return sorted(item["MainDicomTags"]["SOPInstanceUID"] for item in instances)

    def find_instance_id(self, sop_instance_uid: str) -> str | None:
        """Orthanc's own identifier of an instance, or None."""
        for hit in self.rest("POST", "/tools/lookup", data=sop_instance_uid).json():
            if hit.get("Type") == "Instance":
                return hit["ID"]
        return None

    def instance_file(self, sop_instance_uid: str) -> bytes:
        """The stored Part-10 file as Orthanc keeps it (REST, not DICOMweb)."""
        orthanc_id = self.find_instance_id(sop_instance_uid)
        if orthanc_id is None:
            raise KeyError(sop_instance_uid)
        return self.rest("GET", f"/instances/{orthanc_id}/file").content

    def retrieve_instance_part10(self, study: str, series: str, sop: str) -> bytes:
        """WADO-RS with transfer-syntax=* : the instance exactly as stored (in memory)."""
        return dicomweb.retrieve_instance_part10(self.dicomweb_url, study, series, sop)

    def retrieve_instance_to_file(self, study: str, series: str, sop: str, dest: str | os.PathLike[str]) -> int:
        """WADO-RS streamed to a file (for big instances); returns bytes written."""
        return dicomweb.retrieve_instance_to_file(self.dicomweb_url, study, series, sop, dest)

    def stow(self, *instances: bytes | str | os.PathLike[str]) -> requests.Response:
        """STOW-RS instances (bytes or paths) into this Orthanc."""
        return dicomweb.stow_rs(self.dicomweb_url, instances)

    def delete_all(self) -> None:
        """Delete every stored instance (patients cascade down to instances)."""
        for patient in self.rest("GET", "/patients").json():
            self.rest("DELETE", f"/patients/{patient}")

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Declare a DIMSE peer at runtime (kept across restart())."""
        self.modalities[name] = (aet, host, port)
        self.rest("PUT", f"/modalities/{name}", json={"AET": aet, "Host": host, "Port": port})

    def __repr__(self) -> str:
        return f"<Orthanc {self.http_url} dimse={self.dimse_port} aet={self.aet} ({self.install.label})>"
