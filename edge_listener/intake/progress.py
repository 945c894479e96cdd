"""Import progress: a tqdm bar on a terminal, a plain log line every few seconds otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

from dicom_adapter.logs import fields

log = logging.getLogger(__name__)


class Progress:
    """Files and bytes done out of the totals, with rate and ETA. Not thread-safe: one caller."""

    def __init__(self, total_files: int, total_bytes: int, *, stream: TextIO | None = None, interval_s: float = 10.0) -> None:
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.files = 0
        self.bytes = 0
        self.interval_s = interval_s
        self.started = time.monotonic()
        self._last_line = self.started
        stream = stream or sys.stderr
        self._bar: Any = None
        self._redirect: Any = None
        if stream.isatty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, file=stream, dynamic_ncols=True)
            self._bar.set_description(self._files_text())
            # Log lines (a file not imported) print above the bar instead of through it.
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    def _files_text(self) -> str:
        return f"{self.files}/{self.total_files} files"

    def advance(self, nbytes: int) -> None:
        self.files += 1
        self.bytes += nbytes
        if self._bar is not None:
            self._bar.set_description(self._files_text(), refresh=False)
            self._bar.update(nbytes)
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval_s:
            self._last_line = now
            self.log_line()

    def log_line(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.bytes / elapsed
        left = self.total_bytes - self.bytes
        log.info(
            "import progress",
            extra=fields(
                files=self.files,
                total_files=self.total_files,
                bytes=self.bytes,
                total_bytes=self.total_bytes,
                files_per_s=round(self.files / elapsed, 1),
                mb_per_s=round(rate / 1e6, 2),
                eta_s=round(left / rate) if rate > 0 and left > 0 else 0,
            ),
        )

    def close(self) -> None:
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
        if self._bar is not None:
            self._bar.close()
