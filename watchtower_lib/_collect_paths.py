"""Which remote files a sensor's patterns select, and where each may land locally.

Why this is strict: remote names come from a machine we do not control. A name
with ``..``, a separator, or a symlink pointing out of ``remote_dir`` must never
make the collector read outside ``remote_dir`` or write outside
``raw/<sensor>/``. Such entries are *refused* (reported, not fetched), never
silently rewritten into something else.

The walk is pattern-driven (``current/*.log`` lists ``current/`` only), works
over any *source* with ``root``, ``realpath``, ``listdir`` and ``stat`` (the SFTP
source in ``_sftp.py`` and :class:`LocalSource` here), and uses ``lstat``
information so a symlink is seen as a symlink before anything follows it.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import posixpath
import re
import stat as stat_mod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One directory entry as the source reports it (``kind`` from lstat unless followed)."""

    name: str
    kind: str  # "file", "dir", "link" or "other"
    size: int = 0
    mtime: int = 0


@dataclass(frozen=True)
class RemoteFile:
    """A file selected for collection: ``rel`` is '/'-separated and already checked safe."""

    rel: str
    path: str  # the path to open on the source
    size: int
    mtime: int


@dataclass(frozen=True)
class Refusal:
    """A remote name or pattern the collector would not follow, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Listing:
    files: list[RemoteFile] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def unsafe_name(name: str) -> str | None:
    """Why one path component may not be used locally, or None when it is fine."""
    if name in ("", ".", ".."):
        return f"the name {name!r} refers to a directory, not a file below remote_dir"
    if "/" in name or "\\" in name:
        return "the name contains a path separator"
    if _CONTROL.search(name):
        return "the name contains a control character"
    return None


_CONTROL = re.compile("[\x00-\x1f]")  # one regex search: a per-character loop cost 0.5 CPU-s per 2,000 files


def safe_local_path(sensor_dir: Path, rel: str) -> Path:
    """``sensor_dir / rel``, after proving it cannot resolve outside ``sensor_dir``.

    Raises
    ------
    ValueError
        ``rel`` is absolute, has an unsafe component, or resolves (through a
        local symlink) outside ``sensor_dir``; the message says which.
    """
    if rel.startswith("/") or rel.startswith("\\"):
        raise ValueError(f"{rel}: an absolute name cannot be placed under {sensor_dir}")
    parts = rel.split("/")
    for part in parts:
        problem = unsafe_name(part)
        if problem:
            raise ValueError(f"{rel}: {problem}")
    folder = os.path.join(os.fspath(sensor_dir), *parts[:-1])
    base = real_dir(os.fspath(sensor_dir))
    resolved = os.path.join(real_dir(folder), parts[-1])
    if os.path.islink(resolved):
        resolved = os.path.realpath(resolved)
    if not _inside(resolved, base):
        raise ValueError(f"{rel}: would be written to {resolved}, outside {base} (a local symlink?)")
    return Path(folder, parts[-1])


@functools.lru_cache(maxsize=4096)
def real_dir(folder: str) -> str:
    """``os.path.realpath`` of a local folder, cached: thousands of files share a few folders, and
    resolving every component of every target again cost 0.5 CPU-s per 2,000 files. ``collect``
    clears the cache at the start of each run (:func:`forget_real_dirs`), so a folder replaced by a
    symlink between runs is seen."""
    return os.path.realpath(folder)


def forget_real_dirs() -> None:
    real_dir.cache_clear()


def _inside(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root if root == "/" else root + "/")


SUPERSEDED_DIR = ".superseded"


def old_copy_path(local: Path, stamp: str) -> Path:
    """Where an older copy of ``local`` is kept: ``current/conn.log`` -> ``current/.superseded/conn.prev-<stamp>.log``.

    The tag goes before the first dot so ``.log`` / ``.log.gz`` stay at the end
    and the copy is still recognisable as a Zeek log. The folder is hidden
    because the store's folder walk skips hidden folders: phase 2 ingests whole
    ``raw/<sensor>/`` folders, and an older copy there would store its rows a
    second time (a grown log's old copy is a prefix of the new file, which
    replaces it in the store). The copy is kept, and recorded in the
    collection manifest's ``superseded`` table, just not ingested.
    """
    name = local.name
    cut = name.find(".", 1)
    stem, ext = (name, "") if cut < 0 else (name[:cut], name[cut:])
    folder = local.parent / SUPERSEDED_DIR
    candidate = folder / f"{stem}.prev-{stamp}{ext}"
    n = 2
    while candidate.exists():
        candidate = folder / f"{stem}.prev-{stamp}-{n}{ext}"
        n += 1
    return candidate


def list_matching(source, patterns: Sequence[str], *, workers: int = 1) -> Listing:
    """Every file below ``source.root`` that a pattern selects, plus what was refused.

    Patterns are '/'-separated globs relative to ``remote_dir`` (``*.log.gz``,
    ``current/*.log``, ``**/*.log``); ``*`` does not cross a ``/``. A file
    selected by two patterns is listed once; files come sorted by their path.

    The walk goes level by level and lists each level's folders on up to
    ``workers`` threads (for SFTP each thread has its own channel): a sensor
    keeps a folder per day, and listing them one round trip after another cost
    about a second per 170 folders on loopback. Each folder is listed once,
    whatever the number of patterns that look into it.
    """
    listing = Listing()
    try:
        root_real = source.realpath(source.root)
    except OSError as exc:
        listing.errors.append(f"{source.root}: cannot open remote_dir ({exc})")
        return listing
    tasks: list[_Task] = []
    for pattern in patterns:
        segments = [s for s in pattern.split("/") if s not in ("", ".")]
        if pattern.startswith("/") or ".." in segments or not segments:
            listing.refused.append(Refusal(pattern, "pattern is absolute or steps out of remote_dir with '..'; "
                                                    "patterns must be relative to remote_dir"))
            continue
        tasks.append((source.root, (), tuple(segments)))
    _walk(source, tasks, root_real, listing, workers)
    # two patterns can meet the same bad entry (`*.log` and `*/*.log` both look at a link): report it once
    listing.refused = list(dict.fromkeys(listing.refused))
    listing.errors = list(dict.fromkeys(listing.errors))
    listing.files.sort(key=lambda rf: rf.rel)
    return listing


_Task = tuple[str, tuple[str, ...], tuple[str, ...]]  # (folder path, its rel parts, pattern segments left)


def _walk(source, tasks: list[_Task], root_real: str, listing: Listing, workers: int) -> None:
    """Match ``tasks`` level by level; each level's folders are listed together (in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    listed: dict[str, list[Entry] | None] = {}  # folder -> entries (None: could not be listed)
    seen: set[str] = set()
    done: set[_Task] = set()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="list") if workers > 1 else None
    try:
        while tasks:
            folders = list(dict.fromkeys(t[0] for t in tasks if t[0] not in listed))
            rels = {t[0]: t[1] for t in tasks}
            results = pool.map(lambda f: _list(source, f), folders) if pool else map(lambda f: _list(source, f),
                                                                                       folders)
            for folder, (entries, error) in zip(folders, results):
                listed[folder] = entries
                if error is not None:
                    listing.errors.append(f"{'/'.join(rels[folder]) or '.'}: cannot list directory ({error})")
            following: list[_Task] = []
            pending = list(tasks)
            while pending:
                task = pending.pop(0)
                if task in done:
                    continue
                done.add(task)
                for child in _match(source, task, listed[task[0]] or [], root_real, listing, seen):
                    (pending if child[0] in listed else following).append(child)
            tasks = following
    finally:
        if pool is not None:
            pool.shutdown()


def _match(source, task: _Task, entries: list[Entry], root_real: str, listing: Listing,
           seen: set[str]) -> list[_Task]:
    """Apply the first pattern segment of ``task`` to its folder's ``entries``; the tasks it leads to."""
    dir_path, rel, segments = task
    seg, rest = segments[0], segments[1:]
    children: list[_Task] = []
    if seg == "**":
        if rest:
            children.append((dir_path, rel, rest))
        for entry in entries:
            if entry.kind == "dir" and unsafe_name(entry.name) is None:  # never follow links under **
                children.append((posixpath.join(dir_path, entry.name), (*rel, entry.name), segments))
        return children
    for entry in entries:
        if entry.name in (".", "..") or not fnmatchcase(entry.name, seg):
            continue
        child_rel = (*rel, entry.name)
        shown = "/".join(child_rel)
        problem = unsafe_name(entry.name)
        if problem:
            listing.refused.append(Refusal(shown, problem))
            continue
        path = posixpath.join(dir_path, entry.name)
        if entry.kind == "link":
            try:
                target = source.realpath(path)
            except OSError as exc:
                listing.errors.append(f"{shown}: symlink cannot be resolved ({_reason(exc)})")
                continue
            if not _inside(target, root_real):
                listing.refused.append(Refusal(shown, f"symlink points outside remote_dir (to {target}); "
                                                      f"not followed"))
                continue
            try:
                entry = source.stat(path)
            except OSError as exc:
                listing.errors.append(f"{shown}: cannot stat symlink target ({_reason(exc)})")
                continue
        if rest:
            if entry.kind == "dir":
                children.append((path, child_rel, rest))
        elif entry.kind == "file" and shown not in seen:
            seen.add(shown)
            listing.files.append(RemoteFile(shown, path, entry.size, entry.mtime))
    return children


def _list(source, dir_path: str) -> tuple[list[Entry] | None, str | None]:
    """(entries sorted by name, None) or (None, why the folder could not be listed)."""
    try:
        return sorted(source.listdir(dir_path), key=lambda e: e.name), None
    except OSError as exc:
        return None, _reason(exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__


def _kind(mode: int) -> str:
    if stat_mod.S_ISLNK(mode):
        return "link"
    if stat_mod.S_ISDIR(mode):
        return "dir"
    if stat_mod.S_ISREG(mode):
        return "file"
    return "other"


def entry_from_stat(name: str, st) -> Entry:
    """An :class:`Entry` from an ``os.stat_result`` or paramiko ``SFTPAttributes``."""
    mode = st.st_mode or 0
    return Entry(name, _kind(mode), int(st.st_size or 0), int(st.st_mtime or 0))


class LocalSource:
    """A ``kind: local`` sensor: the same walk and checks over a local folder."""

    kind = "local"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))

    def realpath(self, path: str) -> str:
        return os.path.realpath(path, strict=True)

    def listdir(self, path: str) -> list[Entry]:
        with os.scandir(path) as it:
            return [entry_from_stat(e.name, e.stat(follow_symlinks=False)) for e in it]

    def stat(self, path: str) -> Entry:
        return entry_from_stat(posixpath.basename(path), os.stat(path))

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    def read_chunks(self, path: str, offset: int, size: int) -> Iterator[bytes]:
        with open(path, "rb") as fh:
            fh.seek(offset)
            remaining = size - offset
            while remaining > 0:
                data = fh.read(min(READ_CHUNK, remaining))
                if not data:
                    return
                remaining -= len(data)
                yield data

    def verifier(self, files: Sequence[RemoteFile]) -> Callable[[RemoteFile, str], bool | None]:
        """``verify(rf, sha256)``: whether the copy's digest matches the first ``size`` bytes in the folder."""
        def verify(rf: RemoteFile, sha: str) -> bool | None:
            h = hashlib.sha256()
            for chunk in self.read_chunks(rf.path, 0, rf.size):
                h.update(chunk)
            return h.hexdigest() == sha
        return verify

    def connection_lost(self) -> bool:
        return False

    def close(self) -> None:
        pass
