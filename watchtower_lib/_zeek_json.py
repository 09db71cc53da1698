"""Zeek JSON lines -> Arrow, with the same column types as the TSV reader.

Why: JSON carries no types, yet downstream code must see one schema whatever the
format. Standard logs (identified by ``_path``, else the file name) take their
types from ``schemas/zeek_types.json``, which ``scripts/gen_zeek_schema.py``
derives from real TSV headers. Other fields are inferred from the values: bools,
integers, numbers, lists, and strings that are all ISO-8601 timestamps become
``time``. ``ts`` and ``_write_ts`` are always ``time`` (epoch number or ISO text).

An inferred type depends only on the values in file order, never on where the
batches are cut (``read_arrow``, ``read_log`` and ``iter_batches`` with any
``batch_rows`` give the same values): a column stays null-typed until a value
appears, int widens to double, and a value that fits no common type (a string
where numbers were) is a bad row with a ``ZeekParseError`` naming file, line,
field, value and the type the column had. See :class:`JsonTyper`.

Two paths give the same tables, as in the TSV reader. A batch of lines goes first to the
vectorised path (``_zeek_json_fast``: ``pyarrow.json`` parses it, ``pyarrow.compute`` converts
whole columns), about 10x faster; any batch that path cannot vouch for (a broken line, bytes
that are not UTF-8, a value that does not fit its type, ...) is decoded line by line with
:mod:`json` and converted value by value (:meth:`JsonTyper._slow_table`), which names the bad
line, field and value. ``FAST = False`` forces the line-by-line path (the tests compare the two).
"""
from __future__ import annotations

import codecs
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import pyarrow as pa

from . import _zeek_json_fast as fast
from ._zeek_types import convert_json, looks_iso, split_type, to_arrow
from .errors import ZeekParseError

log = logging.getLogger(__name__)

_TIME_FIELDS = {"ts", "_write_ts"}


@lru_cache(maxsize=1)
def builtin_schema() -> dict[str, dict[str, str]]:
    """Log type -> {column: Zeek type} for Zeek's standard logs (shipped JSON file)."""
    text = resources.files("watchtower_lib").joinpath("schemas/zeek_types.json").read_text("utf-8")
    data = json.loads(text)
    return {k: v for k, v in data.get("logs", data).items() if isinstance(v, dict)}


#: Use the vectorised path (``_zeek_json_fast``) where it applies; False forces the line-by-line
#: path everywhere (the tests compare the two).
FAST = True
#: Batches of fewer rows than this go line by line: the vectorised path costs about a millisecond a
#: batch whatever its size, the line-by-line path about 50 microseconds a row.
FAST_MIN_ROWS = 256


def _line_ends(octets: np.ndarray) -> np.ndarray:
    """Offsets just past each LF, found 1 MB at a time (no chunk-sized temporary)."""
    step = 1 << 20
    parts = [np.flatnonzero(octets[i:i + step] == 10) + (i + 1) for i in range(0, len(octets), step)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class _Lines:
    """The data lines of a chunk stream (blank lines and ``#`` comments removed), handed out in runs.

    Each line keeps its line number as ``bytes.splitlines`` counts lines (so a lone CR ends a
    line, as it always did here). A chunk whose every line starts with ``{`` and holds no lone CR
    (every Zeek JSON log) is used as it is; any other chunk is split and its lines stripped,
    which costs a pass in Python, but only where comments, blank lines or odd line ends are.
    Memory: one chunk (16 MB) and the line-end offsets of its lines.
    """

    def __init__(self, chunks: Iterable[tuple[bytes | bytearray, int]]) -> None:
        self._chunks = iter(chunks)
        self._rest = b""
        self._done = False
        self.line_no = 0  # lines read so far
        self._data = b""  # current chunk's data lines, each ending in b"\n"
        self._ends = np.zeros(0, np.int64)  # offset just past each line's b"\n"
        self._numbers: np.ndarray | None = None  # line numbers when not consecutive
        self._first = 0  # line number of the chunk's first data line (when consecutive)
        self._pos = 0  # next data line in the chunk
        self.braces = True  # every data line of the current chunk starts with "{"

    def _fill(self) -> bool:
        """Load the next chunk with at least one data line; False at the end of the stream."""
        while not self._done:
            got = next(self._chunks, None)
            if got is None:
                self._done = True
                data, self._rest = self._rest, b""
            else:
                buf, n = got
                data = bytes(memoryview(buf)[:n])  # one copy (buf[:n] would make two)
                if self._rest:
                    data = self._rest + data
                cut = data.rfind(b"\n") + 1
                data, self._rest = data[:cut], data[cut:]
            if not data:
                continue
            if not data.endswith(b"\n"):
                data += b"\n"
            octets = np.frombuffer(data, np.uint8)
            ends = _line_ends(octets)
            if data.startswith(b"{") and (octets[ends[:-1]] == 0x7B).all() and not self._lone_cr(data, octets):
                self._data, self._ends, self._numbers, self._first = data, ends, None, self.line_no + 1
                self.line_no += len(ends)
                self.braces = True
            else:
                kept: list[bytes] = []
                numbers: list[int] = []
                for raw in data.splitlines():
                    self.line_no += 1
                    text = raw.strip()
                    if not text or text.startswith(b"#"):
                        continue
                    kept.append(text)
                    numbers.append(self.line_no)
                if not kept:
                    continue
                self._data = b"\n".join(kept) + b"\n"
                self._numbers = np.array(numbers, np.int64)
                self._ends = np.cumsum(np.fromiter((len(k) + 1 for k in kept), np.int64, len(kept)))
                self.braces = all(k.startswith(b"{") for k in kept)
            self._pos = 0
            return True
        return False

    @staticmethod
    def _lone_cr(data: bytes, octets: np.ndarray) -> bool:
        """A CR not followed by LF (``splitlines`` ends a line there; pyarrow does not)."""
        if b"\r" not in data:
            return False
        cr = np.flatnonzero(octets == 13)
        return bool((octets[cr + 1] != 10).any())  # data ends with LF, so cr + 1 is in range

    def take(self, n: int) -> tuple[bytes, np.ndarray, bool] | None:
        """Up to ``n`` data lines as one bytes object, their line numbers, and whether every line
        starts with ``{``; None at the end."""
        parts: list[bytes] = []
        numbers: list[np.ndarray] = []
        braces = True
        while n > 0:
            if self._pos >= len(self._ends) and not self._fill():
                break
            k = min(n, len(self._ends) - self._pos)
            start = int(self._ends[self._pos - 1]) if self._pos else 0
            end = int(self._ends[self._pos + k - 1])
            parts.append(self._data if start == 0 and end == len(self._data) else self._data[start:end])
            if self._numbers is None:
                numbers.append(np.arange(self._first + self._pos, self._first + self._pos + k, dtype=np.int64))
            else:
                numbers.append(self._numbers[self._pos:self._pos + k])
            braces = braces and self.braces
            self._pos += k
            n -= k
            if self._pos >= len(self._ends):  # drop a consumed chunk now: memory stays one chunk
                self._data, self._ends, self._numbers = b"", np.zeros(0, np.int64), None
        if not parts:
            return None
        return (parts[0] if len(parts) == 1 else b"".join(parts)), np.concatenate(numbers), braces


@dataclass
class JsonBatch:
    """One batch of lines: undecoded (``raw``, for the vectorised path) or decoded into ``rows``.

    ``decode`` makes the rows line by line; when it drops bad lines (``errors="skip"``) it reads
    on until the batch holds ``want`` rows, so batches hold the same rows whichever path ran.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    dropped: list[tuple[int, str]] = field(default_factory=list)
    raw: bytes | None = None
    raw_lines: Any = None  # numpy array of the raw lines' numbers
    braces: bool = False  # every raw line starts with "{"
    want: int = 0
    source: _Lines | None = None
    path: str = ""
    errors: str = "raise"
    _ends: Any = None

    def line_text(self, i: int) -> bytes:
        """Raw line ``i`` of an undecoded batch."""
        assert self.raw is not None
        if self._ends is None:
            self._ends = _line_ends(np.frombuffer(self.raw, np.uint8))
        start = int(self._ends[i - 1]) if i else 0
        return self.raw[start:int(self._ends[i]) - 1]

    def decode(self) -> None:
        """Decode the raw lines with ``json`` (the line-by-line path), reading on past dropped lines."""
        raw, numbers = self.raw, self.raw_lines
        self.raw = self.raw_lines = self._ends = None
        while raw is not None:
            self._decode(raw.split(b"\n")[:-1], numbers.tolist())
            more = self.want - len(self.rows)
            got = self.source.take(more) if more > 0 and self.source is not None else None
            raw, numbers = (got[0], got[1]) if got is not None else (None, None)

    def _decode(self, texts: list[bytes], numbers: list[int]) -> None:
        for raw, line_no in zip(texts, numbers):
            text = raw.strip()
            try:
                obj = _loads(text)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                shown = text[:200].decode("utf-8", "backslashreplace")
                if self.errors == "raise":
                    raise ZeekParseError(self.path, f"line is not a JSON object ({exc})", line=line_no, value=shown,
                                         expected="one JSON object per line") from None
                self.dropped.append((line_no, "not a JSON object"))
                continue
            self.rows.append(obj)
            self.lines.append(line_no)


def _bytes_as_xnn(exc: UnicodeError) -> tuple[str, int]:
    r"""Decode error handler: each byte that is not UTF-8 becomes the JSON text ``\\xNN``, i.e. the
    value ``\xNN``, as Zeek itself writes such bytes and as the TSV reader returns them."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    bad = exc.object[exc.start:exc.end]
    return "".join(f"\\\\x{b:02x}" for b in bad), exc.end


codecs.register_error("watchtower-json-xnn", _bytes_as_xnn)


def _loads(text: bytes) -> Any:
    try:
        return json.loads(text)
    except UnicodeDecodeError:  # raw bytes that are not UTF-8 (Zeek escapes them; other writers may not)
        return json.loads(text.decode("utf-8", "watchtower-json-xnn"))


def iter_rows(chunks: Iterable[tuple[bytes | bytearray, int]], path: str, errors: str,
              batch_rows: int) -> Iterator[JsonBatch]:
    """Batches of ``batch_rows`` rows (the last may hold fewer), in file order.

    A batch is handed over undecoded when the vectorised path may take it (``JsonTyper.table``
    decodes it if that path refuses); small batches are decoded here, line by line.
    """
    lines = _Lines(chunks)
    while True:
        got = lines.take(batch_rows)
        if got is None:
            return
        batch = JsonBatch(raw=got[0], raw_lines=got[1], braces=got[2], want=batch_rows, source=lines, path=path,
                          errors=errors)
        if not FAST or batch_rows < FAST_MIN_ROWS:
            batch.decode()
        yield batch


#: The type of an inferred column before any row gave it a value (an Arrow null column).
UNDECIDED = "null"
_NUMBERS = ("int", "count", "double")
_EXACT = 2**53  # integers up to this magnitude are exact as doubles


class _Conflict(ValueError):
    """A value that no type can hold together with the values already returned."""


def _kind(value: Any) -> str:
    """The Zeek type one non-null JSON scalar suggests on its own."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "count" if value >= 2**63 else "int"  # out-of-range values fail in convert_json
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "time" if looks_iso(value) else "string"
    return "string"  # an object (or a list inside a list) is kept as its JSON text


def _widen_scalar(current: str, value: Any) -> str:
    if value is None:
        return current
    new = _kind(value)
    if current in (UNDECIDED, new):
        return new
    if current == "string" and new == "time":
        return current  # ISO-looking text in a text column is text
    if current in _NUMBERS and new in _NUMBERS:
        if "double" in (current, new):
            return "double"  # int -> double keeps every earlier value (exact below 2**53)
        if current == "count" and value >= 0:
            return current
        if current == "count":
            raise _Conflict("a negative integer where earlier rows had count (integers of 2**63 and more)")
        raise _Conflict("an integer of 2**63 or more where earlier rows had int (signed 64-bit)")
    what = {"time": "an ISO-8601 time", "string": "a string", "bool": "a bool", "double": "a number",
            "int": "an integer", "count": "an integer"}[new]
    raise _Conflict(f"{what} where earlier rows had {current}")


def widen(current: str, value: Any) -> str:
    """The type a column of ``current`` type needs to hold ``value`` as well.

    Why a widening order instead of "the first batch decides": the result must not
    depend on where batches are cut. Undecided (all null so far) takes any type;
    int and count widen to double; ISO text in a string column stays text. Anything
    else would change values already returned, so it raises :class:`_Conflict`.
    """
    if value is None:
        return current
    kind, inner = split_type(current)
    if isinstance(value, list):
        if current == UNDECIDED:
            inner = UNDECIDED
        elif kind != "vector":
            raise _Conflict(f"a list where earlier rows had {current}")
        for element in value:
            try:
                inner = _widen_scalar(inner, element)
            except _Conflict as exc:
                raise _Conflict(f"in a list: {exc}".replace("earlier rows", "earlier elements")) from None
        return f"vector[{inner}]"
    if kind == "vector":
        raise _Conflict(f"a single value where earlier rows had {current}")
    return _widen_scalar(current, value)


def _largest_int(value: Any) -> int:
    """The largest magnitude of the integers in a value (0 when there are none)."""
    items = value if isinstance(value, list) else [value]
    return max((abs(v) for v in items if isinstance(v, int) and not isinstance(v, bool)), default=0)


def _arrow_column(values: list[Any], ztype: str) -> pa.Array:
    if ztype == UNDECIDED:
        return pa.nulls(len(values))
    if ztype == f"vector[{UNDECIDED}]":
        return pa.array(values, pa.list_(pa.null()))
    return to_arrow(values, ztype)


class JsonTyper:
    """Turns batches of decoded rows into Arrow tables whose values do not depend on the batching.

    A column of the built-in schema (and ``ts``/``_write_ts``) has its type from
    the start and carries it as ``zeek_type`` field metadata. Any other column's
    type follows from its values in file order (:func:`widen`): it stays an Arrow
    null column until a value appears, an integer column becomes double when a
    float arrives, and so on. So one batch may return int64 and a later one
    float64 for the same column; ``pa.concat_tables(..., promote_options=
    "permissive")`` (what ``read_arrow`` does) gives the same values as one big
    batch. Inferred columns carry no ``zeek_type`` metadata, because concatenation
    keeps the first batch's; ``zeek.zeek_type_of`` reads their type from the Arrow type.

    A value that no type can share with the earlier ones (a string where numbers
    were, a number where strings were, text after ISO times) is a bad row, whatever
    the batch size: ``ZeekParseError`` naming file, line, field, value and the type
    the column had and since which line (``errors="raise"``), or the row dropped
    (``"skip"``). We do not widen such a column to string, because ``iter_batches``
    has already handed out the earlier batches with the narrower type, and the
    readers must agree. Rows are judged one by one in file order and a dropped row
    leaves no trace (no type, no column), so that a batch of one row and a batch of
    65,536 rows decide alike.
    """

    def __init__(self, path: str, log_type: str | None, fallback: str | None = None) -> None:
        self.path = path
        self.log_type = log_type
        self.fallback = fallback  # from the file name, used when rows carry no _path
        self.types: dict[str, str] = {}  # the columns returned so far, with their current type
        self.inferred: set[str] = set()
        self.since: dict[str, int] = {}  # line where an inferred column took its current type
        self.largest: dict[str, int] = {}  # largest integer magnitude seen, to keep doubles exact

    def _fixed_type(self, name: str, known: dict[str, str]) -> str | None:
        """The type of a column that is not inferred (built-in schema, ``ts``), else None."""
        if name in self.types:
            return None if name in self.inferred else self.types[name]
        return known.get(name) or ("time" if name in _TIME_FIELDS else None)

    def _fold(self, batch: JsonBatch, names: list[str], bad: dict[int, tuple[str, Any, str, str]]) -> None:
        """Widen the inferred columns row by row; a row with a conflict is bad and changes nothing."""
        for i, row in enumerate(batch.rows):
            if i in bad:
                continue
            changes: list[tuple[str, str, int]] = []
            for name in names:
                value = row.get(name)
                if value is None:
                    continue
                ztype = self.types.get(name, UNDECIDED)
                try:
                    new = widen(ztype, value)
                    largest = max(self.largest.get(name, 0), _largest_int(value))
                    if largest > _EXACT and split_type(new)[1] == "double":
                        raise _Conflict(f"a number that makes the column double, where the integers beyond "
                                        f"2**53 it also holds would be rounded; the column was {ztype}")
                    convert_json(value, new)
                except _Conflict as exc:
                    since = f", since line {self.since[name]}" if name in self.since else ""
                    bad[i] = (name, value, f"{exc}{since}", ztype)
                    break
                except (ValueError, TypeError, OverflowError) as exc:
                    bad[i] = (name, value, f"{exc}; expected {new}", new)
                    break
                changes.append((name, new, largest))
            else:
                for name, new, largest in changes:
                    if new != self.types.get(name, UNDECIDED):
                        self.since[name] = batch.lines[i]
                    self.types[name] = new
                    self.largest[name] = largest

    def table(self, batch: JsonBatch, errors: str) -> tuple[pa.Table, list[tuple[int, str]]]:
        """The batch as an Arrow table, and the rows dropped (``errors="skip"``) as (line, reason).

        An undecoded batch goes the vectorised way (:meth:`_fast_table`) unless that refuses it;
        then it is decoded and converted line by line (:meth:`_slow_table`), which gives the same
        table, or names the bad line.
        """
        if batch.raw is not None:
            if FAST:
                try:
                    return self._fast_table(batch), []
                except fast.Refused as exc:
                    log.debug("%s: line-by-line path for lines %s-%s: %s", self.path, batch.raw_lines[0],
                              batch.raw_lines[-1], exc)
            batch.decode()
        return self._slow_table(batch, errors)

    def _fast_table(self, batch: JsonBatch) -> pa.Table:
        """The vectorised path: equal to :meth:`_slow_table` of the decoded batch, or ``Refused``.

        Nothing of the typer's state changes unless the whole batch converts.
        """
        assert batch.raw is not None
        parsed = fast.parse(batch.raw, len(batch.raw_lines), batch.braces)
        log_type = self.log_type
        if log_type is None and parsed.num_rows:
            value = None
            if "_path" in parsed.column_names:
                col = parsed["_path"]
                if pa.types.is_timestamp(col.type):
                    raise fast.Refused("_path read as a timestamp")
                if pa.types.is_string(col.type):
                    value = col[0].as_py()
            log_type = value if isinstance(value, str) and value else self.fallback
        known = builtin_schema().get(log_type or "", {})
        names: dict[str, None] = dict.fromkeys(self.types)
        names.update(dict.fromkeys(parsed.column_names))
        fixed = {name: t for name in names if (t := self._fixed_type(name, known)) is not None}
        n = parsed.num_rows
        columns: dict[str, pa.Array] = {}
        for name, ztype in fixed.items():
            col = parsed[name] if name in parsed.column_names else pa.chunked_array([pa.nulls(n)])
            columns[name] = fast.fixed(col, ztype)
        outcomes: dict[str, fast.Inferred] = {}
        cache: dict[int, Any] = {}

        def lookup_in(name: str) -> fast.Lookup:
            def lookup(i: int) -> Any:
                if i not in cache:
                    cache[i] = fast.decode_line(batch.line_text(i))
                row = cache[i]
                return row.get(name) if isinstance(row, dict) else None
            return lookup

        for name in names:
            if name in fixed:
                continue
            col = parsed[name] if name in parsed.column_names else pa.chunked_array([pa.nulls(n)])
            prev = self.types.get(name, UNDECIDED)
            got = outcomes[name] = fast.inferred(col, prev, self.largest.get(name, 0), lookup_in(name))
            columns[name] = got.array
        # all converted: commit, in the order the line-by-line path would (see _fold)
        self.log_type = log_type
        new_inferred = sorted((got.first, i, name) for i, (name, got) in enumerate(outcomes.items())
                              if got.first >= 0 and name not in self.types)
        for _, _, name in new_inferred:
            self.types[name] = outcomes[name].ztype
        for name, got in outcomes.items():
            if got.first >= 0:
                if got.since is not None:
                    self.since[name] = int(batch.raw_lines[got.since])
                self.types[name] = got.ztype
                self.largest[name] = got.largest
        arrays, fields = [], []
        for name in names:
            if name in fixed:
                ztype = self.types[name] = fixed[name]
            else:
                ztype = self.types.setdefault(name, UNDECIDED)
                self.inferred.add(name)
            arrays.append(columns[name])
            metadata = None if name in self.inferred else {"zeek_type": ztype}
            fields.append(pa.field(name, arrays[-1].type, metadata=metadata))
        return pa.table(arrays, schema=pa.schema(fields))

    def _slow_table(self, batch: JsonBatch, errors: str) -> tuple[pa.Table, list[tuple[int, str]]]:
        if self.log_type is None and batch.rows:
            path_value = batch.rows[0].get("_path")
            self.log_type = path_value if isinstance(path_value, str) and path_value else self.fallback
        known = builtin_schema().get(self.log_type or "", {})
        names: dict[str, None] = dict.fromkeys(self.types)
        for row in batch.rows:
            names.update(dict.fromkeys(row))
        fixed = {name: t for name in names if (t := self._fixed_type(name, known)) is not None}
        bad: dict[int, tuple[str, Any, str, str]] = {}  # row -> (field, value, reason, expected type)
        converted: dict[str, list[Any]] = {}
        for name, ztype in fixed.items():
            values = converted[name] = []
            for i, row in enumerate(batch.rows):
                try:
                    values.append(convert_json(row.get(name), ztype))
                except (ValueError, TypeError, OverflowError) as exc:
                    values.append(None)
                    bad.setdefault(i, (name, row.get(name), f"{exc}; expected {ztype}", ztype))
        inferred = [name for name in names if name not in fixed]
        before = set(self.types)
        self._fold(batch, inferred, bad)
        if bad and errors == "raise":
            first = min(bad)
            name, value, reason, expected = bad[first]
            raise ZeekParseError(self.path, f"value does not fit the column type ({reason})",
                                 line=batch.lines[first], field=name, value=json.dumps(value)[:200],
                                 expected=expected)
        keep = [i for i in range(len(batch.rows)) if i not in bad]
        in_kept = {name for i in keep for name in batch.rows[i]}
        present = [name for name in names if name in before or name in in_kept]  # not if only dropped rows had it
        arrays = []
        fields = []
        for name in present:
            if name in fixed:
                ztype = self.types[name] = fixed[name]
                values = [converted[name][i] for i in keep] if bad else converted[name]
            else:
                ztype = self.types.setdefault(name, UNDECIDED)
                self.inferred.add(name)
                values = [convert_json(batch.rows[i].get(name), ztype) for i in keep]
            try:
                arrays.append(_arrow_column(values, ztype))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
                raise ZeekParseError(self.path, f"column does not convert ({exc})", field=name,
                                     expected=ztype) from None
            metadata = None if name in self.inferred else {"zeek_type": ztype}
            fields.append(pa.field(name, arrays[-1].type, metadata=metadata))
        dropped = list(batch.dropped) + [(batch.lines[i], f"{bad[i][0]}: {bad[i][2]}") for i in sorted(bad)]
        return pa.table(arrays, schema=pa.schema(fields)), dropped
