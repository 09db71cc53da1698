"""The collection manifest: which remote file versions are complete under ``raw/``.

Why SQLite: a second run must download nothing, and it must know that after a
crash too, so the record is written (and committed) only after the file was
checked, fsynced and renamed into place. One small table per concern:

``files``       one row per (sensor, remote path): the size, mtime and SHA-256 of
                the version now at ``local_path``.
``superseded``  every older copy that was moved aside because the remote file
                grew or was rotated, so nothing is ever silently overwritten.

Sensors are collected in threads; they share one connection behind a lock
(writes are a few rows per file, so contention is negligible).
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import StoreError

log = logging.getLogger(__name__)

MANIFEST_NAME = ".manifest.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    sensor TEXT NOT NULL,
    path TEXT NOT NULL,            -- remote path relative to remote_dir, '/'-separated
    size INTEGER NOT NULL,
    mtime INTEGER NOT NULL,        -- remote modification time, seconds since the epoch
    sha256 TEXT NOT NULL,
    local_path TEXT NOT NULL,      -- relative to raw_dir
    collected_at TEXT NOT NULL,    -- UTC ISO 8601
    PRIMARY KEY (sensor, path)
);
CREATE TABLE IF NOT EXISTS superseded (
    sensor TEXT NOT NULL,
    path TEXT NOT NULL,
    local_path TEXT NOT NULL,      -- where the older copy was moved, relative to raw_dir
    size INTEGER NOT NULL,
    sha256 TEXT,
    reason TEXT NOT NULL,          -- 'grown' or 'rotated'
    superseded_at TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class FileRecord:
    """The complete version of one remote file that ``raw/`` holds."""

    sensor: str
    path: str
    size: int
    mtime: int
    sha256: str
    local_path: Path  # absolute


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Manifest:
    """``raw_dir/.manifest.sqlite``, safe to share between sensor threads.

    Parameters
    ----------
    raw_dir : the collection root (``settings.raw_dir``); created if missing.

    Raises
    ------
    StoreError
        The manifest exists but is not a database this version can use.
    """

    def __init__(self, raw_dir: Path) -> None:
        self.raw_dir = Path(raw_dir)
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.raw_dir / MANIFEST_NAME
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit lost to a power cut only makes the next run fetch (or adopt) that file again
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot use the collection manifest ({exc}); move the file away "
                             f"to rebuild it (the next run then re-checks every file against raw/)") from exc

    def get(self, sensor: str, path: str) -> FileRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime, sha256, local_path FROM files WHERE sensor = ? AND path = ?",
                (sensor, path)).fetchone()
        if row is None:
            return None
        return FileRecord(sensor, path, row[0], row[1], row[2], self.raw_dir / row[3])

    def put(self, record: FileRecord) -> None:
        """Record ``record`` as the complete version (call only after the rename)."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO files (sensor, path, size, mtime, sha256, local_path, collected_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.sensor, record.path, record.size, record.mtime, record.sha256,
                 self._relative(record.local_path), _now()))

    def superseded(self, sensor: str, path: str, moved_to: Path, size: int, sha256: str | None,
                   reason: str) -> None:
        """Remember where an older copy of ``path`` was moved and why."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO superseded (sensor, path, local_path, size, sha256, reason, superseded_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sensor, path, self._relative(moved_to), size, sha256, reason, _now()))

    def superseded_copies(self, sensor: str) -> list[tuple[str, Path, str]]:
        """(remote path, local copy, reason) of every copy moved aside for ``sensor``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT path, local_path, reason FROM superseded WHERE sensor = ? ORDER BY rowid",
                (sensor,)).fetchall()
        return [(r[0], self.raw_dir / r[1], r[2]) for r in rows]

    def count(self, sensor: str | None = None) -> int:
        with self._lock:
            if sensor is None:
                return self._db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM files WHERE sensor = ?", (sensor,)).fetchone()[0]

    def _relative(self, local: Path) -> str:
        try:
            return Path(local).relative_to(self.raw_dir).as_posix()
        except ValueError:
            return str(local)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
