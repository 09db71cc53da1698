"""The store's manifest: which source files are in the Parquet store, and which part files hold them.

Why a manifest at all: ingesting is idempotent only if the store remembers what
it has seen. The key is the SHA-256 of a source file's *content*, so a log that
was renamed, rotated into another folder or pulled twice from a sensor is
recognised and adds nothing.

Why SQLite: it commits a file's parts in one transaction, so the manifest
(and therefore :func:`watchtower_lib.store.load`, which reads only committed
parts) never shows half of a file, even if the process dies between the renames
of its Parquet parts. It needs no server and survives power loss.

The manifest also keeps each part's row count, time range and Arrow schema, so
``summary`` and schema unification never open a Parquet file.

Why sources also know their path and size: a Zeek log that is still being
written (``current/conn.log``) is ingested again when it grows, and its new
content has a new hash. Keyed on content alone, the grown file would be a new
source and its earlier rows would be stored twice. So an ingest looks up the
earlier versions from the same (absolute path, sensor) and :meth:`Manifest.record`
swaps them for the new version in the same transaction that commits the new
parts (see :func:`watchtower_lib.store.ingest` for the order of the steps).
"""
from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

log = logging.getLogger(__name__)

MANIFEST_NAME = "_manifest.sqlite"
_SCHEMA_VERSION = 2  # 2: sources.size, index on (path, sensor)

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    sha256      TEXT PRIMARY KEY,  -- of the source file's bytes, as stored (compressed or not)
    path        TEXT NOT NULL,     -- where it was ingested from (first time; absolute since version 2)
    sensor      TEXT NOT NULL,
    log_type    TEXT NOT NULL,
    rows        INTEGER NOT NULL,
    schema      BLOB,              -- Arrow IPC schema of the file's rows (kept for header-only files)
    ingested_at TEXT NOT NULL,
    size        INTEGER            -- bytes of the source file (NULL for sources ingested before version 2)
);
CREATE TABLE IF NOT EXISTS parts (
    relpath  TEXT PRIMARY KEY,     -- <log_type>/date=YYYY-MM-DD/<sha256>-<n>.parquet, relative to the store
    sha256   TEXT NOT NULL REFERENCES sources(sha256),
    log_type TEXT NOT NULL,
    day      TEXT NOT NULL,        -- YYYY-MM-DD or 'unknown'
    rows     INTEGER NOT NULL,
    min_ts   INTEGER,              -- nanoseconds since the epoch, NULL when no row has a ts
    max_ts   INTEGER,
    schema   BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS parts_by_type ON parts(log_type, day);
"""
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS parts_by_source ON parts(sha256)",
    "CREATE INDEX IF NOT EXISTS sources_by_path ON sources(path, sensor)",
)


@dataclass(frozen=True)
class Part:
    """One committed Parquet file of the store."""

    relpath: str
    sha256: str
    log_type: str
    day: str
    rows: int
    min_ts: int | None
    max_ts: int | None
    schema: pa.Schema
    source_path: str = ""


@dataclass(frozen=True)
class Source:
    """One committed source file (a version of a log as it was when ingested)."""

    sha256: str
    path: str
    sensor: str
    log_type: str
    rows: int
    size: int | None  # None for sources recorded before the manifest kept sizes


def _schema_blob(schema: pa.Schema) -> bytes:
    return schema.serialize().to_pybytes()


def _schema_from(blob: bytes | None) -> pa.Schema:
    if blob is None:
        return pa.schema([])
    return pa.ipc.read_schema(pa.py_buffer(blob))


class Manifest:
    """A connection to ``<store>/_manifest.sqlite`` (created on first use when ``create``)."""

    def __init__(self, store_dir: Path, *, create: bool) -> None:
        self.path = Path(store_dir) / MANIFEST_NAME
        if not create and not self.path.is_file():
            raise FileNotFoundError(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60.0)
        self._db.execute("PRAGMA foreign_keys = ON")
        if create:
            with self._db:
                self._db.executescript(_DDL)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                                 (str(_SCHEMA_VERSION),))
            self._upgrade()

    def _upgrade(self) -> None:
        """Bring a version-1 manifest to version 2 (adds ``sources.size``; old rows keep NULL)."""
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(sources)")}
        with self._db:
            if "size" not in columns:
                self._db.execute("ALTER TABLE sources ADD COLUMN size INTEGER")
            for statement in _INDEXES:
                self._db.execute(statement)
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(_SCHEMA_VERSION),))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reads
    def has(self, sha256: str) -> bool:
        return self._db.execute("SELECT 1 FROM sources WHERE sha256 = ?", (sha256,)).fetchone() is not None

    def source_of(self, sha256: str) -> str | None:
        row = self._db.execute("SELECT path FROM sources WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else str(row[0])

    def sources_at(self, paths: Iterable[str], sensor: str) -> list[Source]:
        """Committed sources ingested from any of ``paths`` for ``sensor`` (earlier versions of one log)."""
        names = sorted(set(paths))
        marks = ", ".join("?" * len(names))
        rows = self._db.execute(
            f"SELECT sha256, path, sensor, log_type, rows, size FROM sources "
            f"WHERE sensor = ? AND path IN ({marks}) ORDER BY rowid", (sensor, *names)).fetchall()
        return [Source(*r) for r in rows]

    def part_relpaths(self, sha256s: Iterable[str]) -> list[str]:
        """Relative paths of the committed parts of these sources."""
        out: list[str] = []
        for sha in sha256s:
            out.extend(r[0] for r in self._db.execute(
                "SELECT relpath FROM parts WHERE sha256 = ? ORDER BY relpath", (sha,)))
        return out

    def log_types(self) -> list[str]:
        rows = self._db.execute("SELECT DISTINCT log_type FROM sources ORDER BY log_type").fetchall()
        return [r[0] for r in rows]

    def relpaths(self, log_type: str) -> set[str]:
        rows = self._db.execute("SELECT relpath FROM parts WHERE log_type = ?", (log_type,)).fetchall()
        return {r[0] for r in rows}

    def parts(self, log_type: str, relpaths: Iterable[str] | None = None) -> list[Part]:
        """Committed parts of one log type (all, or those named), with their source file's path."""
        query = ("SELECT p.relpath, p.sha256, p.log_type, p.day, p.rows, p.min_ts, p.max_ts, p.schema, s.path "
                 "FROM parts p JOIN sources s USING (sha256) WHERE p.log_type = ? ORDER BY p.relpath")
        wanted = None if relpaths is None else set(relpaths)
        out = []
        for r in self._db.execute(query, (log_type,)):
            if wanted is not None and r[0] not in wanted:
                continue
            out.append(Part(r[0], r[1], r[2], r[3], r[4], r[5], r[6], _schema_from(r[7]), r[8]))
        return out

    def source_schemas(self, log_type: str) -> list[tuple[str, pa.Schema]]:
        """(source path, schema) of every source file of a log type, including header-only ones."""
        rows = self._db.execute("SELECT path, schema FROM sources WHERE log_type = ? ORDER BY path",
                                (log_type,)).fetchall()
        return [(r[0], _schema_from(r[1])) for r in rows]

    def totals(self) -> list[tuple[str, int, int, int, int | None, int | None]]:
        """Per log type: rows, source files, part files, first and last ts (ns)."""
        return self._db.execute(
            "SELECT s.log_type, COALESCE(SUM(p.rows), 0), COUNT(DISTINCT s.sha256), COUNT(p.relpath), "
            "MIN(p.min_ts), MAX(p.max_ts) "
            "FROM sources s LEFT JOIN parts p USING (sha256) GROUP BY s.log_type ORDER BY s.log_type"
        ).fetchall()

    # ----------------------------------------------------------------- writes
    def record(self, *, sha256: str, path: str, sensor: str, log_type: str, rows: int,
               schema: pa.Schema | None, parts: list[Part], size: int | None = None,
               replaces: Iterable[str] = ()) -> None:
        """Commit one source file and all its parts in a single transaction (all or nothing).

        ``replaces``: SHA-256s of earlier versions of the same log; their source
        and part rows are deleted in the same transaction, so a reader sees
        either the old version or the new one, never both and never neither.
        Their Parquet files are then no longer referenced; the caller removes
        them after this returns (a crash in between leaves orphans, which the
        next ingest deletes and no load ever reads).
        """
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        old = [s for s in dict.fromkeys(replaces) if s != sha256]
        with self._db:
            for sha in old:
                self._db.execute("DELETE FROM parts WHERE sha256 = ?", (sha,))
                self._db.execute("DELETE FROM sources WHERE sha256 = ?", (sha,))
            self._db.execute(
                "INSERT INTO sources (sha256, path, sensor, log_type, rows, schema, ingested_at, size) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (sha256, path, sensor, log_type, rows, None if schema is None else _schema_blob(schema), now,
                 size),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO parts (relpath, sha256, log_type, day, rows, min_ts, max_ts, schema) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(p.relpath, sha256, p.log_type, p.day, p.rows, p.min_ts, p.max_ts, _schema_blob(p.schema))
                 for p in parts],
            )


@contextmanager
def open_manifest(store_dir: Path, *, create: bool = False) -> Iterator[Manifest]:
    manifest = Manifest(store_dir, create=create)
    try:
        yield manifest
    finally:
        manifest.close()
