"""Durable, atomic writes: every file Watch Tower writes appears whole or not at all.

Why one module: records, reports, ledgers, models and collected logs all need the same three
steps (write a temp file beside the target, fsync it, rename it over the target, then fsync the
folder so the rename survives a power cut); five hand-rolled copies of them had drifted (some
skipped the fsync, one the folder). Readers see the old file or the complete new one.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's data, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(target: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` a temp file beside ``target``, fsync it, rename it over ``target``, fsync the folder.

    The temp name is hidden (``.<name>.tmp-<pid>``) so a folder walk never takes it for data; it is
    removed if ``write`` fails.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(target.parent)
    return target


def write_text_atomic(target: str | os.PathLike[str], text: str) -> Path:
    """:func:`write_atomic` of UTF-8 text."""
    return write_atomic(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
