"""DCMTK command-line tools as test peers (modalities, PACS, a C-STORE destination).

Always by absolute path: pynetdicom installs its own `storescp`/`echoscp` scripts into the
Python environment's bin directory, which shadows DCMTK on PATH. Always with TCP_NODELAY=1:
without it Nagle's algorithm makes DCMTK's small PDU writes about 15x slower.

storescu and dcmsend decode each file and encode it again before sending (and convert it if
the SCP accepts another transfer syntax), so what they put on the wire can differ from the
file's bytes (trailing padding, big endian, implicit VR, some compressed files). Byte-exactness
tests send with support.sender instead; DCMTK plays the ordinary PACS.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterable, Sequence

from .processes import LOOPBACK, ManagedProcess, free_port, wait_for_port

__all__ = [
    "DCMTK_BIN",
    "dcmtk_env",
    "dcmtk_tool",
    "run_dcmtk",
    "storescu",
    "dcmsend",
    "echoscu",
    "StoreSCP",
    "storescp",
    "STORESCU_TS_OPTION",
    "findscu",
]

DCMTK_BIN = Path(os.environ.get("DCMTK_BIN", "/usr/bin"))

# storescu proposes uncompressed syntaxes only and, for a compressed file, tries to decompress
# it (and fails for most codecs). Pass the option for the file's transfer syntax, or use
# dcmsend, which proposes each file's own transfer syntax by itself.
STORESCU_TS_OPTION: dict[str, str] = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def dcmtk_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for DCMTK tools: inherits os.environ, forces TCP_NODELAY=1."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    if extra:
        env.update(extra)
    return env


def dcmtk_tool(name: str) -> Path:
    """Absolute path of a DCMTK tool; raises if it is not installed."""
    path = DCMTK_BIN / name
    if not path.exists():
        raise FileNotFoundError(f"DCMTK tool {path} not found (apt-get install dcmtk)")
    return path


def run_dcmtk(tool: str, args: Sequence[str | os.PathLike[str]], *, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool to completion; output captured as text, never raises on exit code."""
    cmd = [str(dcmtk_tool(tool)), *[os.fspath(a) for a in args]]
    return subprocess.run(
        cmd,
        env=dcmtk_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
    )


def _files(files: Iterable[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[str]:
    if isinstance(files, (str, os.PathLike)):
        return [os.fspath(files)]
    return [os.fspath(f) for f in files]


def _store_args(files, host: str, port: int, called_aet: str, calling_aet: str, extra_args: Sequence[str]) -> list[str]:
    return ["-aet", calling_aet, "-aec", called_aet, *extra_args, host, str(port), *_files(files)]


def storescu(
    files: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    host: str,
    port: int,
    called_aet: str = "ANY-SCP",
    calling_aet: str = "STORESCU",
    extra_args: Sequence[str] = (),
    *,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """C-STORE files with DCMTK storescu (all in one association). Exit code 0 = all stored.

    For compressed files add STORESCU_TS_OPTION[ts] to extra_args, or use dcmsend().
    """
    return run_dcmtk("storescu", _store_args(files, host, port, called_aet, calling_aet, extra_args), timeout=timeout)


def dcmsend(
    files: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    host: str,
    port: int,
    called_aet: str = "ANY-SCP",
    calling_aet: str = "DCMSEND",
    extra_args: Sequence[str] = (),
    *,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """C-STORE files with DCMTK dcmsend, which proposes each file's own transfer syntax.

    Halts on the first unsuccessful store (non-zero exit) unless extra_args has "--no-halt".
    """
    return run_dcmtk("dcmsend", _store_args(files, host, port, called_aet, calling_aet, extra_args), timeout=timeout)


def echoscu(
    host: str,
    port: int,
    called_aet: str = "ANY-SCP",
    calling_aet: str = "ECHOSCU",
    extra_args: Sequence[str] = (),
    *,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """C-ECHO with DCMTK echoscu. Exit code 0 = association accepted and echo answered."""
    args = ["-aet", calling_aet, "-aec", called_aet, *extra_args, host, str(port)]
    return run_dcmtk("echoscu", args, timeout=timeout)


class StoreSCP(ManagedProcess):
    """A running DCMTK storescp: a C-STORE destination writing what it receives to a directory.

    Started in bit-preserving mode (+B: files written exactly as received, so byte-exactness
    can be asserted on them), accepting every transfer syntax DCMTK knows (+xa; with
    `uncompressed_only`, storescp's default: the uncompressed ones) and unknown SOP classes
    (-pm). Files are named <modality>.<SOPInstanceUID>.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        *,
        aet: str = "STORESCP",
        port: int | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        cleanup_scope: str = "test",
        uncompressed_only: bool = False,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.host = LOOPBACK
        self.port = port or free_port()
        cmd = [
            dcmtk_tool("storescp"),
            "-aet", aet,
            "-od", str(self.output_dir),
            "+B", *([] if uncompressed_only else ["+xa"]), "-pm",
            *extra_args,
            str(self.port),
        ]
        super().__init__(
            cmd,
            log_dir=log_dir or self.output_dir.parent,
            name=f"storescp-{aet.lower()}",
            env=dcmtk_env(),
            cleanup_scope=cleanup_scope,
        )

    def start(self, timeout: float = 30.0) -> "StoreSCP":  # type: ignore[override]
        super().start()
        wait_for_port(self.host, self.port, timeout, process=self)
        return self

    def received_files(self) -> list[Path]:
        """Files written so far (ignores DCMTK's temporary files), sorted by name."""
        return sorted(p for p in self.output_dir.iterdir() if p.is_file() and not p.name.startswith("."))


def storescp(
    output_dir: str | os.PathLike[str],
    *,
    aet: str = "STORESCP",
    port: int | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
    cleanup_scope: str = "test",
) -> StoreSCP:
    """Start a DCMTK storescp on a free port and wait until it listens."""
    return StoreSCP(
        output_dir, aet=aet, port=port, log_dir=log_dir, extra_args=extra_args, cleanup_scope=cleanup_scope
    ).start()


def findscu(
    host: str,
    port: int,
    keys: Sequence[str] = (),
    *,
    out_dir: str | os.PathLike[str],
    model: str = "S",
    called_aet: str = "ANY-SCP",
    calling_aet: str = "FINDSCU",
    query_file: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
    """C-FIND with DCMTK findscu (model "S" study root, "P" patient root); the responses are
    extracted into `out_dir` (rsp0001.dcm, ...) and returned in order with the process result.
    `query_file` is a DICOM file with the identifier (e.g. in a declared character set)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    args = [f"-{model}", "-X", "-od", os.fspath(out), "-aet", calling_aet, "-aec", called_aet, *extra_args]
    for key in keys:
        args += ["-k", key]
    files = [os.fspath(query_file)] if query_file is not None else []
    result = run_dcmtk("findscu", [*args, host, str(port), *files], timeout=timeout)
    return result, sorted(out.glob("rsp*.dcm"))
