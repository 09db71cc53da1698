"""Phase 1: pull Zeek logs from the configured sensors into ``raw/<sensor>/``.

Why it is built this way:

* **Nothing lost, nothing corrupt.** Files land under a temp name, are checked
  (size, and SHA-256 against the sensor's ``sha256sum`` where it has one),
  fsynced and renamed; ``raw/.manifest.sqlite`` records each complete version so
  a second run downloads nothing. Interrupted transfers resume; files that grew
  or were rotated are fetched again and the older copy is kept in a hidden
  ``.superseded/`` folder beside it, which the store's folder walk skips
  (see ``_collect_transfer``).
* **Nobody let in.** Host keys are checked against known_hosts, remote names and
  symlinks cannot lead outside ``remote_dir`` or ``raw/<sensor>/``
  (``_sftp``, ``_collect_paths``).
* **One bad sensor does not stop the others.** Sensors run concurrently in a
  bounded pool, each with timeouts and bounded retries with exponential
  backoff; every sensor gets a :class:`SensorResult`, and the report is not
  ``ok`` if any sensor failed or lost a file.

Example
-------
>>> import watchtower_lib as wt
>>> report = wt.collect.collect(wt.load_config("watchtower.yml"))   # doctest: +SKIP
>>> print(report.table())                                            # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ._collect_manifest import Manifest
from ._collect_paths import LocalSource, Refusal, RemoteFile, _reason, forget_real_dirs, list_matching
from ._collect_transfer import (ConnectionLost, Fetched, Outcome, PrefixMismatch, TransferError, fetch, finish,
                                fsync_dir)
from .config import SensorConfig, Settings
from .errors import ConfigError, IntegrationError, MissingDependencyError

if TYPE_CHECKING:  # pragma: no cover
    from .store import IngestReport

log = logging.getLogger(__name__)

MAX_SENSORS_AT_ONCE = 4
BACKOFF_BASE = 1.0  # seconds before the first retry; doubles each time
BACKOFF_CAP = 30.0
FINISHERS = 4  # threads that verify, fsync and rename finished downloads
HELPER_MIN_BYTES = 32 << 20  # below this much to fetch, one process is as fast as several (_collect_helper)
CHUNK_BYTES = 8 << 20  # with helper processes, work is handed out in chunks of about this size...
CHUNK_FILES = 96  # ...or this many files, whichever comes first

__all__ = ["collect", "ingest_new", "CollectReport", "SensorResult"]


@dataclass
class SensorResult:
    """What one sensor's collection did.

    ``status`` is ``ok`` (everything selected is here), ``partial`` (some files
    failed or were refused, the rest arrived) or ``failed`` (could not connect,
    authenticate or list, or gave up after the retries).
    """

    name: str
    kind: str
    status: str = "ok"
    files: int = 0  # files downloaded (new or changed) in this run
    bytes: int = 0  # bytes transferred in this run
    seconds: float = 0.0
    unchanged: int = 0
    new_paths: list[Path] = field(default_factory=list)
    old_copies: list[Path] = field(default_factory=list)
    resumed: list[tuple[str, int]] = field(default_factory=list)  # (remote path, byte offset)
    helpers: int = 0  # helper processes that fetched part of a large collection (_collect_helper)
    refused: list[Refusal] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def absorb(self, part: SensorResult) -> None:
        """Add what one chunk of this sensor's collection did (in a helper process) to this result."""
        for name in ("files", "bytes", "unchanged"):
            setattr(self, name, getattr(self, name) + getattr(part, name))
        for name in ("new_paths", "old_copies", "resumed", "refused", "errors"):
            getattr(self, name).extend(getattr(part, name))


@dataclass
class CollectReport:
    """Per-sensor results of one :func:`collect` run."""

    sensors: list[SensorResult]

    @property
    def ok(self) -> bool:
        """True only when every sensor collected everything it selected."""
        return all(s.ok for s in self.sensors)

    @property
    def new_paths(self) -> dict[str, list[Path]]:
        """Files that arrived or changed in this run, by sensor."""
        return {s.name: list(s.new_paths) for s in self.sensors}

    def rows(self) -> list[dict[str, object]]:
        return [{"sensor": s.name, "status": s.status, "files": s.files, "bytes": s.bytes,
                 "seconds": round(s.seconds, 2), "unchanged": s.unchanged,
                 "errors": len(s.errors) + len(s.refused)} for s in self.sensors]

    def table(self) -> str:
        """A fixed-width table (sensor, status, files, bytes, seconds, unchanged, errors) plus each problem."""
        rows = self.rows()
        heads = ["sensor", "status", "files", "bytes", "seconds", "unchanged", "errors"]
        cells = [[str(r[h]) if h != "seconds" else f"{r[h]:.2f}" for h in heads] for r in rows]
        widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(heads)]
        lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths)))]
        for c in cells:
            lines.append("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))))
        for s in self.sensors:
            lines.extend(f"  {s.name}: refused {r}" for r in s.refused)
            lines.extend(f"  {s.name}: error {e}" for e in s.errors)
        return "\n".join(lines)


def collect(settings: Settings, sensor: str | None = None, *, progress: bool = False) -> CollectReport:
    """Download new and changed logs of every configured sensor (or just ``sensor``).

    Parameters
    ----------
    settings : the loaded config; uses ``raw_dir`` and ``sensors``.
    sensor : collect only the sensor of this name.
    progress : show a tqdm bar of bytes on stderr.

    Returns
    -------
    CollectReport
        One :class:`SensorResult` per sensor, in config order. Failures are
        reported there, not raised, so one sensor cannot stop the others.

    Raises
    ------
    ConfigError
        No sensors configured, or no sensor named ``sensor``.
    """
    if sensor is not None:
        chosen = [settings.sensor(sensor)]
    else:
        chosen = list(settings.sensors)
    if not chosen:
        raise ConfigError("no sensors configured: add a `sensors:` list to the config file, e.g. "
                          "[{name: edge-01, host: 10.0.0.5, user: zeek, remote_dir: /opt/zeek/logs}] "
                          "or {name: local, kind: local, remote_dir: /opt/zeek/logs}")
    from tqdm.auto import tqdm

    forget_real_dirs()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    bar = _Progress(tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="collect",
                         disable=not progress, leave=False))
    with Manifest(settings.raw_dir) as manifest:
        workers = max(1, min(MAX_SENSORS_AT_ONCE, len(chosen)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="collect") as pool:
            futures = [pool.submit(_collect_sensor, s, Path(settings.raw_dir), manifest, bar, stamp)
                       for s in chosen]
            results = [f.result() for f in futures]
    bar.close()
    for r in results:
        log.info("sensor %s: %s, %d files (%d bytes) in %.1fs, %d unchanged, %d errors", r.name, r.status,
                 r.files, r.bytes, r.seconds, r.unchanged, len(r.errors) + len(r.refused))
    return CollectReport(results)


def ingest_new(report: CollectReport, settings: Settings, *, progress: bool = False) -> dict[str, IngestReport]:
    """Hand each sensor's newly collected files to the store (what ``watchtower collect --ingest`` does).

    Unreadable files are recorded in each ``IngestReport.errors`` rather than
    stopping the other files and sensors (``errors="skip"``). A file that grew
    or was rotated to the same name replaces its earlier version in the store
    (same path and sensor), so its old rows are not stored twice; its older copy
    under ``.superseded/`` is not ingested. A log rotated to a *different* name
    is a different source: rows already ingested from the live file are stored
    again from the archive (no row-level deduplication).

    Returns
    -------
    dict
        sensor name -> ``store.IngestReport``, for sensors that had new files.
    """
    from . import store

    done: dict[str, IngestReport] = {}
    for result in report.sensors:
        if result.new_paths:
            done[result.name] = store.ingest(result.new_paths, settings.store_dir, sensor=result.name,
                                             errors="skip", progress=progress)
    return done


class _Bytes(Protocol):
    """Where transfers report bytes: the tqdm bar here (``_Progress``), or a helper's pipe to it."""

    def plan(self, n: int) -> None: ...

    def advance(self, n: int) -> None: ...


class _Progress:
    """A thread-safe byte counter over a tqdm bar."""

    def __init__(self, bar) -> None:
        self.bar = bar
        self.lock = threading.Lock()

    def plan(self, n: int) -> None:
        with self.lock:
            self.bar.total = (self.bar.total or 0) + n
            self.bar.refresh()

    def advance(self, n: int) -> None:
        with self.lock:
            self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _open_source(sensor: SensorConfig):
    if sensor.kind == "local":
        return LocalSource(sensor.remote_dir)
    from ._sftp import SftpSource

    return SftpSource(sensor)


def _fatal(exc: BaseException) -> bool:
    """Errors that another attempt cannot fix (bad host key, login refused, config, missing paramiko)."""
    from ._sftp import AuthError, HostKeyError

    return isinstance(exc, (HostKeyError, AuthError, ConfigError, MissingDependencyError))


def _collect_sensor(sensor: SensorConfig, raw_dir: Path, manifest: Manifest, bar: _Progress,
                    stamp: str) -> SensorResult:
    result = SensorResult(sensor.name, sensor.kind)
    started = time.monotonic()
    sensor_dir = raw_dir / sensor.name
    pending: list[RemoteFile] | None = None
    attempt = 0
    while True:
        source = None
        try:
            source = _open_source(sensor)
            if pending is None:
                listing = list_matching(source, sensor.patterns,
                                        workers=sensor.parallel_files if sensor.kind == "ssh" else 1)
                if source.connection_lost():
                    raise ConnectionLost("connection lost while listing remote_dir")
                result.refused.extend(listing.refused)
                result.errors.extend(listing.errors)
                pending = listing.files
                log.info("sensor %s: %d files match %s", sensor.name, len(pending), ", ".join(sensor.patterns))
            pending = _transfer(source, sensor, pending, sensor_dir, manifest, bar, stamp, result)
            if not pending:
                break
            raise ConnectionLost(f"connection lost with {len(pending)} files to go")
        except Exception as exc:
            if _fatal(exc):
                result.errors.append(str(exc))
                result.status = "failed"
                break
            if not isinstance(exc, (OSError, EOFError, IntegrationError)) and not _is_ssh_error(exc):
                log.exception("sensor %s: unexpected error", sensor.name)
                result.errors.append(f"unexpected {type(exc).__name__}: {exc}")
                result.status = "failed"
                break
            attempt += 1
            what = f"{sensor.host}:{sensor.port}" if sensor.kind == "ssh" else sensor.remote_dir
            if attempt > sensor.retries:
                result.errors.append(f"{what}: gave up after {attempt} attempt(s): {_reason(exc)}")
                result.status = "failed"
                break
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
            log.warning("sensor %s: %s (%s); retry %d of %d in %.1fs", sensor.name, what, _reason(exc),
                        attempt, sensor.retries, delay)
            time.sleep(delay)
        finally:
            if source is not None:
                source.close()
    if result.status == "ok" and (result.errors or result.refused):
        result.status = "partial"
    result.seconds = time.monotonic() - started
    return result


def _is_ssh_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("paramiko")


def _transfer(source, sensor: SensorConfig, files: list[RemoteFile], sensor_dir: Path, manifest: Manifest,
              bar: _Progress, stamp: str, result: SensorResult) -> list[RemoteFile]:
    """Sync ``files`` in this process, or with helper processes when there is much to fetch."""
    helpers = min(sensor.processes, os.cpu_count() or 1) - 1 if sensor.kind == "ssh" else 0
    if helpers < 1:
        return _transfer_all(source, sensor, files, sensor_dir, manifest, bar, stamp, result)
    needed = [rf for rf in files if _needs_fetch(manifest, sensor.name, sensor_dir, rf)]
    chunks = _chunks(needed)
    # a few big files gain nothing from more processes: each file is fetched by one channel
    if sum(rf.size for rf in needed) < HELPER_MIN_BYTES or len(chunks) < 2 * (helpers + 1):
        return _transfer_all(source, sensor, files, sensor_dir, manifest, bar, stamp, result, needed=needed)
    return _transfer_shared(source, sensor, files, needed, chunks, sensor_dir, manifest, bar, stamp, result,
                            helpers)


def _chunks(files: list[RemoteFile]) -> deque[list[RemoteFile]]:
    out: deque[list[RemoteFile]] = deque()
    chunk: list[RemoteFile] = []
    size = 0
    for rf in files:
        chunk.append(rf)
        size += rf.size
        if size >= CHUNK_BYTES or len(chunk) >= CHUNK_FILES:
            out.append(chunk)
            chunk, size = [], 0
    if chunk:
        out.append(chunk)
    return out


def _transfer_shared(source, sensor: SensorConfig, files: list[RemoteFile], needed: list[RemoteFile],
                     queue: deque[list[RemoteFile]], sensor_dir: Path, manifest: Manifest, bar: _Progress,
                     stamp: str, result: SensorResult, helpers: int) -> list[RemoteFile]:
    """Sync ``needed`` (cut into ``queue``), this process and ``helpers`` helper processes taking chunks in turn.

    Files the manifest already has are accounted here first. Each chunk is an
    ordinary :func:`_transfer_all`, here or in a helper (``_collect_helper``).
    """
    from ._collect_helper import HelperProcess

    # parallel_files is for the sensor as a whole: each process opens its share of the channels
    sensor = replace(sensor, parallel_files=max(1, sensor.parallel_files // (helpers + 1)))
    wanted = {rf.rel for rf in needed}
    unchanged = [rf for rf in files if rf.rel not in wanted]
    if unchanged:
        _transfer_all(source, sensor, unchanged, sensor_dir, manifest, bar, stamp, result, needed=[])
    bar.plan(sum(rf.size for rf in needed))
    lock = threading.Lock()
    changed = threading.Condition(lock)
    left: list[RemoteFile] = []  # cut off by this process's lost connection
    running = [0]
    stopping = threading.Event()  # this process failed or was interrupted: helpers take no more work

    def take() -> list[RemoteFile] | None:
        with lock:
            return queue.popleft() if queue and not left and not stopping.is_set() else None

    def give_back(chunk: list[RemoteFile]) -> None:
        with changed:
            queue.appendleft(chunk)
            changed.notify_all()

    def merge(part: SensorResult, lost: list[RemoteFile]) -> None:
        with lock:
            result.absorb(part)
        if lost:  # the helper's connection was lost (it stops): its files are fetched here
            give_back(lost)

    def serve(helper: HelperProcess) -> None:
        try:
            if helper.serve(take, bar.advance, bar.plan, merge, give_back):
                with lock:
                    result.helpers += 1
        finally:
            helper.close()
            with changed:
                running[0] -= 1
                changed.notify_all()

    threads = []
    for _ in range(helpers):
        try:
            helper = HelperProcess(sensor, sensor_dir.parent, stamp)
        except OSError as exc:
            log.info("sensor %s: cannot start a helper process (%s); one process fetches everything",
                     sensor.name, exc)
            break
        with lock:
            running[0] += 1
        thread = threading.Thread(target=serve, args=(helper,), name=f"helper-{sensor.name}", daemon=True)
        thread.start()
        threads.append(thread)
    try:
        while True:
            with changed:
                while not queue and running[0] and not left:
                    changed.wait()  # helpers still busy: one may give its chunk back
                if left or not queue:
                    break
                chunk = queue.popleft()
            lost = _transfer_all(source, sensor, chunk, sensor_dir, manifest, bar, stamp, result, plan_total=False,
                                 needed=chunk)
            if lost:  # this process's connection is gone: stop here (the caller reconnects and retries)
                with lock:
                    left.extend(lost)
    except BaseException:
        stopping.set()
        raise
    finally:
        for thread in threads:
            thread.join()
    return left + [rf for chunk in queue for rf in chunk]


def _transfer_all(source, sensor: SensorConfig, files: list[RemoteFile], sensor_dir: Path, manifest: Manifest,
                  bar: _Bytes, stamp: str, result: SensorResult, *, plan_total: bool = True,
                  needed: list[RemoteFile] | None = None) -> list[RemoteFile]:
    """Sync ``files``; return those cut off by a lost connection.

    Up to ``sensor.parallel_files`` threads transfer, each on its own SFTP
    channel; completed downloads go to a small pool that verifies, fsyncs and
    renames them (:func:`finish`), so disk latency never holds a channel idle.
    ``plan_total=False``: the caller already added these bytes to the progress total.
    ``needed``: those of ``files`` the caller already found missing or changed (``_needs_fetch``).
    """
    todo = deque(files)
    left: list[RemoteFile] = []
    again: list[RemoteFile] = []  # reused bytes did not match the sensor's file: fetch whole (PrefixMismatch)
    lock = threading.Lock()
    stop = threading.Event()
    if needed is None:
        needed = [rf for rf in files if _needs_fetch(manifest, sensor.name, sensor_dir, rf)]
    planned_bytes = {rf.rel: rf.size for rf in needed}
    if plan_total:
        bar.plan(sum(planned_bytes.values()))
    verify = source.verifier(needed)
    synced_dirs: set[Path] = set()

    def file_error(rf: RemoteFile, exc: BaseException) -> None:
        log.warning("sensor %s: %s: %s", sensor.name, rf.rel, _reason(exc))
        with lock:
            result.errors.append(f"{rf.rel}: {_reason(exc)}")

    def account(rf: RemoteFile, outcome: Outcome) -> None:
        with lock:
            planned = planned_bytes.get(rf.rel, 0)
            if planned and outcome.transferred + outcome.resumed_from < planned:
                bar.plan(outcome.transferred + outcome.resumed_from - planned)
            result.bytes += outcome.transferred  # also a "touched" file's: its bytes did travel
            if outcome.kind in ("unchanged", "touched"):
                result.unchanged += 1
                return
            result.files += 1
            if outcome.is_new:
                result.new_paths.append(outcome.local)
            if outcome.old_copy is not None:
                result.old_copies.append(outcome.old_copy)
            if outcome.resumed_from:
                result.resumed.append((rf.rel, outcome.resumed_from))

    def finish_one(fetched: Fetched) -> None:
        try:
            outcome = finish(fetched, manifest, sensor.name, verify, stamp, synced_dirs)
        except PrefixMismatch as exc:
            log.warning("sensor %s: %s", sensor.name, exc)
            with lock:
                result.bytes += fetched.transferred  # they travelled, in vain
                again.append(fetched.rf)
            return
        except (OSError, TransferError) as exc:
            file_error(fetched.rf, exc)
            return
        except Exception as exc:  # e.g. the manifest's disk is full: report it, never pass it silently
            log.exception("sensor %s: %s: unexpected error while finishing the download", sensor.name,
                          fetched.rf.rel)
            file_error(fetched.rf, exc)
            return
        account(fetched.rf, outcome)

    def fetch_one(rf: RemoteFile, reuse: bool = True) -> Fetched | None:
        """Download one file; account for it, or record why not. None: nothing to finish."""
        try:
            fetched = fetch(source, rf, sensor_dir, manifest, sensor.name, bar.advance, reuse=reuse)
        except ValueError as exc:
            with lock:
                result.refused.append(Refusal(rf.rel, str(exc)))
            return None
        except Exception as exc:
            if isinstance(exc, ConnectionLost) or _connection_error(source, exc):
                with lock:
                    left.append(rf)
                stop.set()
                return None
            if not isinstance(exc, (OSError, TransferError)):
                raise
            file_error(rf, exc)
            return None
        if isinstance(fetched, Outcome):
            account(rf, fetched)
            return None
        return fetched

    def worker(finishers: ThreadPoolExecutor) -> None:
        while not stop.is_set():
            with lock:
                if not todo:
                    return
                rf = todo.popleft()
            fetched = fetch_one(rf)
            if fetched is not None:
                finishers.submit(finish_one, fetched)

    n = max(1, min(sensor.parallel_files if sensor.kind == "ssh" else 1, len(needed)))
    with ThreadPoolExecutor(max_workers=FINISHERS, thread_name_prefix=f"finish-{sensor.name}") as finishers:
        if n == 1:
            worker(finishers)
        else:
            with ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"collect-{sensor.name}") as pool:
                for future in [pool.submit(worker, finishers) for _ in range(n)]:
                    future.result()
    for rf in again:  # rare (a replaced file that looked grown): whole again, one at a time
        if stop.is_set():
            left.append(rf)
            continue
        fetched = fetch_one(rf, reuse=False)
        if fetched is not None:
            finish_one(fetched)
    for folder in synced_dirs:
        fsync_dir(folder)
    return left + list(todo)


def _needs_fetch(manifest: Manifest, sensor: str, sensor_dir: Path, rf: RemoteFile) -> bool:
    record = manifest.get(sensor, rf.rel)
    if record is None or record.size != rf.size or record.mtime != rf.mtime:
        return True
    try:
        return (sensor_dir / rf.rel).stat().st_size != rf.size
    except (OSError, ValueError):
        return True


def _connection_error(source, exc: BaseException) -> bool:
    if isinstance(exc, (TimeoutError, EOFError)) or _is_ssh_error(exc):
        return True
    return source.connection_lost()
