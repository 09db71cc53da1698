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

Lines are decoded one at a time with :mod:`json` so that a broken line can be named
by its line number; JSON logs are the smaller ones, so this costs little.
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

import pyarrow as pa

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


@dataclass
class JsonBatch:
    """Decoded rows of one chunk of lines, with their line numbers."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    dropped: list[tuple[int, str]] = field(default_factory=list)


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
    """Decode JSON objects line by line, in batches of ``batch_rows`` rows."""
    batch = JsonBatch()
    line_no = 0
    rest = b""
    for chunk in _with_eof(chunks):
        data = rest + chunk if chunk is not None else rest
        if chunk is not None:
            cut = data.rfind(b"\n") + 1
            data, rest = data[:cut], data[cut:]
        else:
            rest = b""
        for raw in data.splitlines():
            line_no += 1
            text = raw.strip()
            if not text or text.startswith(b"#"):
                continue
            try:
                obj = _loads(text)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                shown = text[:200].decode("utf-8", "backslashreplace")
                if errors == "raise":
                    raise ZeekParseError(path, f"line is not a JSON object ({exc})", line=line_no, value=shown,
                                         expected="one JSON object per line") from None
                batch.dropped.append((line_no, "not a JSON object"))
                continue
            batch.rows.append(obj)
            batch.lines.append(line_no)
            if len(batch.rows) >= batch_rows:
                yield batch
                batch = JsonBatch()
    if batch.rows or batch.dropped:
        yield batch


def _with_eof(chunks: Iterable[tuple[bytes | bytearray, int]]) -> Iterator[bytes | None]:
    for buf, n in chunks:
        yield bytes(buf[:n])
    yield None


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
