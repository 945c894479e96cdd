"""What earlier imports already buffered: a SQLite file in the spool, so re-runs skip it.

Two tables:
  instances  (SOP Instance UID, SHA-256 of the data set): buffered once, never again; the same
             UID with other content is a different instance and is imported (the upload then
             reports the conflict, invariant 3)
  sources    fingerprints of sources whose content was buffered (path, size, mtime; for a ZIP
             member also its name, CRC and size), so an unchanged file is skipped on a re-run
             without reading it. Fingerprints are hashes: no file names are stored.

Buffering one instance is three steps: `begin` notes it as pending with the path of its staged
copy, the sink moves that copy into the buffer, `record` lists it as buffered. After a kill, a
pending row tells which side of the move it stopped on (`settle_pending`): the staged copy still
there means it never reached the buffer (forget it; the next run imports it), gone means it did
(list it). So a killed and re-run import buffers every instance exactly once. This must run
before stale staging folders are swept. WAL mode with synchronous=NORMAL keeps committed rows
across a killed process; several processes (an import and `local --watch_dir`) may share the
file (settling another live process's pending row is harmless: its `record` still lists it).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from dicom_adapter.events import utc_now

LEDGER_NAME = "imports.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT NOT NULL,
    dataset_sha256 TEXT NOT NULL,
    entry TEXT NOT NULL,
    buffered_at TEXT NOT NULL,
    PRIMARY KEY (sop_instance_uid, dataset_sha256)
);
CREATE TABLE IF NOT EXISTS pending (
    sop_instance_uid TEXT NOT NULL,
    dataset_sha256 TEXT NOT NULL,
    staged_path TEXT NOT NULL,
    PRIMARY KEY (sop_instance_uid, dataset_sha256)
);
CREATE TABLE IF NOT EXISTS sources (
    fingerprint TEXT PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL,
    dataset_sha256 TEXT NOT NULL
);
"""


class Ledger:
    """Thread-safe (one connection behind a lock); the work it guards is disk I/O anyway."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, timeout=60, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    @classmethod
    def in_spool(cls, spool_root: Path) -> "Ledger":
        return cls(spool_root / LEDGER_NAME)

    def has_source(self, fingerprint: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM sources WHERE fingerprint = ?", (fingerprint,)).fetchone() is not None

    def has_instance(self, sop_instance_uid: str, dataset_sha256: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid = ? AND dataset_sha256 = ?", (sop_instance_uid, dataset_sha256)
            ).fetchone()
        return row is not None

    def begin(self, sop_instance_uid: str, dataset_sha256: str, staged_path: Path) -> None:
        """The staged copy at `staged_path` is about to be moved into the buffer."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO pending VALUES (?, ?, ?)", (sop_instance_uid, dataset_sha256, str(staged_path))
            )

    def abandon(self, sop_instance_uid: str, dataset_sha256: str) -> None:
        """The move into the buffer failed; nothing was buffered."""
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE sop_instance_uid = ? AND dataset_sha256 = ?", (sop_instance_uid, dataset_sha256))

    def settle_pending(self) -> int:
        """Resolve what a killed run left pending (see the module doc); returns how many were buffered."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            rows = self._db.execute("SELECT sop_instance_uid, dataset_sha256, staged_path FROM pending").fetchall()
            buffered = 0
            for uid, digest, staged in rows:
                if not Path(staged).exists():
                    self._db.execute("INSERT OR IGNORE INTO instances VALUES (?, ?, ?, ?)", (uid, digest, "", utc_now()))
                    buffered += 1
            self._db.execute("DELETE FROM pending")
        return buffered

    def record(self, sop_instance_uid: str, dataset_sha256: str, *, entry: str | None, fingerprint: str | None) -> None:
        """The instance is buffered (entry: its buffer name; None if it was already)."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "DELETE FROM pending WHERE sop_instance_uid = ? AND dataset_sha256 = ?", (sop_instance_uid, dataset_sha256)
            )
            if entry is not None:
                self._db.execute(
                    "INSERT OR IGNORE INTO instances VALUES (?, ?, ?, ?)", (sop_instance_uid, dataset_sha256, entry, utc_now())
                )
            if fingerprint is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO sources VALUES (?, ?, ?)", (fingerprint, sop_instance_uid, dataset_sha256)
                )

    def close(self) -> None:
        with self._lock:
            self._db.close()
