"""Per-process working folders (ROOT/<pid>/) under a shared root, and the clean-up of those
whose process is gone: several listener processes and import runs share one spool, and a
killed one leaves half-written copies that nobody else may touch while it lives."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def process_folder(root: Path, *, fresh: bool = False) -> Path:
    """This process's folder under `root` (emptied first with `fresh`)."""
    own = root / str(os.getpid())
    if fresh:
        shutil.rmtree(own, ignore_errors=True)
    own.mkdir(parents=True, exist_ok=True)
    return own


def remove_folders_of_gone_processes(root: Path) -> None:
    if not root.exists():
        return
    for folder in root.iterdir():
        if folder.is_dir() and folder.name.isdigit() and int(folder.name) != os.getpid() and not process_alive(int(folder.name)):
            shutil.rmtree(folder, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True
