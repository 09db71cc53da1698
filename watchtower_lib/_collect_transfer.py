"""Bring one remote file up to date under ``raw/<sensor>/`` without losing or corrupting anything.

The steps, and why:

1. **Skip** when the manifest says this exact version (size and mtime) is
   already complete and the local file still has that size.
2. **Download to a hidden temp name** (``.<name>.part``) next to the target, so a
   half-written file is never mistaken for a log.
3. **Resume** a leftover ``.part`` from its size when its first and last 64 KiB
   still match the remote file; for a file that *grew* (Zeek's ``current/``),
   start from a copy of the old complete file, so only the new tail travels.
4. **Check** the size, and the SHA-256 against the sensor's ``sha256sum`` of
   the same byte range when the sensor has one (a download that reused bytes
   and fails this check is fetched again whole in the same run:
   :class:`PrefixMismatch`; without ``sha256sum`` on the sensor the two 64 KiB
   samples are all that guards a reused prefix); **fsync**, then **rename**
   (folders are fsynced once per batch: if a power cut loses a rename, the
   manifest check sees the file missing and fetches it again).
5. **Never overwrite silently**: an older copy at the final name (a file that
   grew, or was replaced by rotation) is first renamed to
   ``.superseded/<stem>.prev-<UTC stamp><ext>`` in the same folder and recorded
   in the manifest. The folder is hidden so that ingesting ``raw/<sensor>/``
   (phase 2) does not store the old copy's rows next to the new file's.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._atomic import fsync_path
from ._collect_manifest import FileRecord, Manifest
from ._collect_paths import RemoteFile, old_copy_path, safe_local_path
from .errors import IntegrationError

log = logging.getLogger(__name__)

SAMPLE = 64 * 1024  # bytes compared at each end of a prefix before trusting it


class ConnectionLost(IntegrationError):
    """The connection died during a transfer; the sensor is retried (the ``.part`` is kept)."""


class TransferError(IntegrationError):
    """One file could not be brought up to date; the others continue."""


class PrefixMismatch(TransferError):
    """A download that reused bytes already here (a resumed ``.part`` or the old copy of a log that
    seemed to grow) does not hash like the sensor's file: the sensor's file was replaced, not grown.
    The caller fetches it again whole, in the same run."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one file: ``kind`` is unchanged, new, adopted, touched, grown or rotated."""

    kind: str
    local: Path
    transferred: int = 0
    resumed_from: int = 0
    old_copy: Path | None = None

    @property
    def is_new(self) -> bool:
        """Whether ``local`` holds content the store has not been given yet."""
        return self.kind in ("new", "adopted", "grown", "rotated")


@dataclass(frozen=True)
class Fetched:
    """A download complete in its ``.part`` file, waiting for :func:`finish` (fsync, checks, rename)."""

    rf: RemoteFile
    local: Path
    part: Path
    record: FileRecord | None
    local_size: int | None  # size of the copy already at ``local``, if any
    sha256: str
    transferred: int
    resumed_from: int


def sync_file(source, rf: RemoteFile, sensor_dir: Path, manifest: Manifest, sensor: str,
              verify: Callable[[RemoteFile, str], bool | None], on_bytes: Callable[[int], None],
              stamp: str, synced_dirs: set[Path]) -> Outcome:
    """Make ``raw/<sensor>/<rf.rel>`` hold the remote file's current content (:func:`fetch` + :func:`finish`)."""
    fetched = fetch(source, rf, sensor_dir, manifest, sensor, on_bytes)
    if isinstance(fetched, Outcome):
        return fetched
    return finish(fetched, manifest, sensor, verify, stamp, synced_dirs)


def fetch(source, rf: RemoteFile, sensor_dir: Path, manifest: Manifest, sensor: str,
          on_bytes: Callable[[int], None], *, reuse: bool = True) -> Outcome | Fetched:
    """Download what is missing of ``rf`` into its ``.part`` file (the part that needs the connection).

    ``reuse=False`` downloads every byte again: no resumed ``.part``, no old copy as a prefix
    (after :class:`PrefixMismatch`).

    Returns
    -------
    Outcome
        ``unchanged``: the manifest already has this version; nothing travelled.
    Fetched
        The ``.part`` holds all ``rf.size`` bytes; hand it to :func:`finish`.

    Raises
    ------
    ValueError
        The remote name cannot be placed safely under ``sensor_dir``.
    ConnectionLost
        The connection died mid-transfer (the ``.part`` stays for resuming).
    TransferError
        The file shrank on the sensor while it was read.
    OSError
        The sensor refused to open or read the file (permissions, vanished).
    """
    local = safe_local_path(sensor_dir, rf.rel)
    record = manifest.get(sensor, rf.rel)
    local_size = local.stat().st_size if local.is_file() else None
    if (record is not None and local_size == rf.size == record.size and record.mtime == rf.mtime):
        return Outcome("unchanged", local)

    local.parent.mkdir(parents=True, exist_ok=True)
    part = local.with_name(f".{local.name}.part")
    offset = 0
    if part.is_file() and not reuse:
        part.unlink()
    if part.is_file():
        have = part.stat().st_size
        if 0 < have <= rf.size and _same_prefix(source, rf, part, have):
            offset = have
            log.info("%s/%s: resuming an interrupted transfer at byte %d of %d", sensor, rf.rel, offset, rf.size)
        else:
            log.info("%s/%s: discarding a partial download that no longer matches the sensor's file",
                     sensor, rf.rel)
    elif reuse and local_size is not None and 0 < local_size < rf.size \
            and _same_prefix(source, rf, local, local_size):
        shutil.copyfile(local, part)
        offset = local_size
        log.info("%s/%s: grew from %d to %d bytes; fetching only the new tail", sensor, rf.rel, local_size, rf.size)

    sha, written = _download(source, rf, part, offset, on_bytes)
    got = offset + written
    if got != rf.size:
        if source.connection_lost():
            raise ConnectionLost(f"{rf.rel}: connection lost after {got} of {rf.size} bytes")
        raise TransferError(f"{rf.rel}: got {got} of {rf.size} bytes; the file shrank on the sensor while it "
                            f"was read (rotated?); it is fetched again on the next run")
    return Fetched(rf, local, part, record, local_size, sha, written, offset)


def finish(fetched: Fetched, manifest: Manifest, sensor: str, verify: Callable[[RemoteFile, str], bool | None],
           stamp: str, synced_dirs: set[Path]) -> Outcome:
    """Check, fsync and rename a fetched file into place, keeping any older copy; record it.

    Needs no SFTP channel, so it runs beside the next transfers (fsync latency
    does not hold a channel idle).

    Raises
    ------
    TransferError
        The sensor's SHA-256 of the same bytes differs (the ``.part`` is discarded).
    """
    rf, local, part, record, local_size, sha = (fetched.rf, fetched.local, fetched.part, fetched.record,
                                                 fetched.local_size, fetched.sha256)
    if verify(rf, sha) is False:
        part.unlink()
        if fetched.resumed_from:
            raise PrefixMismatch(
                f"{rf.rel}: the {fetched.resumed_from} bytes reused from an earlier download do not match the "
                f"sensor's file (replaced, not grown); fetching it again whole")
        raise TransferError(f"{rf.rel}: SHA-256 of the download ({sha[:16]}...) differs from the sensor's "
                            f"sha256sum of the same {rf.size} bytes; the download was discarded and is fetched "
                            f"again on the next run")
    kind, old_copy, old_sha = "new", None, None
    if local_size is not None:
        old_sha = record.sha256 if record is not None and record.size == local_size else _file_sha(local)
        if old_sha == sha:  # same content: nothing to keep twice
            part.unlink()
            manifest.put(FileRecord(sensor, rf.rel, rf.size, rf.mtime, sha, local))
            return Outcome("touched" if record is not None else "adopted", local, transferred=fetched.transferred)
        grown = local_size < rf.size and _file_sha(part, local_size) == old_sha
        kind = "grown" if grown else "rotated"
    fsync_path(part)
    if local_size is not None:
        old_copy = old_copy_path(local, stamp)
        old_copy.parent.mkdir(exist_ok=True)
        os.replace(local, old_copy)
        manifest.superseded(sensor, rf.rel, old_copy, local_size, old_sha, kind)
        log.info("%s/%s: %s on the sensor (%d -> %d bytes); the previous copy is kept as %s",
                 sensor, rf.rel, kind, local_size, rf.size, old_copy.name)
    os.replace(part, local)
    if old_copy is not None:
        fsync_dir(old_copy.parent)
        fsync_dir(local.parent)
    else:
        synced_dirs.add(local.parent)  # the caller fsyncs each folder once, after its batch
    manifest.put(FileRecord(sensor, rf.rel, rf.size, rf.mtime, sha, local))
    return Outcome(kind, local, transferred=fetched.transferred, resumed_from=fetched.resumed_from,
                   old_copy=old_copy)


def _download(source, rf: RemoteFile, part: Path, offset: int,
              on_bytes: Callable[[int], None]) -> tuple[str, int]:
    """Append bytes ``offset``.. of ``rf`` to ``part``; return (SHA-256 of all of ``part``, bytes written)."""
    h = hashlib.sha256()
    written = 0
    with open(part, "r+b" if offset else "wb") as out:
        if offset:
            while out.tell() < offset:
                chunk = out.read(min(1 << 20, offset - out.tell()))
                if not chunk:
                    break
                h.update(chunk)
            out.seek(offset)
            out.truncate()
        try:
            for chunk in source.read_chunks(rf.path, offset, rf.size):
                out.write(chunk)
                h.update(chunk)
                written += len(chunk)
                on_bytes(len(chunk))
        finally:
            out.flush()  # an interrupted .part keeps what arrived; finish() fsyncs a complete one
    return h.hexdigest(), written


def _same_prefix(source, rf: RemoteFile, local: Path, length: int) -> bool:
    """Whether the first ``length`` bytes of ``local`` look like the remote file's (both ends compared)."""
    ranges = {(0, min(SAMPLE, length)), (max(0, length - SAMPLE), length)}
    with open(local, "rb") as fh:
        for start, end in sorted(ranges):
            fh.seek(start)
            mine = fh.read(end - start)
            if mine != source.read_range(rf.path, start, end - start):  # sensor errors propagate
                return False
    return True


def _file_sha(path: Path, length: int | None = None) -> str:
    h = hashlib.sha256()
    remaining = length if length is not None else -1
    with open(path, "rb") as fh:
        while remaining != 0:
            chunk = fh.read(1 << 20 if remaining < 0 else min(1 << 20, remaining))
            if not chunk:
                break
            h.update(chunk)
            if remaining > 0:
                remaining -= len(chunk)
    return h.hexdigest()


fsync_dir = fsync_path  # the caller fsyncs each folder of a batch once (collect._transfer_all)
