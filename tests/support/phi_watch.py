"""The suite-wide PHI check: every log line the product writes during the test run, in the test
process or in the processes the tests start, is searched for the fixtures' marker demographics
(DESIGN invariant 5). Exceptions and tracebacks are part of the text searched.

- In the test process, a handler on the product's loggers (dicom_adapter, edge_listener) sees
  every record, formatted with its traceback.
- Product processes (`dicom-adapter ...`, functions-framework serving functions/) write their
  output to files; after each test the part written since the last look is read.
The conftest fixture fails the test in whose time a marker appeared.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .dicom_files import find_marker_phi
from .processes import ManagedProcess, live_processes

PRODUCT_LOGGERS = ("dicom_adapter", "edge_listener")
_PRODUCT_COMMANDS = ("dicom-adapter", "edge_listener.cli", "functions_framework")


class PhiWatch(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.leaks: list[str] = []
        self._offsets: dict[Path, int] = {}
        self.lines_checked = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + " " + " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        except Exception:  # a record that cannot be formatted is not ours to judge
            return
        self.lines_checked += 1
        markers = find_marker_phi(text)
        if markers:
            self.leaks.append(f"in-process log {record.name}: markers {markers}: {text[:300]}")

    def install(self) -> "PhiWatch":
        for name in PRODUCT_LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def scan_processes(self) -> None:
        """Read what product processes wrote since the last scan."""
        for process in live_processes():
            if not _is_product(process):
                continue
            for path in (process.stdout_path, process.stderr_path):
                self._scan_file(path, process.name)

    def _scan_file(self, path: Path, name: str) -> None:
        try:
            with open(path, "rb") as fp:
                offset = self._offsets.get(path, 0)
                if fp.seek(0, 2) < offset:
                    offset = 0  # truncated (a restart with fresh files)
                fp.seek(offset)
                data = fp.read()
                self._offsets[path] = fp.tell()
        except FileNotFoundError:
            return
        text = data.decode("utf-8", "replace")
        self.lines_checked += text.count("\n")
        for line in text.splitlines():
            markers = find_marker_phi(line)
            if markers:
                self.leaks.append(f"{name} ({path.name}): markers {markers}: {line[:300]}")


def _is_product(process: ManagedProcess) -> bool:
    return any(any(marker in part for marker in _PRODUCT_COMMANDS) for part in process.cmd)


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
