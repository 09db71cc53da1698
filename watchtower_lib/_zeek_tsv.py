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
import pyarrow.csv as pacsv

from ._zeek_types import Markers, arrow_type, csv_type, finish_column, normalise_type, parse_text, to_arrow
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
    """Consecutive data rows under one block; ``first_line`` is 1-based."""

    block: Block
    data: bytes | None  # None: a header-only block (zero rows) that still defines columns
    first_line: int


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

    def apply(self, raw: bytes, line_no: int) -> Block | None:
        """Apply one ``#`` line; returns a new Block when ``#fields`` starts one."""
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
            self.block.types = types
        return None


def iter_segments(chunks: Iterable[bytes], path: str) -> Iterator[Segment]:
    """Cut a stream of byte chunks into header blocks and data segments.

    A segment ends at a line break, so pyarrow never sees half a row; header-only
    blocks come out as ``Segment(block, None, line)`` so their columns still count.
    """
    state = _HeaderState(path)
    it = iter(chunks)
    buf = b""
    eof = False
    line_no = 1
    emitted: Block | None = None  # block whose rows (or emptiness) we already reported

    def more() -> bool:
        nonlocal buf, eof
        for chunk in it:
            if chunk:
                buf = buf + chunk if buf else chunk
                return True
        eof = True
        return False

    while True:
        if not buf and (eof or not more()):
            break
        if buf[:1] == b"#":
            nl = buf.find(b"\n")
            while nl < 0 and not eof:
                more()
                nl = buf.find(b"\n")
            line, buf = (buf[:nl], buf[nl + 1:]) if nl >= 0 else (buf, b"")
            previous = state.block
            if state.apply(line, line_no) is not None and previous is not None and previous is not emitted:
                yield Segment(previous, None, previous.line)
                emitted = previous
            line_no += 1
            continue
        end = buf.find(b"\n#")
        while end < 0 and buf.rfind(b"\n") < 0 and not eof:
            more()
            end = buf.find(b"\n#")
        if end >= 0:
            seg, buf = buf[: end + 1], buf[end + 1:]
        elif eof:
            seg, buf = buf, b""
        else:
            nl = buf.rfind(b"\n")
            seg, buf = buf[: nl + 1], buf[nl + 1:]
        if state.block is None:
            raise ZeekParseError(path, "data line before any #fields header", line=line_no,
                                 value=seg[:80].decode("utf-8", "replace"),
                                 expected="a Zeek TSV header (#separator ... #fields ... #types ...)")
        yield Segment(state.block, seg, line_no)
        emitted = state.block
        line_no += seg.count(b"\n")
    if state.block is not None and state.block is not emitted:
        yield Segment(state.block, None, state.block.line)


# ------------------------------------------------------------ segment parsing
@dataclass
class SegmentResult:
    """A parsed segment: the rows that converted and what was dropped."""

    table: pa.Table
    skipped: list[tuple[int, str]]  # (line, reason) of dropped rows


def _delimiter(block: Block, data: bytes) -> tuple[bytes, bytes]:
    sep = block.markers.separator
    if sep in _SAFE_DELIMS:
        return sep, data
    return _PROXY_DELIM, data.replace(sep, _PROXY_DELIM)


def _read(data: bytes, block: Block, delim: bytes, types: dict[str, pa.DataType],
          invalid: list[str] | None = None) -> pa.Table:
    def on_invalid(row: pacsv.InvalidRow) -> str:
        if invalid is not None:
            invalid.append(row.text)
        return "skip"

    parse = pacsv.ParseOptions(
        delimiter=delim.decode("ascii"), quote_char=False, escape_char=False, double_quote=False,
        newlines_in_values=False, ignore_empty_lines=True, invalid_row_handler=on_invalid,
    )
    convert = pacsv.ConvertOptions(
        column_types=types, null_values=[block.markers.unset.decode("utf-8", "replace")],
        strings_can_be_null=True, true_values=["T"], false_values=["F"],
    )
    read = pacsv.ReadOptions(column_names=block.fields, block_size=4 << 20)
    return pacsv.read_csv(pa.BufferReader(data), read_options=read, parse_options=parse, convert_options=convert)


def _row_lines(data: bytes, delim: bytes, nfields: int, first_line: int) -> tuple[list[int], list[tuple[int, str]]]:
    """Line numbers of the rows pyarrow kept, and of the rows it dropped for their field count."""
    rows: list[int] = []
    bad: list[tuple[int, str]] = []
    for k, line in enumerate(data.split(b"\n")):
        text = line.rstrip(b"\r")
        if not text:
            continue
        n = text.count(delim) + 1
        if n == nfields:
            rows.append(first_line + k)
        else:
            bad.append((first_line + k, f"{n} fields, expected {nfields}"))
    return rows, bad


def parse_segment(seg: Segment, path: str, errors: str) -> SegmentResult:
    """Parse one data segment into a table with the block's final Arrow types."""
    block = seg.block
    if seg.data is None:
        return SegmentResult(block.schema().empty_table(), [])
    delim, data = _delimiter(block, seg.data)
    nfields = len(block.fields)
    table = None
    invalid: list[str] = []
    try:
        raw = _read(data, block, delim, {f: csv_type(t) for f, t in zip(block.fields, block.types)}, invalid)
        table = pa.table([finish_column(raw[f], t, block.markers) for f, t in zip(block.fields, block.types)],
                         schema=block.schema())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        table = None
    lines: list[int] | None = None
    dropped: list[tuple[int, str]] = []
    if table is None or invalid:
        lines, dropped = _row_lines(data, delim, nfields, seg.first_line)
        if dropped and errors == "raise":
            line, reason = dropped[0]
            raise ZeekParseError(path, "row has the wrong number of fields", line=line,
                                 value=_line_text(data, line - seg.first_line), expected=reason)
    if table is None:
        table, bad = _slow_table(data, block, delim)
        if bad:
            assert lines is not None
            first = min(bad)
            field_name, value, reason = bad[first]
            if errors == "raise":
                raise ZeekParseError(path, f"value does not parse ({reason})", line=lines[first],
                                     field=field_name, value=value,
                                     expected=dict(zip(block.fields, block.types))[field_name])
            keep = pa.array([i not in bad for i in range(table.num_rows)])
            table = table.filter(keep)
            dropped += [(lines[i], f"{bad[i][0]}={bad[i][1]!r}: {bad[i][2]}") for i in sorted(bad)]
    return SegmentResult(table, dropped)


def _line_text(data: bytes, k: int) -> str:
    return data.split(b"\n")[k].rstrip(b"\r").decode("utf-8", "backslashreplace")


def _slow_table(data: bytes, block: Block, delim: bytes) -> tuple[pa.Table, dict[int, tuple[str, str, str]]]:
    """All columns read as bytes; each converted vectorised, else value by value."""
    raw = _read(data, block, delim, {f: pa.binary() for f in block.fields})
    columns = []
    bad: dict[int, tuple[str, str, str]] = {}
    for name, ztype in zip(block.fields, block.types):
        col = raw[name]
        try:
            columns.append(finish_column(col.cast(csv_type(ztype)), ztype, block.markers))
            continue
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
