"""The fast path of the JSON reader: one batch of lines parsed by pyarrow.json, columns converted
with pyarrow.compute, with the line-by-line reader (``_zeek_json``) as the oracle it must match.

Why: decoding each line with :mod:`json` and converting every cell in Python runs at about
20,000 rows/s; a week of JSON conn logs would take minutes. As in the TSV reader, the batch is
parsed in one vectorised pass and each column is converted as a whole. Whatever this module
cannot vouch for, it *refuses* (:class:`Refused`), and the caller runs the batch through the
line-by-line path, which names the bad line, field and value exactly as before:

* the bytes: a line that does not start with ``{``, more objects than lines, invalid UTF-8,
  a lone surrogate, a duplicate key, anything pyarrow does not parse;
* the values: a value that does not fit its column type, a type pyarrow inferred that loses
  information (``timestamp[s]`` from text is parsed again as text, structs are refused), numbers
  where pyarrow and :mod:`json` may disagree (non-finite doubles, which pyarrow also accepts as
  ``Inf``/``-NaN``; ``-0.0``, which ``json`` reads as the integer 0 when written ``-0``;
  integers of 2**53 and more in an inferred double column);
* the bookkeeping: an inferred column that becomes double must know the line of its first
  float (the "since line N" of a later conflict), which is looked up with :mod:`json` on a few
  lines; more than :data:`MAX_LOOKUPS` lines to look at is refused.

Column order is the order in which keys first appear in the batch, as the line-by-line reader
gives it. pyarrow gives that order within one parse block, but not when it merges blocks parsed
by several threads, so each piece of the batch is one block, pieces are parsed in parallel by
our own threads and their columns are merged in piece order.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from ._zeek_types import INTERVAL, SCALARS, STRING, TIME, arrow_type, iso_to_ns, looks_iso, split_type, unescape_json

UNDECIDED = "null"  # same as _zeek_json.UNDECIDED
_EXACT = 2**53
_NS_MICROS = (2**63 - 1) // 1000  # the largest whole number of microseconds seconds_to_ns accepts
#: Lines looked up with ``json`` to find where an inferred column's first float is, before refusing.
MAX_LOOKUPS = 64
#: Batches smaller than this are parsed as one piece (threads would cost more than they save).
PIECE_BYTES = 4 << 20
#: The most pieces a batch is cut into (0: one per CPU, at most 4).
MAX_PIECES = 0

# ISO-8601 as _zeek_types._ISO sees it: Python's ``$`` also matches before a final newline.
_ISO_RE2 = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)?\n?$"
# The form Zeek writes (JSON::TS_ISO8601), which Arrow's cast parses to the same nanoseconds.
_ISO_ZEEK = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$"

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0


class Refused(Exception):
    """The fast path cannot vouch for this batch: the caller falls back to the line-by-line path."""


def _threads() -> int:
    return max(1, min(pa.cpu_count(), 4))


def _executor() -> ThreadPoolExecutor:
    """The parse threads; a forked child (multiprocessing) makes its own, its parent's are not there."""
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        _pool = ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="watchtower-json")
        _pool_pid = os.getpid()
    return _pool


# ------------------------------------------------------------------ parsing
def _pieces(raw: bytes) -> list[bytes]:
    """The batch cut at line ends into pieces of at least ``PIECE_BYTES``, one per thread."""
    k = min(MAX_PIECES or _threads(), len(raw) // PIECE_BYTES)
    if k <= 1:
        return [raw]
    out, start = [], 0
    for j in range(1, k):
        cut = raw.find(b"\n", len(raw) * j // k) + 1
        if cut <= start or cut >= len(raw):
            continue
        out.append(raw[start:cut])
        start = cut
    out.append(raw[start:])
    return out


def _read(piece: bytes, schema: pa.Schema | None) -> pa.Table:
    opts = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer", newlines_in_values=False)
    # one block per piece: pyarrow keeps the order in which keys first appear only within a block
    read = pj.ReadOptions(use_threads=False, block_size=len(piece) + 1)
    return pj.read_json(io.BytesIO(piece), read_options=read, parse_options=opts)


def parse(raw: bytes, n_rows: int, braces: bool = False) -> pa.Table:
    """The batch's lines (each a non-blank, non-comment line ending in a line feed) as one table
    with the columns in the order their keys first appear. Raises :class:`Refused`.

    ``braces`` says the caller has checked that every line starts with ``{``.
    """
    # every line must start with "{": pyarrow crashes on a top-level null in the first line, and a
    # line of anything else is a bad line that only the line-by-line path can name
    if not braces and (not raw.startswith(b"{") or raw.count(b"\n{") != n_rows - 1):
        raise Refused("a line does not start with '{'")
    if not raw.isascii():  # pyarrow does not check UTF-8 (json decodes such bytes as \\xNN text)
        try:
            pa.array([raw], pa.large_binary()).cast(pa.large_string())
        except pa.ArrowInvalid:
            raise Refused("bytes that are not UTF-8") from None
    pieces = _pieces(raw)
    tables = _read_all(pieces, None)
    stamped = {f.name for t in tables for f in t.schema if _has_timestamp(f.type)}
    if stamped:  # pyarrow read text as timestamp[s]: read those columns again as text
        types = {f.name: _as_text(f.type) for t in tables for f in t.schema if f.name in stamped}
        again = _read_all(pieces, pa.schema(list(types.items())))
        tables = [second.select(first.column_names) for first, second in zip(tables, again)]
    names: dict[str, None] = {}
    for t in tables:
        names.update(dict.fromkeys(t.column_names))
    try:
        if len(tables) == 1:
            table = tables[0]
        else:  # missing columns are null-filled, int64 and double meet as double (as in one block)
            table = pa.concat_tables(tables, promote_options="permissive").select(list(names))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise Refused(f"pieces do not concatenate ({exc})") from None
    if table.num_rows != n_rows:
        raise Refused("a line holds more than one JSON value")
    return table


def _read_all(pieces: list[bytes], schema: pa.Schema | None) -> list[pa.Table]:
    def one(piece: bytes) -> pa.Table:
        try:
            table = _repair(_read(piece, schema))
            table.validate()
            return table
        except Exception as exc:  # ArrowInvalid, UnicodeDecodeError, ...: the line-by-line path names it
            raise Refused(f"pyarrow does not parse the batch ({type(exc).__name__}: {exc})") from None

    if len(pieces) == 1:
        return [one(pieces[0])]
    return list(_executor().map(one, pieces))


def _repair(table: pa.Table) -> pa.Table:
    """pyarrow 26 builds a list<null> column with too short a child (``[null, null]`` gives one
    null): rebuild the child from the offsets. Other malformed arrays fail ``validate``."""
    for i, f in enumerate(table.schema):
        if pa.types.is_list(f.type) and pa.types.is_null(f.type.value_type):
            chunks = [pa.ListArray.from_arrays(c.offsets, pa.nulls(c.offsets[-1].as_py()), mask=c.is_null())
                      for c in table.column(i).chunks]
            table = table.set_column(i, f, pa.chunked_array(chunks, f.type))
    return table


def _as_text(t: pa.DataType) -> pa.DataType:
    return pa.list_(_as_text(t.value_type)) if pa.types.is_list(t) else pa.string()


def _has_timestamp(t: pa.DataType) -> bool:
    if pa.types.is_timestamp(t):
        return True
    if pa.types.is_list(t):
        return _has_timestamp(t.value_type)
    return False


# ------------------------------------------------------------------ helpers
def _one(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _first_valid(a: pa.Array) -> int:
    if a.null_count == len(a):
        return -1
    return int(pc.index(pc.is_valid(a), True).as_py())


def _any(mask: Any) -> bool:
    return bool(pc.any(mask).as_py())


def _floats(a: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values with nulls as 0.0, validity) of a float64 array."""
    valid = a.is_valid().to_numpy(zero_copy_only=False)
    return a.fill_null(0.0).to_numpy(zero_copy_only=False), valid


def _check_doubles(a: pa.Array) -> np.ndarray:
    """Doubles pyarrow and ``json`` are sure to agree on: finite and not -0.0; returns the values."""
    x, valid = _floats(a)
    if not np.isfinite(x).all():
        raise Refused("a non-finite double (pyarrow also reads Inf and -NaN, json does not)")
    if np.signbit(x[x == 0]).any():
        raise Refused("-0.0 (json reads the literal -0 as the integer 0)")
    return x


def _largest(a: pa.Array) -> int:
    """The largest integer magnitude in an int64 array."""
    if a.null_count == len(a):
        return 0
    mm = pc.min_max(a).as_py()
    return max(abs(int(mm["min"])), abs(int(mm["max"])))


# ------------------------------------------------------------------ conversions
def seconds(a: pa.Array, target: pa.DataType) -> pa.Array:
    """Epoch/interval seconds (int64 or double) -> ns, as ``seconds_to_ns`` does for each value:
    ``round(value * 1e6) * 1000`` (half to even), finite and within the nanosecond range."""
    if pa.types.is_int64(a.type):
        x = a.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)  # float(int): nearest
        valid = a.is_valid().to_numpy(zero_copy_only=False)
    elif pa.types.is_float64(a.type):
        x, valid = _floats(a)
    else:
        raise Refused(f"{a.type} is not seconds")
    with np.errstate(over="ignore", invalid="ignore"):
        micros = np.rint(x * 1e6)  # the same float product as Python's value * 1e6, rounded half to even
    if not np.isfinite(micros).all() or (np.abs(micros) > 9.3e15).any():
        raise Refused("seconds outside the nanosecond range")
    whole = micros.astype(np.int64)
    if (np.abs(whole) > _NS_MICROS).any():
        raise Refused("seconds outside the nanosecond range")
    return pa.array(whole * 1000, pa.int64(), mask=~valid).cast(target)


def iso_times(a: pa.Array) -> pa.Array:
    """ISO-8601 text -> timestamp[ns, UTC], exactly ``iso_to_ns`` of each value.

    The form Zeek writes goes through Arrow's cast (which rejects what ``datetime`` rejects: a
    30 February, hour 24, second 60; and more, near the ends of the range, which we then refuse);
    any other form is converted in Python, value by value.
    """
    a = _one(a)
    if pa.types.is_null(a.type):
        return pa.nulls(len(a), TIME)
    zeek_form = pc.fill_null(pc.match_substring_regex(a, _ISO_ZEEK), False)
    other = pc.and_(pc.invert(zeek_form), a.is_valid())
    try:
        out = pc.cast(pc.if_else(zeek_form, a, pa.scalar(None, a.type)), TIME)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise Refused(f"time does not cast ({exc})") from None
    if _any(other):
        try:
            ns = [iso_to_ns(v) for v in pc.filter(a, other).to_pylist()]
        except (ValueError, TypeError, OverflowError) as exc:
            raise Refused(f"not an ISO-8601 time ({exc})") from None
        out = pc.replace_with_mask(out, other, pa.array(ns, pa.int64()).cast(TIME))
    return out


def iso_mask(a: pa.Array) -> np.ndarray:
    """``looks_iso`` of each value (False for nulls). RE2's ``\\d`` is ASCII only, Python's is any
    Unicode digit, so text that is not ASCII is looked at in Python."""
    a = _one(a)
    mask = pc.fill_null(pc.match_substring_regex(a, _ISO_RE2), False)
    foreign = pc.fill_null(pc.invert(pc.string_is_ascii(a)), False)
    out = mask.to_numpy(zero_copy_only=False).copy()
    if _any(foreign):
        idx = np.flatnonzero(foreign.to_numpy(zero_copy_only=False))
        for i, v in zip(idx, pc.filter(a, foreign).to_pylist()):
            out[i] = looks_iso(v)
    return out


def text(a: pa.Array) -> pa.Array:
    r"""Strings as the line-by-line path returns them: Zeek's ``\\xNN`` decoded where present."""
    a = _one(a)
    if pa.types.is_null(a.type):
        return pa.nulls(len(a), STRING)
    a = a.cast(STRING)
    has = pc.fill_null(pc.match_substring(a, "\\x"), False)
    if not _any(has):
        return a
    decoded = pa.array([unescape_json(v) for v in pc.filter(a, has).to_pylist()], STRING)
    return pc.replace_with_mask(a, has, decoded)


_RANGES = {"int": (-(2**63), 2**63 - 1), "port": (0, 65535), "count": (0, 2**64 - 1), "counter": (0, 2**64 - 1)}


def scalar(a: pa.Array, inner: str) -> pa.Array:
    """A column (or list elements) of one fixed Zeek scalar type, as ``convert_json`` + ``to_arrow``."""
    a = _one(a)
    t = a.type
    target = SCALARS.get(inner, STRING)
    if pa.types.is_null(t):
        return pa.nulls(len(a), target)
    if inner in ("time", "interval"):
        if pa.types.is_int64(t) or pa.types.is_float64(t):
            return seconds(a, TIME if inner == "time" else INTERVAL)
        if inner == "time" and _is_text(t):
            return iso_times(a)
        raise Refused(f"{t} for {inner}")
    if inner in _RANGES:
        if not pa.types.is_int64(t):
            raise Refused(f"{t} for {inner}")
        lo, hi = _RANGES[inner]
        if a.null_count < len(a):
            mm = pc.min_max(a).as_py()
            if mm["min"] < lo or mm["max"] > hi:
                raise Refused(f"out of range for {inner}")
        return a.cast(target)
    if inner == "double":
        if pa.types.is_int64(t):
            return a.cast(pa.float64(), safe=False)  # float(int): round to nearest, as Python
        if pa.types.is_float64(t):
            _check_doubles(a)
            return a
        raise Refused(f"{t} for double")
    if inner == "bool":
        if pa.types.is_boolean(t):
            return a
        raise Refused(f"{t} for bool")
    if target == STRING and _is_text(t):
        return text(a)
    raise Refused(f"{t} for {inner}")


def _list_parts(a: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(offsets from 0, elements, null mask) of a list array."""
    a = _one(a)
    offsets = a.offsets
    start = offsets[0].as_py()
    values = a.values.slice(start, offsets[-1].as_py() - start)
    if start:
        offsets = pc.subtract(offsets, start)
    return offsets, values, a.is_null()


def fixed(col: pa.ChunkedArray, zeek_type: str) -> pa.Array:
    """A column of the built-in schema (or ``ts``) -> its Arrow type, values as the slow path gives."""
    kind, inner = split_type(zeek_type)
    a = _one(col)
    if kind is None:
        return scalar(a, inner)
    if pa.types.is_null(a.type):
        return pa.nulls(len(a), arrow_type(zeek_type))
    if not pa.types.is_list(a.type):
        raise Refused(f"{a.type} for {zeek_type}")
    offsets, values, mask = _list_parts(a)
    return pa.ListArray.from_arrays(offsets, scalar(values, inner), mask=mask)


# ------------------------------------------------------------------ inferred columns
Lookup = Callable[[int], Any]  # row -> the decoded value of this column in that row


def _since_double(x: np.ndarray, a: pa.Array, parents: np.ndarray | None, lookup: Lookup,
                  has_float: Callable[[Any], bool]) -> int:
    """The row where a column (or its list elements) became double: the first row with a float
    literal. A value with a fraction is one; an integral value may be ``2`` or ``2.0``, which only
    ``json`` tells apart, so the rows before the first fraction are looked up (a few at most)."""
    valid = a.is_valid().to_numpy(zero_copy_only=False)
    whole = valid & (x == np.floor(x))
    fraction = np.flatnonzero(valid & ~whole)
    stop = int(fraction[0]) if len(fraction) else len(x)
    candidates = np.flatnonzero(whole[:stop])
    rows = candidates if parents is None else np.unique(parents[candidates])
    stop_row = None
    if len(fraction):
        stop_row = int(fraction[0]) if parents is None else int(parents[stop])
        rows = rows[rows < stop_row]
    for i in rows[:MAX_LOOKUPS]:
        if has_float(lookup(int(i))):
            return int(i)
    if len(rows) > MAX_LOOKUPS:
        raise Refused("too many lines to look at for the first float of a column")
    if stop_row is None:
        raise Refused("a double column without a float literal")
    return stop_row


def _is_float(v: Any) -> bool:
    return isinstance(v, float)


def _list_has_float(v: Any) -> bool:
    return isinstance(v, list) and any(isinstance(e, float) for e in v)


class Inferred:
    """The outcome for one inferred column in one batch."""

    def __init__(self, array: pa.Array, ztype: str, since: int | None, largest: int, first: int) -> None:
        self.array = array
        self.ztype = ztype
        self.since = since  # row where the type took its final value in this batch, if it changed
        self.largest = largest
        self.first = first  # first row with a non-null value (-1: none)


def _widen_elements(a: pa.Array, prev: str, largest: int, parents: np.ndarray | None,
                    lookup: Lookup, has_float: Callable[[Any], bool]) -> tuple[pa.Array, str, int | None, int]:
    """Scalars (a column, or the elements of a list column) under the widening rules of
    ``_zeek_json.widen``: (converted values, new scalar type, row of the change or None, largest)."""
    t = a.type
    n = len(a)

    def row(i: int) -> int:
        return int(parents[i]) if parents is not None else i

    if pa.types.is_null(t) or a.null_count == n:
        ztype = prev
        return _nulls_of(n, ztype), ztype, None, largest
    first = _first_valid(a)
    if pa.types.is_boolean(t):
        if prev not in (UNDECIDED, "bool"):
            raise Refused(f"a bool where the column had {prev}")
        return a, "bool", (row(first) if prev == UNDECIDED else None), largest
    if pa.types.is_int64(t):
        largest = max(largest, _largest(a))
        if prev in (UNDECIDED, "int"):
            return a, "int", (row(first) if prev == UNDECIDED else None), largest
        if prev == "double":
            if largest > _EXACT:
                raise Refused("integers beyond 2**53 in a double column")
            return a.cast(pa.float64(), safe=False), "double", None, largest
        raise Refused(f"an integer where the column had {prev}")
    if pa.types.is_float64(t):
        x = _check_doubles(a)
        if (np.abs(x) >= _EXACT).any() or largest > _EXACT:
            raise Refused("a double column with integers beyond 2**53")
        if prev == "double":
            return a, "double", None, largest
        if prev not in (UNDECIDED, "int"):
            raise Refused(f"a number where the column had {prev}")
        return a, "double", _since_double(x, a, parents, lookup, has_float), largest
    if _is_text(t):
        iso = iso_mask(a)
        valid = a.is_valid().to_numpy(zero_copy_only=False)
        if prev == UNDECIDED:
            ztype = "time" if iso[first] else "string"
            since = row(first)
        elif prev in ("string", "time"):
            ztype, since = prev, None
        else:
            raise Refused(f"a string where the column had {prev}")
        if ztype == "time":
            if not iso[valid].all():
                raise Refused("text after ISO-8601 times")
            return iso_times(a), "time", since, largest
        return text(a), "string", since, largest
    raise Refused(f"{t} is not a type the JSON reader infers")


def _nulls_of(n: int, ztype: str) -> pa.Array:
    if ztype == UNDECIDED:
        return pa.nulls(n)
    if ztype == f"vector[{UNDECIDED}]":
        return pa.nulls(n, pa.list_(pa.null()))
    return pa.nulls(n, arrow_type(ztype))


def inferred(col: pa.ChunkedArray, prev: str, largest: int, lookup: Lookup) -> Inferred:
    """An inferred column: its type after this batch (``_zeek_json.widen`` over the values in
    order), where that type was reached, and the values in that type."""
    a = _one(col)
    first = _first_valid(a)
    if pa.types.is_struct(a.type) or pa.types.is_map(a.type):
        raise Refused("an object value (kept as its JSON text by the line-by-line path)")
    if not pa.types.is_list(a.type):
        if prev.startswith("vector[") and first >= 0:
            raise Refused("a single value where the column had a list")
        values, ztype, since, largest = _widen_elements(a, prev, largest, None, lookup, _is_float)
        return Inferred(values, ztype, since, largest, first)
    if prev != UNDECIDED and not prev.startswith("vector["):
        raise Refused(f"a list where the column had {prev}")
    inner_prev = UNDECIDED if prev == UNDECIDED else split_type(prev)[1]
    offsets, values, mask = _list_parts(a)
    if pa.types.is_list(values.type) or pa.types.is_struct(values.type):
        raise Refused("a list inside a list (kept as JSON text by the line-by-line path)")
    parents = pc.list_parent_indices(a).to_numpy(zero_copy_only=False) if len(values) else np.zeros(0, np.int64)
    converted, inner, since, largest = _widen_elements(values, inner_prev, largest, parents, lookup,
                                                       _list_has_float)
    ztype = f"vector[{inner}]"
    if prev == UNDECIDED and first >= 0:
        since = since if since is not None else first
    out = pa.ListArray.from_arrays(offsets, converted, mask=mask)
    if ztype == prev and since is not None:
        since = None
    return Inferred(out, ztype, since, largest, first)


def decode_line(line: bytes) -> Any:
    """One line as ``json`` decodes it (for the float look-ups)."""
    try:
        return json.loads(line)
    except UnicodeDecodeError:
        return json.loads(line.decode("utf-8", "backslashreplace"))


