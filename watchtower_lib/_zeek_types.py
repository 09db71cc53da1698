"""Zeek type names -> Arrow types, and the conversions both readers share.

Why a module of its own: the TSV reader (``_zeek_tsv``) and the JSON reader
(``_zeek_json``) must give one column the same Arrow type and the same values
whatever the input format, so the type table and the value rules live here once.

Two paths convert values:

* the *fast path* works on whole Arrow columns (``finish_column``): pyarrow.csv
  has already parsed numbers, and only columns that need it get escape decoding,
  empty-marker handling or set splitting (checked with vectorised ``pyarrow.compute``);
* the *slow path* (``parse_text`` / ``convert_json``) converts one value at a
  time in Python. It runs only for a column whose fast conversion failed, so that
  a bad value can be named (row, field, value) and the row dropped or reported.

Times and intervals are rounded to whole microseconds: Zeek prints them with six
decimals, and float64 holds any such epoch value up to the year 2255 closely
enough that rounding recovers the printed digits exactly.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

TIME = pa.timestamp("ns", tz="UTC")
INTERVAL = pa.duration("ns")
#: large_string because pandas' pyarrow-backed string dtype stores large_string:
#: producing it directly saves a copy of every text column.
STRING = pa.large_string()

#: Zeek scalar type -> Arrow type of the column we return.
SCALARS: dict[str, pa.DataType] = {
    "time": TIME,
    "interval": INTERVAL,
    "count": pa.uint64(),
    "counter": pa.uint64(),  # Bro 1.x/2.0 name for count
    "int": pa.int64(),
    "port": pa.uint16(),
    "double": pa.float64(),
    "bool": pa.bool_(),
    "addr": STRING,
    "subnet": STRING,
    "string": STRING,
    "enum": STRING,
}
#: Types pyarrow.csv parses for us in the fast path (times first as float64).
_CSV_TYPES: dict[str, pa.DataType] = {
    "time": pa.float64(),
    "interval": pa.float64(),
    "count": pa.uint64(),
    "counter": pa.uint64(),
    "int": pa.int64(),
    "port": pa.uint16(),
    "double": pa.float64(),
    "bool": pa.bool_(),
}
_CONTAINER = re.compile(r"^(set|vector|table)\[(.+)\]$")
_INT = re.compile(rb"^[+-]?[0-9]+$")
_FLOAT = re.compile(rb"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$|^[+-]?(?:inf|nan)$", re.I)
_ESCAPE = re.compile(rb"\\(\\|x[0-9a-fA-F]{2})")
_HEX_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")
_ISO = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)?$"
)
_NS_LIMIT = 2**63 - 1


@dataclass(frozen=True)
class Markers:
    """The four per-block markers of a Zeek TSV header (bytes, as in the file)."""

    separator: bytes = b"\t"
    set_separator: bytes = b","
    empty: bytes = b"(empty)"
    unset: bytes = b"-"


def split_type(zeek_type: str) -> tuple[str | None, str]:
    """``"set[string]"`` -> ``("set", "string")``; ``"count"`` -> ``(None, "count")``.

    Bro 2.x's ``table[T]`` is a set; it becomes ``"set"`` so both eras agree.
    """
    m = _CONTAINER.match(zeek_type.strip())
    if not m:
        return None, zeek_type.strip()
    kind = "set" if m.group(1) == "table" else m.group(1)
    return kind, m.group(2).strip()


def normalise_type(zeek_type: str) -> str:
    """Canonical spelling used to compare types across header blocks and schemas."""
    kind, inner = split_type(zeek_type)
    return inner if kind is None else f"{kind}[{inner}]"


def arrow_type(zeek_type: str) -> pa.DataType:
    """The Arrow type of a column of ``zeek_type``; unknown types (pattern, func...) are strings."""
    kind, inner = split_type(zeek_type)
    scalar = SCALARS.get(inner, STRING)
    return scalar if kind is None else pa.list_(scalar)


def csv_type(zeek_type: str) -> pa.DataType:
    """What pyarrow.csv should parse the raw column as (containers and strings stay text)."""
    kind, inner = split_type(zeek_type)
    return STRING if kind is not None else _CSV_TYPES.get(inner, STRING)


# ---------------------------------------------------------------- value rules
def unescape(raw: bytes) -> str:
    r"""Decode Zeek's ``\xNN`` and ``\\`` escapes; invalid UTF-8 comes back as ``\xNN`` text."""
    if b"\\" in raw:
        raw = _ESCAPE.sub(lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1)[1:], 16)]), raw)
    return raw.decode("utf-8", "backslashreplace")


def unescape_json(text: str) -> str:
    r"""Decode the ``\xNN`` bytes in a string from Zeek's JSON writer (invalid UTF-8 -> ``\xNN`` text)."""
    raw = _HEX_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8", "surrogatepass"))
    return raw.decode("utf-8", "backslashreplace")


def seconds_to_ns(value: float) -> int:
    """Epoch or interval seconds -> integer nanoseconds, rounded to the microsecond."""
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    # half to even, as printf rounds the exact ties Zeek's TSV writer meets (JSON keeps all digits)
    ns = round(value * 1e6) * 1000
    if not -_NS_LIMIT <= ns <= _NS_LIMIT:
        raise ValueError("outside the nanosecond range (years 1678-2262)")
    return ns


def iso_to_ns(text: str) -> int:
    """ISO-8601 text (``2018-03-24T17:15:20.123456Z``) -> integer nanoseconds since the epoch."""
    if not _ISO.match(text):
        raise ValueError("not an ISO-8601 timestamp")
    frac = ""
    m = re.search(r"\.(\d+)", text)
    if m and len(m.group(1)) > 6:  # datetime keeps microseconds only; keep the nanoseconds
        frac = m.group(1)[6:9].ljust(3, "0")
        text = text[: m.start(1) + 6] + text[m.end(1):]
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    ns = (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000 + int(frac or 0)
    if not -_NS_LIMIT <= ns <= _NS_LIMIT:
        raise ValueError("outside the nanosecond range (years 1678-2262)")
    return ns


def looks_iso(text: str) -> bool:
    """True when ``text`` is an ISO-8601 timestamp (used to infer ``time`` in JSON)."""
    return bool(_ISO.match(text))


def _in_range(value: int, inner: str) -> int:
    lo, hi = {"int": (-(2**63), 2**63 - 1), "port": (0, 65535)}.get(inner, (0, 2**64 - 1))
    if not lo <= value <= hi:
        raise ValueError(f"out of range for {inner}")
    return value


def _scalar_from_text(raw: bytes, inner: str, markers: Markers) -> Any:
    if inner in ("count", "counter", "int", "port"):
        if not _INT.match(raw):
            raise ValueError(f"not an integer ({inner})")
        return _in_range(int(raw), inner)
    if inner in ("double", "time", "interval"):
        if not _FLOAT.match(raw):
            raise ValueError(f"not a number ({inner})")
        number = float(raw)
        return number if inner == "double" else seconds_to_ns(number)
    if inner == "bool":
        if raw not in (b"T", b"F"):
            raise ValueError("not a bool (T or F)")
        return raw == b"T"
    return "" if raw == markers.empty else unescape(raw)


def parse_text(raw: bytes | None, zeek_type: str, markers: Markers) -> Any:
    """One raw TSV value -> Python value of ``zeek_type`` (raises ValueError when it does not parse).

    Escapes are decoded after splitting a container, so ``\\x2c`` stays inside its element.
    """
    if raw is None or raw == markers.unset:
        return None
    kind, inner = split_type(zeek_type)
    if kind is None:
        return _scalar_from_text(raw, inner, markers)
    if raw == markers.empty:
        return []
    return [
        None if part == markers.unset else _scalar_from_text(part, inner, markers)
        for part in raw.split(markers.set_separator)
    ]


def _scalar_from_json(value: Any, inner: str) -> Any:
    if value is None:
        return None
    if inner in ("time", "interval"):
        if isinstance(value, str):
            return iso_to_ns(value) if inner == "time" else seconds_to_ns(float(value))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"not a {inner}")
        return seconds_to_ns(float(value))
    if inner in ("count", "counter", "int", "port"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"not an integer ({inner})")
        return _in_range(value, inner)
    if inner == "double":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError("not a number")
        return float(value)
    if inner == "bool":
        if not isinstance(value, bool):
            raise ValueError("not a bool")
        return value
    if not isinstance(value, str):
        return _json_text(value)
    # Zeek's JSON writer spells bytes it cannot print as "\\xNN" text (a literal
    # backslash stays a single backslash, unlike TSV's "\\\\")
    return unescape_json(value) if "\\x" in value else value


def _json_text(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def convert_json(value: Any, zeek_type: str) -> Any:
    """One decoded JSON value -> Python value of ``zeek_type`` (ValueError when it does not fit)."""
    kind, inner = split_type(zeek_type)
    if kind is None or value is None:
        return _scalar_from_json(value, inner)
    if not isinstance(value, list):
        raise ValueError(f"not a list ({zeek_type})")
    return [_scalar_from_json(v, inner) for v in value]


def to_arrow(values: list[Any], zeek_type: str) -> pa.Array:
    """Python values from ``parse_text``/``convert_json`` -> an Arrow array of the column type."""
    target = arrow_type(zeek_type)
    inner_type = target.value_type if pa.types.is_list(target) else target
    if inner_type in (TIME, INTERVAL):  # values are integer nanoseconds
        raw = pa.array(values, pa.list_(pa.int64()) if pa.types.is_list(target) else pa.int64())
        return raw.cast(target)
    try:
        return pa.array(values, target)
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON) is not text Arrow can hold
        return pa.array([_escape_surrogates(v) for v in values], target)


def _escape_surrogates(value: Any) -> Any:
    r"""Lone UTF-16 surrogates back to the ``\uXXXX`` text the JSON file had, as bytes that are not
    UTF-8 come back as ``\xNN`` text: the value is kept, visibly, and never dropped or mangled."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [_escape_surrogates(v) for v in value]
    return value


# ------------------------------------------------------------ the fast path
def _seconds_column(col: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    """Float seconds -> timestamp/duration ns. floor(x+0.5) is 20x faster than pc.round;
    the safe cast to int64 rejects nan, inf and values beyond the nanosecond range."""
    micros = pc.floor(pc.add(pc.multiply(col, 1e6), 0.5))
    ns = pc.multiply_checked(pc.cast(micros, pa.int64()), 1000)
    return pc.cast(ns, target)


def _decode_strings(col: pa.ChunkedArray | pa.Array, markers: Markers, *, is_element: bool,
                    escapes: bool = True, empties: bool = True) -> Any:
    """Empty marker -> "" (not for set elements) and escapes decoded, only where present.

    ``escapes``/``empties`` False say the raw bytes hold no backslash / no empty
    marker at all, so the column needs no look (the common case, and free).
    """
    if empties and not is_element:
        is_empty = pc.equal(col, markers.empty.decode("utf-8", "replace"))
        if pc.any(is_empty).as_py():
            col = pc.if_else(is_empty, "", col)
    if not escapes:
        return col
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    has_escape = pc.fill_null(pc.match_substring(col, "\\"), False)
    if not pc.any(has_escape).as_py():
        return col
    escaped = pc.filter(col, has_escape).to_pylist()  # only these go through Python
    decoded = pa.array([unescape(v.encode("utf-8")) for v in escaped], STRING)
    return pc.replace_with_mask(col, has_escape, decoded)


def _container_column(col: pa.ChunkedArray, inner: str, markers: Markers, escapes: bool = True) -> pa.Array:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    empty = markers.empty.decode("utf-8", "replace")
    sep = markers.set_separator.decode("utf-8", "replace")
    is_empty = pc.fill_null(pc.equal(col, empty), False)
    lists = pc.split_pattern(pc.if_else(is_empty, "", col), sep)
    # "" split gives [""]: the empty marker means an empty container.
    lists = pc.if_else(is_empty, pa.scalar([], pa.list_(STRING)), lists)
    flat = lists.flatten()
    unset = markers.unset.decode("utf-8", "replace")
    flat = pc.if_else(pc.equal(flat, unset), pa.scalar(None, STRING), flat)
    if SCALARS.get(inner, STRING) == STRING:
        flat = _decode_strings(flat, markers, is_element=True, escapes=escapes)
        values = pa.array(flat, STRING) if not isinstance(flat, pa.Array) else flat
    else:
        values = _typed_elements(flat, inner)
    return pa.ListArray.from_arrays(lists.offsets, values, mask=lists.is_null())


def _typed_elements(flat: pa.Array, inner: str) -> pa.Array:
    target = SCALARS[inner]
    parsed = pc.cast(flat, _CSV_TYPES[inner]) if inner != "bool" else _bool_from_text(flat)
    if inner in ("time", "interval"):
        return _seconds_column(pa.chunked_array([parsed]), target).combine_chunks()
    return parsed


def _bool_from_text(col: Any) -> Any:
    ok = pc.is_in(col, pa.array(["T", "F"]))
    if not pc.all(pc.or_(ok, pc.is_null(col))).as_py():
        raise pa.ArrowInvalid("bool value is not T or F")
    return pc.equal(col, "T")


def finish_column(col: pa.ChunkedArray, zeek_type: str, markers: Markers, *,
                  escapes: bool = True, empties: bool = True) -> Any:
    """A column as pyarrow.csv parsed it (see ``csv_type``) -> its final Arrow type.

    Raises ``pyarrow.ArrowInvalid`` when a value does not convert; the caller then
    re-runs the column through the slow path to find and name the bad row.
    """
    kind, inner = split_type(zeek_type)
    if kind is not None:
        if not empties and not pc.any(pc.is_valid(col)).as_py():
            return pa.nulls(len(col), arrow_type(zeek_type))
        return _container_column(col, inner, markers, escapes)
    target = SCALARS.get(inner, STRING)
    if inner in ("time", "interval"):
        return _seconds_column(col, target)
    if target == STRING:
        return _decode_strings(col, markers, is_element=False, escapes=escapes, empties=empties)
    return col
