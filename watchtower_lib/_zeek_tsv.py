"""Zeek TSV: header blocks, and data segments parsed by pyarrow.csv.

Why this shape: speed. A Zeek TSV file is header lines (``#...``) and data rows.
Every line that starts with ``#`` is a header or a comment (Zeek writes a data
value starting with ``#`` as ``\\x23``), so ``bytes.find(b"\\n#")`` cuts a file
into data segments in C. Each segment goes to ``pyarrow.csv.read_csv`` with the
column types declared (no quoting, no escapes, nulls = the unset marker), and only
columns that need it are post-processed (``_zeek_types.finish_column``).

When pyarrow refuses a segment (a value that does not parse as its type), the
segment is parsed again as raw bytes and the failing columns are converted value
by value, so the bad row can be named (line, field, value) or dropped.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ._zeek_types import STRING, Markers, arrow_type, csv_type, finish_column, normalise_type, parse_text, to_arrow
from .errors import ZeekParseError

log = logging.getLogger(__name__)

_HEX = re.compile(rb"\\x([0-9a-fA-F]{2})")
_SAFE_DELIMS = {b"\t", b",", b";", b"|", b" ", b"\x1f"}
_PROXY_DELIM = b"\x1f"  # Zeek always escapes control bytes in values, so this never occurs raw


@dataclass
class Block:
    """One header block: the markers and the columns that its data rows follow."""

    markers: Markers = field(default_factory=Markers)
    fields: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    path: str | None = None
    open: str | None = None
    line: int = 0  # line of the #fields directive

    def schema(self) -> pa.Schema:
        """Arrow schema of this block; each field keeps its Zeek type in metadata."""
        return pa.schema(
            [pa.field(f, arrow_type(t), metadata={"zeek_type": t}) for f, t in zip(self.fields, self.types)]
        )


@dataclass
class Segment:
    """Consecutive data rows under one block.

    ``data`` is a zero-copy view into a chunk (None for a header-only block, which
    still defines columns). ``first_line`` is 1-based. The consumer sets ``lines``
    (rows + dropped lines, as pyarrow counted them) so line numbers stay exact
    without a separate newline count; when it does not, the newlines are counted.
    """

    block: Block
    data: memoryview | None
    first_line: int
    has_escape: bool = False
    has_empty: bool = False
    lines: int | None = None


def _unhex(value: bytes) -> bytes:
    return _HEX.sub(lambda m: bytes([int(m.group(1), 16)]), value)


def _split_directive(line: bytes, sep: bytes) -> tuple[str, bytes, bytes]:
    """``#name<sep>value`` -> (name, value, the separator actually used on this line)."""
    for candidate in (sep, b"\t", b" "):
        name, found, value = line.partition(candidate)
        if found:
            return name[1:].decode("ascii", "replace"), value, candidate
    return line[1:].decode("ascii", "replace"), b"", sep


class _HeaderState:
    """Applies directives line by line; tells when a new block starts."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.markers = Markers()
        self.block: Block | None = None
        self.meta: dict[str, str | None] = {"path": None, "open": None}

    def apply(self, raw: bytes, line_no: int, frozen: bool = False) -> Block | None:
        """Apply one ``#`` line; returns a new Block when ``#fields`` starts one.

        ``frozen``: the current block already has rows, so a late ``#types`` line
        starts a new block instead of retyping rows that were read.
        """
        line = raw.rstrip(b"\r\n")
        if line.startswith(b"#separator"):
            value = line[len(b"#separator"):]
            value = value[1:] if value[:1] in (b" ", b"\t") else value
            sep = _unhex(value)
            if not sep:
                log.warning("%s:%d: #separator has no value; using a tab, Zeek's default", self.path, line_no)
                sep = b"\t"
            self.markers = replace(self.markers, separator=sep)
            return None
        name, value, used = _split_directive(line, self.markers.separator)
        if name == "set_separator":
            self.markers = replace(self.markers, set_separator=_unhex(value) or b",")
        elif name == "empty_field":
            self.markers = replace(self.markers, empty=_unhex(value))
        elif name == "unset_field":
            self.markers = replace(self.markers, unset=_unhex(value))
        elif name in ("path", "open"):
            self.meta[name] = value.decode("utf-8", "backslashreplace")
        elif name == "fields":
            fields = [f.decode("utf-8", "backslashreplace") for f in value.split(used)]
            if len(set(fields)) != len(fields) or not all(fields):
                raise ZeekParseError(self.path, "#fields has an empty or repeated column name", line=line_no,
                                     value=value.decode("utf-8", "replace"), expected="unique column names")
            self.block = Block(self.markers, fields, ["string"] * len(fields), self.meta["path"],
                               self.meta["open"], line_no)
            return self.block
        elif name == "types" and self.block is not None:
            types = [t.decode("utf-8", "replace") for t in value.split(used)]
            if len(types) != len(self.block.fields):
                raise ZeekParseError(
                    self.path, "#types and #fields have different lengths", line=line_no,
                    value=f"{len(types)} types", expected=f"{len(self.block.fields)} (one per #fields name)")
            if frozen:
                self.block = replace(self.block, types=types, line=line_no)
                return self.block
            self.block.types = types
        return None


def _next_header(buf: bytes | bytearray, pos: int, end: int) -> int:
    """Offset of the next line starting with '#' in buf[pos:end], else ``end``.

    Searches for the single byte '#' (memchr speed) and checks the byte before it,
    which is much faster than searching for the two bytes "\\n#".
    """
    i = buf.find(b"#", pos, end)
    while i >= 0:
        if i == pos or buf[i - 1] == 10:
            return i
        i = buf.find(b"#", i + 1, end)
    return end


def _contains(buf: bytes | bytearray, needle: bytes, pos: int, end: int) -> bool:
    """``needle in buf[pos:end]``, via memchr on its first byte while that byte is rare."""
    first = needle[:1]
    i = buf.find(first, pos, end)
    for _ in range(64):
        if i < 0:
            return False
        if buf.startswith(needle, i, end):
            return True
        i = buf.find(first, i + 1, end)
    return buf.find(needle, i, end) >= 0


def iter_segments(chunks: Iterable[tuple[bytes | bytearray, int]], path: str) -> Iterator[Segment]:
    """Cut byte chunks (each ending at a line break) into header blocks and data segments.

    Segments are views into the chunks, never copies. Header-only blocks come out as
    ``Segment(block, None, line)`` so their columns still count.
    """
    state = _HeaderState(path)
    line_no = 1
    emitted: Block | None = None  # block whose rows (or emptiness) we already reported
    for chunk, n in chunks:
        pos = 0
        view = memoryview(chunk)
        while pos < n:
            if chunk[pos] == 35:  # '#'
                nl = chunk.find(b"\n", pos, n)
                end = n if nl < 0 else nl + 1
                previous = state.block
                started = state.apply(bytes(chunk[pos:end]), line_no, frozen=previous is emitted)
                if started is not None and previous is not None and previous is not emitted:
                    yield Segment(previous, None, previous.line)
                    emitted = previous
                line_no += 1
                pos = end
                continue
            end = _next_header(chunk, pos, n)
            if state.block is None:
                raise ZeekParseError(path, "data line before any #fields header", line=line_no,
                                     value=bytes(chunk[pos:pos + 80]).decode("utf-8", "replace"),
                                     expected="a Zeek TSV header (#separator ... #fields ... #types ...)")
            markers = state.block.markers
            seg = Segment(state.block, view[pos:end], line_no,
                          has_escape=chunk.find(b"\\", pos, end) >= 0,
                          has_empty=bool(markers.empty) and _contains(chunk, markers.empty, pos, end))
            yield seg
            emitted = state.block
            line_no += seg.lines if seg.lines is not None else chunk.count(b"\n", pos, end) + (chunk[end - 1] != 10)
            pos = end
    if state.block is not None and state.block is not emitted:
        yield Segment(state.block, None, state.block.line)


# ------------------------------------------------------------ segment parsing
@dataclass
class SegmentResult:
    """A parsed segment: the rows that converted and what was dropped."""

    table: pa.Table
    skipped: list[tuple[int, str]]  # (line, reason) of dropped rows
    lines: int = 0  # lines the segment spans


def _pool() -> pa.MemoryPool:
    """jemalloc when pyarrow has it: it fragments least under this allocation pattern
    (measured: peak RSS 617 MB vs 731 MB with mimalloc for a 2M-row conn.log)."""
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:
        return pa.default_memory_pool()


def release_pools() -> None:
    """Hand freed Arrow memory back to the OS. Called after each segment: without it the
    allocators keep the parser's scratch memory and peak RSS grows by ~60 MB per 2M rows."""
    for pool in {id(p): p for p in (pa.default_memory_pool(), _pool())}.values():
        pool.release_unused()


def _delimiter(block: Block, data: memoryview) -> tuple[bytes, memoryview | bytes]:
    sep = block.markers.separator
    if sep in _SAFE_DELIMS:
        return sep, data
    return _PROXY_DELIM, bytes(data).replace(sep, _PROXY_DELIM)


def _read(data: memoryview | bytes, block: Block, delim: bytes, types: dict[str, pa.DataType]) -> pa.Table:
    """pyarrow.csv over one segment. Blank lines stay rows (of "") so pyarrow's row
    count is the segment's line count. A row with the wrong field count raises
    ArrowInvalid and the segment goes to the slow path (pyarrow's invalid-row
    callback is not used: it cannot pass rows that are not UTF-8)."""
    parse = pacsv.ParseOptions(
        delimiter=delim.decode("ascii"), quote_char=False, escape_char=False, double_quote=False,
        newlines_in_values=False, ignore_empty_lines=False,
    )
    convert = pacsv.ConvertOptions(
        column_types=types, null_values=[block.markers.unset.decode("utf-8", "replace")],
        strings_can_be_null=True, true_values=["T"], false_values=["F"],
    )
    read = pacsv.ReadOptions(column_names=block.fields, block_size=4 << 20)
    return pacsv.read_csv(pa.BufferReader(pa.py_buffer(data)), read_options=read, parse_options=parse,
                          convert_options=convert, memory_pool=_pool())


def _lines_of(data: memoryview | bytes) -> list[bytes]:
    lines = bytes(data).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.rstrip(b"\r") for line in lines]


def _row_lines(data: memoryview | bytes, delim: bytes, nfields: int,
               first_line: int) -> tuple[list[int], list[int], list[tuple[int, str]]]:
    """Line numbers of pyarrow's rows, which of them are blank lines, and the lines it
    dropped for their field count (reason attached)."""
    rows: list[int] = []
    blank: list[int] = []
    bad: list[tuple[int, str]] = []
    for k, text in enumerate(_lines_of(data)):
        n = text.count(delim) + 1
        if not text:
            blank.append(len(rows))
            rows.append(first_line + k)
        elif n == nfields:
            rows.append(first_line + k)
        else:
            bad.append((first_line + k, f"{n} fields where #fields declares {nfields}"))
    return rows, blank, bad


def parse_segment(seg: Segment, path: str, errors: str) -> SegmentResult:
    """Parse one data segment into a table with the block's final Arrow types."""
    block = seg.block
    if seg.data is None:
        return SegmentResult(block.schema().empty_table(), [], 0)
    delim, data = _delimiter(block, seg.data)
    table = None
    try:
        types = {f: csv_type(t) for f, t in zip(block.fields, block.types)}
        raw = _read(data, block, delim, types)
        lines = raw.num_rows
        first = block.fields[0]
        if types[first] == STRING and pc.any(pc.equal(raw[first], "")).as_py():
            raise ValueError("blank line or empty value: take the slow path")
        table = pa.table(
            [finish_column(raw[f], t, block.markers, escapes=seg.has_escape, empties=seg.has_empty)
             for f, t in zip(block.fields, block.types)],
            schema=block.schema())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        table = None
    if table is not None:
        return SegmentResult(table, [], lines)
    rows, blank, dropped = _row_lines(data, delim, len(block.fields), seg.first_line)
    lines = len(rows) + len(dropped)
    if dropped and errors == "raise":
        line, reason = dropped[0]
        raise ZeekParseError(path, f"row has the wrong number of fields ({reason})", line=line,
                             value=_lines_of(data)[line - seg.first_line].decode("utf-8", "backslashreplace"),
                             expected=f"{len(block.fields)} fields separated by {block.markers.separator!r}")
    if table is None:
        table, bad = _slow_table(data, block, delim)
        for i in blank:  # blank lines are not data: drop them without complaint
            bad.pop(i, None)
        if bad and errors == "raise":
            i = min(bad)
            name, value, reason = bad[i]
            raise ZeekParseError(path, f"value does not parse ({reason})", line=rows[i], field=name,
                                 value=value, expected=dict(zip(block.fields, block.types))[name])
        drop = set(bad) | set(blank)
        if drop:
            table = table.filter(pa.array([i not in drop for i in range(table.num_rows)]))
        dropped += [(rows[i], f"{bad[i][0]}={bad[i][1]!r}: {bad[i][2]}") for i in sorted(bad)]
    return SegmentResult(table, dropped, lines)


def _slow_table(data: memoryview | bytes, block: Block,
                delim: bytes) -> tuple[pa.Table, dict[int, tuple[str, str, str]]]:
    """Rows split in Python (same rows as ``_row_lines``), each column converted
    vectorised, else value by value. pyarrow is not used to split here: its
    invalid-row callback fails on rows that are not UTF-8."""
    n = len(block.fields)
    unset = block.markers.unset
    cells: list[list[bytes | None]] = [[] for _ in range(n)]
    for text in _lines_of(data):
        parts = text.split(delim) if text else [b""] * n
        if len(parts) != n:
            continue
        for k, part in enumerate(parts):
            cells[k].append(None if part == unset else part)
    columns = []
    bad: dict[int, tuple[str, str, str]] = {}
    for k, (name, ztype) in enumerate(zip(block.fields, block.types)):
        col = pa.chunked_array([pa.array(cells[k], pa.binary())])
        try:
            columns.append(finish_column(col.cast(csv_type(ztype)), ztype, block.markers))
            if not pc.any(pc.equal(col, b"")).as_py() or csv_type(ztype) == STRING:
                continue
            columns.pop()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
            pass
        values = []
        for i, value in enumerate(col.to_pylist()):
            try:
                values.append(parse_text(value, ztype, block.markers))
            except ValueError as exc:
                values.append(None)
                bad.setdefault(i, (name, value.decode("utf-8", "backslashreplace"), str(exc)))
        columns.append(to_arrow(values, ztype))
    return pa.table(columns, schema=block.schema()), bad


def unify(path: str, blocks: list[Block]) -> pa.Schema:
    """Union of the columns of all blocks, in order of first appearance.

    Raises ZeekSchemaConflict when two blocks give one column different types.
    """
    from .errors import ZeekSchemaConflict

    seen: dict[str, tuple[str, int]] = {}
    fields: list[pa.Field] = []
    for block in blocks:
        for name, ztype in zip(block.fields, block.types):
            if name not in seen:
                seen[name] = (ztype, block.line)
                fields.append(pa.field(name, arrow_type(ztype), metadata={"zeek_type": ztype}))
            elif normalise_type(seen[name][0]) != normalise_type(ztype):
                raise ZeekSchemaConflict(
                    path, f"column {name!r} changes type between header blocks (first at line {seen[name][1]})",
                    line=block.line, field=name, value=ztype, expected=seen[name][0])
    return pa.schema(fields)
