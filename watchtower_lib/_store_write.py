"""Writing the store's Parquet parts crash-safely (used by :func:`watchtower_lib.store.ingest`).

Why the care: an analyst's store grows by hourly ingests on a sensor host that
may lose power. A reader must never see half a file, and a re-run must neither
duplicate nor lose rows. So each part is written under a hidden temporary name
in its final folder, fsynced, and renamed (atomic within one file system) only
when the whole source file has been read; the manifest commit comes last.
Memory stays bounded: batches stream from the reader straight into one open
ParquetWriter per day (at most ``MAX_OPEN`` at once).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._atomic import fsync_path
from ._manifest import MANIFEST_NAME, Manifest, Part
from .errors import StoreError

log = logging.getLogger(__name__)

UNKNOWN_DAY = "unknown"
TMP_SUFFIX = ".parquet.tmp"
SENSOR_COLUMN = "_sensor"
_DAY_NS = 86_400 * 10**9
_NO_TS = np.iinfo(np.int64).min
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_LOCK_NAME = ".lock"


def safe_log_type(log_type: str, path: Path) -> str:
    """Check a log type is usable as a folder name (it comes from the file, so it is untrusted)."""
    if not _SAFE.match(log_type) or ".." in log_type:
        raise StoreError(f"{path}: log type {log_type!r} (from #path, _path or the file name) cannot be a "
                         f"store folder; rename the file to <log_type>.log")
    return log_type


@dataclass
class _OpenPart:
    day: str
    n: int
    tmp: Path
    final: Path
    writer: pq.ParquetWriter
    schema: pa.Schema
    rows: int = 0
    min_ts: int | None = None
    max_ts: int | None = None
    pending: list[pa.RecordBatch] = field(default_factory=list)  # rows not yet in a row group
    pending_rows: int = 0

    def flush(self) -> None:
        """Write the buffered rows as one row group (few large groups compress and scan better)."""
        if self.pending:
            self.writer.write_table(pa.Table.from_batches(self.pending, schema=self.schema))
            self.pending, self.pending_rows = [], 0


class PartWriter:
    """Streams one source file's batches into ``<log_type>/date=<day>/.<sha256>-<n>.parquet.tmp``."""

    MAX_OPEN = 16  # days written at once; a file spanning more days gets more parts
    ROW_GROUP_ROWS = 131_072  # rows buffered per day before they become a row group
    MAX_PENDING_ROWS = 262_144  # rows buffered over all days: bounds memory whatever the file

    def __init__(self, store: Path, log_type: str, sha256: str, sensor: str) -> None:
        self.store = store
        self.log_type = log_type
        self.sha256 = sha256
        self.sensor = sensor
        self.rows = 0
        self.schema: pa.Schema | None = None
        self._open: dict[str, _OpenPart] = {}
        self._closed: list[_OpenPart] = []
        self._renamed: list[Path] = []
        self._n = 0
        self._pending = 0
        self._remove_stale_parts()

    def _remove_stale_parts(self) -> None:
        """Parts of this content renamed by a run that crashed before its manifest commit."""
        for stale in (self.store / self.log_type).glob(f"date=*/{self.sha256}-*.parquet"):
            log.warning("removing %s: left by an ingest that did not finish", stale)
            stale.unlink()

    def write(self, batch: pa.RecordBatch) -> None:
        batch = _with_sensor(batch, self.sensor)
        if self.schema is None:
            self.schema = batch.schema
        for day, part_rows, lo, hi in _split_by_day(batch):
            self._write_day(day, part_rows, lo, hi)
        self.rows += batch.num_rows

    def _write_day(self, day: str, rows: pa.RecordBatch, lo: int | None, hi: int | None) -> None:
        part = self._open.pop(day, None)
        if part is not None and not part.schema.equals(rows.schema):
            self._close(part)  # the file's columns changed mid-way (concatenated logs): new part
            part = None
        if part is None:
            part = self._new_part(day, rows.schema)
        self._open[day] = part  # most recently used last
        part.pending.append(rows)
        part.pending_rows += rows.num_rows
        self._pending += rows.num_rows
        part.rows += rows.num_rows
        if part.pending_rows >= self.ROW_GROUP_ROWS:
            self._flush(part)
        while self._pending > self.MAX_PENDING_ROWS:
            self._flush(max(self._open.values(), key=lambda p: p.pending_rows))
        if lo is not None and hi is not None:
            part.min_ts = lo if part.min_ts is None else min(part.min_ts, lo)
            part.max_ts = hi if part.max_ts is None else max(part.max_ts, hi)
        if len(self._open) > self.MAX_OPEN:
            oldest = next(iter(self._open))
            self._close(self._open.pop(oldest))

    def _new_part(self, day: str, schema: pa.Schema) -> _OpenPart:
        folder = self.store / self.log_type / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        n = self._n
        self._n += 1
        tmp = folder / f".{self.sha256}-{n}{TMP_SUFFIX}"
        final = folder / f"{self.sha256}-{n}.parquet"
        writer = pq.ParquetWriter(tmp, schema, compression="zstd")
        return _OpenPart(day, n, tmp, final, writer, schema)

    def _flush(self, part: _OpenPart) -> None:
        self._pending -= part.pending_rows
        part.flush()

    def _close(self, part: _OpenPart) -> None:
        self._flush(part)
        part.writer.close()
        fsync_path(part.tmp)
        self._closed.append(part)

    def finish(self) -> list[Part]:
        """Close, fsync and rename every part; returns them for the manifest (not yet committed)."""
        for part in list(self._open.values()):
            self._close(part)
        self._open.clear()
        folders = set()
        for part in self._closed:
            os.replace(part.tmp, part.final)
            self._renamed.append(part.final)
            folders.add(part.final.parent)
        for folder in folders | ({self.store / self.log_type} if folders else set()):
            fsync_path(folder)
        return [
            Part(relpath=part.final.relative_to(self.store).as_posix(), sha256=self.sha256,
                 log_type=self.log_type, day=part.day, rows=part.rows, min_ts=part.min_ts,
                 max_ts=part.max_ts, schema=part.schema)
            for part in self._closed
        ]

    def abort(self) -> None:
        """Remove everything this writer created (after an error; the manifest never saw it)."""
        for part in [*self._open.values(), *self._closed]:
            try:
                part.writer.close()
            except Exception:  # noqa: BLE001 - already failing; removing the file is what matters
                pass
            part.tmp.unlink(missing_ok=True)
        for final in self._renamed:
            final.unlink(missing_ok=True)
        self._open.clear()


def _with_sensor(batch: pa.RecordBatch, sensor: str) -> pa.RecordBatch:
    if SENSOR_COLUMN in batch.schema.names:
        batch = batch.drop_columns([SENSOR_COLUMN])
    column = pa.array([sensor] * batch.num_rows, pa.string())
    return batch.append_column(pa.field(SENSOR_COLUMN, pa.string()), column)


def schema_with_sensor(schema: pa.Schema) -> pa.Schema:
    """A reader schema plus the store's ``_sensor`` column (for files with no rows to write)."""
    if SENSOR_COLUMN in schema.names:
        schema = schema.remove(schema.get_field_index(SENSOR_COLUMN))
    return schema.append(pa.field(SENSOR_COLUMN, pa.string()))


def _split_by_day(batch: pa.RecordBatch) -> list[tuple[str, pa.RecordBatch, int | None, int | None]]:
    """(day, rows of that UTC day, min ts ns, max ts ns); unset or missing ts -> ``unknown``."""
    if batch.num_rows == 0:
        return []
    index = batch.schema.get_field_index("ts")
    if index < 0 or not pa.types.is_timestamp(batch.schema.field(index).type):
        return [(UNKNOWN_DAY, batch, None, None)]
    ts = batch.column(index).cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64())
    ns = ts.fill_null(_NO_TS).to_numpy(zero_copy_only=False)
    known = ns != _NO_TS
    days = np.where(known, ns // _DAY_NS, _NO_TS)
    out: list[tuple[str, pa.RecordBatch, int | None, int | None]] = []
    for day in np.unique(days):
        mask = days == day
        rows = batch if mask.all() else batch.filter(pa.array(mask))
        if day == _NO_TS:
            out.append((UNKNOWN_DAY, rows, None, None))
        else:
            values = ns[mask]
            label = str(np.datetime64(int(day), "D"))
            out.append((label, rows, int(values.min()), int(values.max())))
    return out


def remove_orphans(store: Path, manifest: Manifest) -> int:
    """Delete temp parts and uncommitted parts a crashed ingest left behind (call under the lock)."""
    removed = 0
    committed: dict[str, set[str]] = {}
    for child in sorted(store.iterdir()) if store.is_dir() else []:
        if not child.is_dir() or child.name.startswith("."):
            continue
        for path in child.glob("date=*/*"):
            relpath = path.relative_to(store).as_posix()
            if path.name.endswith(TMP_SUFFIX):
                pass
            elif path.suffix == ".parquet":
                known = committed.setdefault(child.name, manifest.relpaths(child.name))
                if relpath in known:
                    continue
            else:
                continue
            log.warning("removing %s: left by an ingest that did not finish", path)
            path.unlink()
            removed += 1
    return removed


class StoreLock:
    """An exclusive lock on the store, so two ingests (cron and an analyst) never interleave."""

    def __init__(self, store: Path) -> None:
        self.path = store / _LOCK_NAME
        self._fh: object | None = None

    def __enter__(self) -> StoreLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as SQLite still serialises the commits
            return self
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another ingest into %s to finish", self.path.parent)
            fcntl.flock(fh, fcntl.LOCK_EX)
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()  # type: ignore[attr-defined]  # closing releases the flock
            self._fh = None


__all__ = ["PartWriter", "schema_with_sensor", "StoreLock", "remove_orphans", "safe_log_type", "SENSOR_COLUMN", "UNKNOWN_DAY",
           "MANIFEST_NAME"]
