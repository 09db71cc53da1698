"""Zeek JSON lines -> Arrow, with the same column types as the TSV reader.

Why: JSON carries no types, yet downstream code must see one schema whatever the
format. Standard logs (identified by ``_path``, else the file name) take their
types from ``schemas/zeek_types.json``, which ``scripts/gen_zeek_schema.py``
derives from real TSV headers. Other fields are inferred from the values: bools,
integers, numbers, lists, and strings that are all ISO-8601 timestamps become
``time``. ``ts`` and ``_write_ts`` are always ``time`` (epoch number or ISO text).

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

from ._zeek_types import arrow_type, convert_json, looks_iso, to_arrow
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


def _infer(name: str, values: list[Any]) -> str:
    """Zeek type for a column that the built-in schema does not know."""
    present = [v for v in values if v is not None]
    if name in _TIME_FIELDS and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in present):
        return "time"
    if not present:
        return "string"
    if all(isinstance(v, bool) for v in present):
        return "bool"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int" if min(present) < 0 or max(present) < 2**63 else "count"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "double"
    if all(isinstance(v, str) for v in present):
        return "time" if all(looks_iso(v) for v in present) else "string"
    if all(isinstance(v, list) for v in present):
        inner = _infer("", [x for v in present for x in v])
        return f"vector[{inner}]"
    return "string"


class JsonTyper:
    """Turns batches of decoded rows into Arrow tables with stable column types.

    The first batch fixes a column's type (built-in schema first, else inferred);
    later batches are converted to it, so ``iter_batches`` never changes a type.
    """

    def __init__(self, path: str, log_type: str | None, fallback: str | None = None) -> None:
        self.path = path
        self.log_type = log_type
        self.fallback = fallback  # from the file name, used when rows carry no _path
        self.types: dict[str, str] = {}

    def table(self, batch: JsonBatch, errors: str) -> tuple[pa.Table, list[tuple[int, str]]]:
        if self.log_type is None and batch.rows:
            path_value = batch.rows[0].get("_path")
            self.log_type = path_value if isinstance(path_value, str) and path_value else self.fallback
        known = builtin_schema().get(self.log_type or "", {})
        names: dict[str, None] = dict.fromkeys(self.types)
        for row in batch.rows:
            names.update(dict.fromkeys(row))
        columns: dict[str, list[Any]] = {}
        bad: dict[int, tuple[str, Any, str]] = {}
        for name in names:
            values = [row.get(name) for row in batch.rows]
            ztype = self.types.get(name) or known.get(name) or _infer(name, values)
            self.types.setdefault(name, ztype)
            converted = []
            for i, value in enumerate(values):
                try:
                    converted.append(convert_json(value, ztype))
                except (ValueError, TypeError, OverflowError) as exc:
                    converted.append(None)
                    bad.setdefault(i, (name, value, f"{exc}; expected {ztype}"))
            columns[name] = converted
        dropped = list(batch.dropped)
        if bad:
            first = min(bad)
            name, value, reason = bad[first]
            if errors == "raise":
                raise ZeekParseError(self.path, f"value does not fit the column type ({reason})",
                                     line=batch.lines[first], field=name, value=json.dumps(value)[:200],
                                     expected=self.types[name])
            keep = [i for i in range(len(batch.rows)) if i not in bad]
            columns = {n: [v[i] for i in keep] for n, v in columns.items()}
            dropped += [(batch.lines[i], f"{bad[i][0]}: {bad[i][2]}") for i in sorted(bad)]
        arrays = []
        fields = []
        for name, values in columns.items():
            ztype = self.types[name]
            try:
                arrays.append(to_arrow(values, ztype))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
                raise ZeekParseError(self.path, f"column does not convert ({exc})", field=name,
                                     expected=ztype) from None
            fields.append(pa.field(name, arrow_type(ztype), metadata={"zeek_type": ztype}))
        return pa.table(arrays, schema=pa.schema(fields)), dropped
