"""The local Parquet store: Zeek logs partitioned by log type and day (the embedded default).

Layout::

    <store>/_manifest.sqlite                         which source files are in, and their parts
    <store>/<log_type>/date=YYYY-MM-DD/<sha256>-<n>.parquet
    <store>/<log_type>/date=unknown/...              rows whose ts is unset or missing

Why this shape: every later phase asks for "log type X between two times", so a
folder per log type and a hive partition per UTC day let a read open only the
days it needs; the ``ts`` filter then trims the edges. File names carry the
source file's content hash, so re-ingesting after a crash rewrites the same
names instead of adding duplicates.

Guarantees: ingesting the same content twice adds nothing (the manifest is keyed
by SHA-256); a crash mid-ingest leaves no partial data visible. Parts are written
under hidden temporary names (pyarrow.dataset ignores names starting with ``.``),
fsynced, renamed, and only then committed to the manifest in one transaction;
:func:`load` reads committed parts only. The next ingest removes orphans (temp
files, and renamed parts a crash left uncommitted).

A log that changed at the same path (Zeek appending to ``current/conn.log``, or
a log rotated to the same name) *replaces* its earlier version: the sources are
matched on (absolute path, sensor), so a grown file's old rows are not stored a
second time. The order makes the swap atomic for readers:

1. write the new version's parts (temp names, fsync, rename) - not yet in the
   manifest, so invisible; a crash here leaves the old version in place and
   orphans that the next ingest deletes;
2. one SQLite transaction deletes the old version's source and part rows and
   inserts the new ones - the single commit point: before it readers see only
   the old rows, after it only the new;
3. unlink the old version's Parquet files - already unreferenced, so a crash
   here only leaves orphans, which the next ingest deletes and no load reads.

What is *not* deduplicated: the same rows under a different path. A log that
Zeek rotates to another name (``current/conn.log`` later arriving as
``2026-12-03/conn.00:00:00-01:00:00.log.gz``) is a different source, so rows
that were ingested from ``current/conn.log`` before the rotation are stored
again from the archive (until ``current/conn.log`` itself is replaced by new
content). There is no row-level deduplication.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ._manifest import MANIFEST_NAME, Manifest, Source
from ._store_read import files, load, log_types, summary
from ._store_write import PartWriter, StoreLock, remove_orphans, safe_log_type, schema_with_sensor
from .errors import StoreError, WatchtowerError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

LOCAL_SENSOR = "local"
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class IngestReport:
    """What one :func:`ingest` call did (the CLI prints it as the summary table)."""

    files_ingested: int = 0
    files_skipped: int = 0  # content already in the manifest
    files_replaced: int = 0  # earlier versions (same path and sensor) replaced by a changed file
    rows_replaced: int = 0  # rows of those earlier versions, removed from the store
    rows_by_log_type: dict[str, int] = field(default_factory=dict)
    files_written: int = 0  # Parquet parts
    errors: dict[str, str] = field(default_factory=dict)  # source file -> one-line reason
    not_logs: list[str] = field(default_factory=list)  # skipped while walking folders
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(self.rows_by_log_type.values())

    def log_type_table(self) -> pd.DataFrame:
        """Rows ingested per log type, most first (``rows`` column, indexed by log type)."""
        import pandas as pd

        rows = pd.Series(self.rows_by_log_type, name="rows", dtype="int64").rename_axis("log_type")
        return rows.sort_values(ascending=False, kind="stable").to_frame()

    def errors_table(self) -> pd.DataFrame:
        """One row per file that was not ingested, with why (sorted by file)."""
        import pandas as pd

        return pd.DataFrame(sorted(self.errors.items()), columns=["file", "why it was not ingested"])


def ingest_sources(sources: Mapping[str, Iterable[str | Path]], store_dir: str | Path, *, errors: str = "skip",
                   progress: bool = False) -> dict[str, IngestReport]:
    """Ingest each sensor's files and folders under its own sensor name (``runner.phase_sources`` output).

    Why per sensor: every stored row carries the sensor it came from. Returns sensor -> report.
    """
    return {name: ingest(list(paths), store_dir, sensor=name, errors=errors, progress=progress)
            for name, paths in sources.items()}


def combine_reports(reports: Iterable[IngestReport]) -> IngestReport:
    """One report for several ingests (phase 2's totals): counts and times added, rows and errors merged."""
    total = IngestReport()
    for r in reports:
        total.files_ingested += r.files_ingested
        total.files_skipped += r.files_skipped
        total.files_replaced += r.files_replaced
        total.rows_replaced += r.rows_replaced
        total.files_written += r.files_written
        total.seconds += r.seconds
        total.errors.update(r.errors)
        total.not_logs.extend(r.not_logs)
        for log_type, n in r.rows_by_log_type.items():
            total.rows_by_log_type[log_type] = total.rows_by_log_type.get(log_type, 0) + n
    return total


def ingest_table(reports: Mapping[str, IngestReport]) -> pd.DataFrame:
    """One row per sensor: files ingested, already in the store, rows, unreadable files, seconds."""
    import pandas as pd

    cols = ["sensor", "files ingested", "already in the store", "rows", "unreadable files", "seconds"]
    return pd.DataFrame([(name, r.files_ingested, r.files_skipped, r.rows, len(r.errors), round(r.seconds, 1))
                         for name, r in reports.items()], columns=cols)


# ---------------------------------------------------------------------- ingest
def ingest(
    paths: str | Path | Iterable[str | Path],
    store_dir: str | Path,
    *,
    sensor: str | None = None,
    errors: str = "raise",
    progress: bool = False,
) -> IngestReport:
    """Add Zeek logs (files or folders, searched recursively) to the Parquet store.

    Parameters
    ----------
    paths : files and/or folders. Files named explicitly are always read (a file
        that is not Zeek fails clearly); in folders, files that do not look like
        Zeek TSV or JSON (READMEs, label rules) are skipped with a log message.
    store_dir : the store; created when missing.
    sensor : value of the ``_sensor`` column (default ``"local"``). Content already
        in the store is skipped whichever sensor it came from. A file whose path
        (made absolute) and sensor match an earlier source but whose content
        differs is a new version of that log: it replaces the earlier version's
        rows (a grown log is stored once, not old rows twice). See the module
        docstring for the crash-safe order, and for what is still duplicated
        (the same rows under another file name after a rotation).
    errors : ``"raise"`` stops at the first unreadable file (files already
        committed stay committed); ``"skip"`` drops malformed rows (the reader's
        ``errors="skip"``) and records unreadable files in ``report.errors``.
    progress : show a tqdm bar (files, rows) on stderr.

    Returns
    -------
    IngestReport

    Raises
    ------
    StoreError
        A path does not exist, or the store cannot be written.
    ZeekParseError
        With ``errors="raise"``, a file that is not valid Zeek.
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    started = time.perf_counter()
    store = Path(store_dir)
    report = IngestReport()
    sources = _discover([paths] if isinstance(paths, (str, Path)) else list(paths), report)
    sensor_name = sensor or LOCAL_SENSOR
    bar = _progress_bar(len(sources)) if progress else None
    try:
        store.mkdir(parents=True, exist_ok=True)
        with StoreLock(store), Manifest(store, create=True) as manifest:
            remove_orphans(store, manifest)
            for path in sources:
                try:
                    _ingest_file(path, store, manifest, sensor_name, errors, report, bar)
                except (WatchtowerError, pa.ArrowException) as exc:
                    error = exc if isinstance(exc, WatchtowerError) else StoreError(
                        f"{path}: cannot store its rows as Parquet ({exc})")
                    if errors == "raise":
                        raise error from (None if error is exc else exc)
                    report.errors[str(path)] = str(error)
                    log.warning("skipped %s: %s", path, error)
                if bar is not None:
                    bar.update(1)
    except OSError as exc:
        raise StoreError(f"cannot write the store at {store}: {exc}") from exc
    finally:
        if bar is not None:
            bar.close()
    report.seconds = time.perf_counter() - started
    log.info("ingested %d files (%d rows, %d already in the store) into %s in %.1f s",
             report.files_ingested, report.rows, report.files_skipped, store, report.seconds)
    return report


def _ingest_file(path: Path, store: Path, manifest: Manifest, sensor: str, errors: str,
                 report: IngestReport, bar: Any) -> None:
    from . import zeek

    before = _fingerprint(path)
    source = os.path.abspath(path)
    # earlier versions of this log: stores written before paths were absolute match the name as given
    earlier = manifest.sources_at({source, str(path)}, sensor)
    digest, prefixes = _sha256(path, [s.size for s in earlier if s.size is not None and s.size <= before[0]])
    if manifest.has(digest):
        report.files_skipped += 1
        same = manifest.source_of(digest)
        if same in (source, str(path)):  # the usual re-run: say it once in the summary, not per file
            log.debug("%s: already in the store", path)
        else:
            log.info("%s: already in the store (same content as %s)", path, same)
        return
    log_type = safe_log_type(_log_type(path), path)
    old_parts = manifest.part_relpaths(s.sha256 for s in earlier)
    writer = PartWriter(store, log_type, digest, sensor)
    try:
        for batch in zeek.iter_batches(path, errors=errors):
            writer.write(batch)
            if bar is not None:
                bar.set_postfix_str(f"{report.rows + writer.rows:,} rows ({path.name})")  # moves within a big file
        parts = writer.finish()  # closed, fsynced and renamed
        schema = writer.schema
        if schema is None:  # header-only file: keep its columns so load() can return them
            schema = schema_with_sensor(zeek.read_arrow(path, errors=errors).schema)
        if _fingerprint(path) != before:  # the rows read may not be the content hashed
            raise StoreError(f"{path}: the file changed while it was being ingested (is Zeek still "
                             f"writing it?); ingest rotated logs, or run again once it is closed")
        # the commit point: the earlier versions' rows go and this file's arrive in one transaction
        manifest.record(sha256=digest, path=source, sensor=sensor, log_type=log_type,
                        rows=writer.rows, schema=schema, parts=parts, size=before[0],
                        replaces=[s.sha256 for s in earlier])
    except BaseException:
        writer.abort()
        raise
    # after the commit: the earlier versions' files are unreferenced (a crash here leaves orphans only)
    _remove_replaced(store, old_parts)
    for old in earlier:
        _log_replaced(path, old, before[0], writer.rows,
                      grown=old.size is not None and prefixes.get(old.size) == old.sha256)
    report.files_replaced += len(earlier)
    report.rows_replaced += sum(s.rows for s in earlier)
    report.files_ingested += 1
    report.files_written += len(parts)
    report.rows_by_log_type[log_type] = report.rows_by_log_type.get(log_type, 0) + writer.rows
    log.debug("%s: %d rows of %s in %d parts", path, writer.rows, log_type, len(parts))


def _remove_replaced(store: Path, relpaths: list[str]) -> None:
    """Delete the Parquet files of versions the manifest no longer lists (after the commit)."""
    for relpath in relpaths:
        try:
            (store / relpath).unlink(missing_ok=True)
        except OSError as exc:  # harmless: unreferenced, and the next ingest removes it as an orphan
            log.warning("could not remove %s (%s); the next ingest removes it", store / relpath, exc)


def _log_replaced(path: Path, old: Source, size: int, rows: int, *, grown: bool) -> None:
    if grown:
        log.info("%s: grew from %d to %d bytes since it was ingested; its earlier %d rows were replaced by the "
                 "whole file's %d rows", path, old.size, size, old.rows, rows)
    elif old.size is None:  # ingested before the manifest kept sizes: cannot tell growth from rotation
        log.warning("%s: its content changed since it was ingested; the earlier version's %d rows were "
                    "replaced by this file's %d rows", path, old.rows, rows)
    else:
        log.warning("%s: its content changed since it was ingested and does not start with the earlier "
                    "version (rotated to the same name, or rewritten); the earlier version's %d rows were "
                    "removed from the store and replaced by this file's %d rows", path, old.rows, rows)


def _log_type(path: Path) -> str:
    """The log type as the reader sees it: ``#path`` / ``_path``, else the file name."""
    from . import zeek

    return zeek.log_type(path) or path.name.split(".", 1)[0]


def _fingerprint(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    return stat.st_size, stat.st_mtime_ns


def _sha256(path: Path, prefix_sizes: Iterable[int] = ()) -> tuple[str, dict[int, str]]:
    """SHA-256 of the file, and of its first ``n`` bytes for each ``n`` in ``prefix_sizes`` (one read).

    The prefix digests tell a log that grew (its earlier version is a prefix) from
    one that was replaced.
    """
    digest = hashlib.sha256()
    prefixes: dict[int, str] = {}
    position = 0
    try:
        with open(path, "rb") as fh:
            for mark in sorted(set(prefix_sizes)):
                while position < mark and (chunk := fh.read(min(1 << 20, mark - position))):
                    digest.update(chunk)
                    position += len(chunk)
                if position == mark:
                    prefixes[mark] = digest.copy().hexdigest()
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:  # an input problem, not the store's: report it per file
        raise StoreError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    return digest.hexdigest(), prefixes


def _head_text(path: Path, size: int = 65536) -> str:
    """The first ``size`` bytes of a file as text, gunzipped when gzip (tolerates truncation)."""
    with open(path, "rb") as fh:
        raw = fh.read(size)
    if raw.startswith(_GZIP_MAGIC):
        try:
            raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, size)
        except zlib.error:
            return ""
    return raw.decode("utf-8", "replace")


def looks_like_zeek(path: Path) -> bool:
    """True when a file starts like Zeek TSV (``#separator``/``#fields``) or Zeek JSON lines."""
    for line in _head_text(path).splitlines()[:100]:
        text = line.strip()
        if not text:
            continue
        if text.startswith("#"):
            if text.startswith(("#separator", "#fields", "#types")):
                return True
            continue
        return text.startswith("{")
    return False


def _discover(paths: list[str | Path], report: IngestReport) -> list[Path]:
    """Expand folders and check every path exists.

    Walks folders in sorted order without entering hidden folders (``.venv``,
    ``.git``, and the ``.superseded/`` folders where collection keeps the older
    copies of grown or rotated logs - their rows are already in the store, or
    were replaced by the newer copy) or a Watch Tower store (a folder holding
    ``_manifest.sqlite``), so ``watchtower ingest .`` from a checkout reads the
    logs, not our own output.
    """
    out: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            for folder, dirs, names in os.walk(path):
                if MANIFEST_NAME in names:
                    log.info("skipping %s: it is a Watch Tower store", folder)
                    dirs[:] = []
                    continue
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(n for n in names if not n.startswith(".")):
                    found = Path(folder) / name
                    if looks_like_zeek(found):
                        out.append(found)
                    else:
                        report.not_logs.append(str(found))
                        log.info("skipping %s: not a Zeek log (no #fields header, not JSON lines)", found)
        else:
            raise StoreError(f"{path}: no such file or folder to ingest")
    return out


def _progress_bar(total: int) -> Any:
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (cron, CI logs)
    return tqdm(total=total, unit="file", desc="ingest", leave=True, disable=None)


__all__ = ["IngestReport", "ingest", "ingest_sources", "combine_reports", "ingest_table", "load", "summary",
           "log_types", "files", "looks_like_zeek"]
