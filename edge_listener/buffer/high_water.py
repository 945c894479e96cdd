"""The spool's high-water mark: refuse new C-STOREs before the disk is full, not when it is.

A full disk fails writes half-way (the sender hears 0xA700 "spool disk full" after sending the
whole instance, and the uploader may find no room for its own work). With a high-water mark
the listener looks at the disk holding its reception folder when a C-STORE data set starts to
arrive; at or above the mark it writes nothing and answers 0xA700 "buffer full". As uploads
empty the queue the level falls and C-STOREs are taken again: nothing to reset.

The mark is the disk's fill level as `df` shows it: a percentage ("95%", df's Use%) or bytes
in use ("40GiB", df's Used); "100%" or "off" switches it off.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from dataclasses import dataclass

from dicom_adapter.logs import fields

log = logging.getLogger(__name__)

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


class BufferFull(OSError):
    """The reception folder's disk is at or above the high-water mark."""

    def __init__(self) -> None:
        super().__init__(errno.ENOSPC, "buffer full: spool disk above its high-water mark")


@dataclass(frozen=True)
class HighWaterMark:
    fraction: float | None = None  # of the disk's size in use
    used_bytes: int | None = None  # bytes in use on the disk

    @classmethod
    def parse(cls, text: str | None) -> "HighWaterMark | None":
        """'95%' or '40GiB' (also 40G, 500MB, 123456); None for '', 'off', '100%'."""
        value = (text or "").strip().lower()
        if value in ("", "off", "none", "0"):
            return None
        if value.endswith("%"):
            percent = float(value[:-1])
            if not 0 < percent <= 100:
                raise ValueError(f"high-water mark {text!r}: a percentage must be above 0 and at most 100")
            return None if percent == 100 else cls(fraction=percent / 100)
        match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)", value)
        if not match or match.group(2) not in _UNITS:
            raise ValueError(f"high-water mark {text!r}: give a percentage of the disk (95%) or a size in use (40GiB)")
        return cls(used_bytes=int(float(match.group(1)) * _UNITS[match.group(2)]))

    def reached(self, path: str) -> bool:
        # As `df` counts: used = blocks not free; size = used + what a writer may still use.
        stats = os.statvfs(path)
        used = (stats.f_blocks - stats.f_bfree) * stats.f_frsize
        size = used + stats.f_bavail * stats.f_frsize
        if self.fraction is not None:
            return size > 0 and used >= self.fraction * size
        return self.used_bytes is not None and used >= self.used_bytes

    def __str__(self) -> str:
        return f"{self.fraction * 100:g}%" if self.fraction is not None else f"{self.used_bytes} bytes"


class HighWaterGuard:
    """Checks the mark for one folder and logs when the level crosses it (not per instance)."""

    def __init__(self, mark: HighWaterMark, folder: str) -> None:
        self.mark = mark
        self.folder = folder
        self._above = False
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise BufferFull at or above the mark."""
        try:
            above = self.mark.reached(self.folder)
        except OSError:
            above = False  # the write itself will tell
        with self._lock:
            if above != self._above:
                self._above = above
                if above:
                    log.error("spool disk at its high-water mark: refusing C-STOREs until uploads free space", extra=fields(mark=str(self.mark), folder=self.folder))
                else:
                    log.warning("spool disk below its high-water mark again: taking C-STOREs", extra=fields(mark=str(self.mark), folder=self.folder))
        if above:
            raise BufferFull()
