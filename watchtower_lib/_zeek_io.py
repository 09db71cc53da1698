"""Bytes in: plain or gzip files read in chunks that end at line breaks, and format sniffing.

Why a module: both readers (TSV and JSON) consume the same chunk stream, and
bounded memory for ``iter_batches`` comes from here: nothing ever holds the file.
"""
from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Iterator
from typing import Any

from .errors import ZeekParseError

log = logging.getLogger(__name__)

CHUNK_BYTES = 16 << 20  # bytes handed to pyarrow at a time: bounds memory, keeps both cores busy
MAX_LINE_BYTES = 64 << 20  # no Zeek record is this long: past it, the file is not a log (fail, do not buffer it all)
_GZIP_MAGIC = b"\x1f\x8b"


class Source:
    """Decompressed bytes of a file, in chunks; gzip is read with zlib so damage is survivable.

    ``gzip.GzipFile.read`` loses everything decoded in a call that hits a truncated
    stream; decoding compressed blocks ourselves keeps every complete line before it.
    """

    def __init__(self, path: str | os.PathLike[str], errors: str) -> None:
        self.path = os.fspath(path)
        self.errors = errors
        self.damaged: str | None = None
        self.gzip = False  # known once chunks() has looked at the magic bytes

    def chunks(self) -> Iterator[tuple[bytes | bytearray, int]]:
        """``(buffer, n)`` pairs: ``buffer[:n]`` is the next piece of the file, ending at a
        line break (except at EOF). A plain file reuses one buffer, so read each piece
        before asking for the next (fresh 16 MB buffers cost page faults on every chunk)."""
        try:
            f = open(self.path, "rb")
        except OSError as exc:
            raise ZeekParseError(self.path, f"cannot open the file ({exc.strerror or exc})") from None
        with f:
            gz = self.gzip = f.read(2) == _GZIP_MAGIC
            f.seek(0)
            if gz:
                for data in self._gunzip(f):
                    yield data, len(data)
            else:
                yield from self._plain(f)

    def _too_long(self, offset: int) -> ZeekParseError:
        return ZeekParseError(self.path, f"no line break in {MAX_LINE_BYTES:,} bytes from byte {offset:,}",
                              expected="Zeek TSV or JSON lines (is this a binary file or a capture, not a log?)")

    def _plain(self, f: Any) -> Iterator[tuple[bytearray, int]]:
        buf = bytearray(CHUNK_BYTES)
        carry = b""
        offset = 0  # of buf[0] in the file
        while True:
            if len(buf) < len(carry) + CHUNK_BYTES // 2:  # a very long line: grow geometrically
                buf = bytearray(2 * len(carry) + CHUNK_BYTES)
            buf[: len(carry)] = carry
            n = f.readinto(memoryview(buf)[len(carry):])
            end = len(carry) + n
            if n == 0:
                if carry:
                    yield buf, end
                return
            cut = buf.rfind(b"\n", 0, end) + 1
            if cut == 0:  # no line break yet: keep reading
                if end >= MAX_LINE_BYTES:
                    raise self._too_long(offset)
                carry = bytes(buf[:end])
                continue
            carry = bytes(buf[cut:end])
            offset += cut
            yield buf, cut

    def _gunzip(self, f: Any) -> Iterator[bytes]:
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        carry = b""
        total = 0
        pending: list[bytes] = []
        size = 0
        while True:
            comp = f.read(1 << 20)
            try:
                if not comp:
                    if not d.eof and (total or size or carry or d.unconsumed_tail):
                        raise zlib.error("compressed stream ends before its end marker")
                    break
                out = [d.decompress(comp)]
                while d.eof and d.unused_data:  # concatenated gzip members (cat a.gz b.gz)
                    rest = d.unused_data
                    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                    out.append(d.decompress(rest))
            except zlib.error as exc:
                self._damage(f"gzip data is truncated or corrupt after {total + size} decompressed bytes ({exc})")
                data = carry + b"".join(pending)
                if data.rfind(b"\n") >= 0:  # keep only complete lines before the damage
                    yield data[: data.rfind(b"\n") + 1]
                return
            pending += out
            size += sum(map(len, out))
            if size >= CHUNK_BYTES:
                data = carry + b"".join(pending)
                cut = data.rfind(b"\n") + 1
                if cut:
                    carry, pending, total, size = data[cut:], [], total + size, 0
                    yield data[:cut]
                elif len(data) >= MAX_LINE_BYTES:
                    raise self._too_long(total - len(carry))
        tail = carry + b"".join(pending)
        if tail:
            yield tail

    def _damage(self, message: str) -> None:
        if self.errors == "raise":
            raise ZeekParseError(self.path, message,
                                 expected="a complete gzip file (or errors='skip' to keep the rows before the damage)")
        self.damaged = message


def sniff(first: bytes, path: str) -> str:
    """'tsv' or 'json' from the first decisive line; a clear error for anything else."""
    for raw in first.splitlines():
        line = raw.strip()
        if line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        if not line:
            continue
        if line.startswith((b"#fields", b"#separator", b"#types")):
            return "tsv"
        if line.startswith(b"#"):
            continue
        if line.startswith(b"{"):
            return "json"
        break
    raise ZeekParseError(
        path, "not a Zeek log: no '#fields' header and no JSON lines",
        value=first[:80].decode("utf-8", "backslashreplace"),
        expected="Zeek TSV with its #fields/#types header, or Zeek JSON lines")


Chunks = Iterator[tuple[bytes | bytearray, int]]


def peek(chunks: Chunks) -> tuple[bytes, Chunks]:
    """The first MB of the stream (a copy), and an iterator replaying the first chunk."""
    first = next(chunks, None)
    head = b"" if first is None else bytes(first[0][: min(first[1], 1 << 20)])

    def replay() -> Chunks:
        if first is not None:
            yield first
        yield from chunks

    return head, replay()


def name_type(path: str) -> str | None:
    """Log type from a file name: conn.log, dns.json.gz, conn.log.labeled, labeled-conn.log."""
    name = os.path.basename(path)
    name = re.sub(r"^labell?ed-", "", name)
    stem = name.split(".")[0]
    return stem or None
