"""Read Zeek logs (TSV or JSON lines, plain or gzip) into typed pandas / Arrow tables.

The format is detected from the content, never the file name: a ``#fields``
header means Zeek TSV, a line starting with ``{`` means JSON lines, gzip is
recognised by its magic bytes. Anything else fails at once with a
``ZeekParseError`` (zat would hang on such a file).

Column names stay Zeek's (``id.orig_h``) and types follow Zeek's, so code
downstream sees one schema whatever the format:

=========================  ==========================================
Zeek type                  pandas dtype
=========================  ==========================================
time                       ``datetime64[ns, UTC]``
interval                   ``timedelta64[ns]``
count / int / port         ``UInt64`` / ``Int64`` / ``UInt16``
double                     ``Float64`` (inf and nan kept, unset is NA)
bool                       ``boolean``
addr, subnet, string, enum ``string`` (pyarrow storage)
set/vector/table[T]        lists of typed elements (``ArrowDtype``)
anything else              ``string``
=========================  ==========================================

``errors="raise"`` (default) stops at the first malformed row with a
``ZeekParseError`` naming file, line, field and value; ``errors="skip"`` drops
such rows, counts them in ``df.attrs["skipped_rows"]`` (and the Arrow schema
metadata ``skipped_rows``) and warns with :class:`ZeekDataWarning`.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from . import _zeek_frame, _zeek_json, _zeek_tsv
from ._zeek_io import Source as _Source
from ._zeek_io import name_type as _name_type
from ._zeek_io import peek as _peek
from ._zeek_io import sniff as _sniff
from ._zeek_types import arrow_type

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["read_log", "read_arrow", "iter_batches", "log_type", "zeek_type_of", "ZeekDataWarning"]

PathLike = str | os.PathLike[str]


class ZeekDataWarning(UserWarning):
    """Rows were dropped (``errors="skip"``) or a damaged gzip was read only up to the damage."""


# ------------------------------------------------------------------ tables out
def _finish(table: pa.Table, fmt: str, ltype: str | None, skipped: int) -> pa.Table:
    meta = {b"zeek_format": fmt.encode(), b"zeek_path": (ltype or "").encode(), b"skipped_rows": str(skipped).encode()}
    return table.replace_schema_metadata(meta)


def _report(source: _Source, skipped: list[tuple[int, str]], rows: int) -> None:
    if skipped:
        line, reason = skipped[0]
        warnings.warn(f"{source.path}: skipped {len(skipped)} malformed row(s); first at line {line}: {reason}",
                      ZeekDataWarning, stacklevel=3)
    if source.damaged:
        warnings.warn(f"{source.path}: {source.damaged}; recovered {rows} complete row(s) before the damage",
                      ZeekDataWarning, stacklevel=3)


def _check_errors(errors: str) -> None:
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")


def read_arrow(path: PathLike, *, errors: str = "raise") -> pa.Table:
    """Read a Zeek log into one Arrow table with Zeek's column names and typed columns.

    Parameters
    ----------
    path : a Zeek TSV or JSON-lines log, plain or gzip (detected from content).
    errors : "raise" stops at the first malformed row; "skip" drops and counts them.

    Returns
    -------
    pyarrow.Table whose fields carry their Zeek type in field metadata (``zeek_type``; JSON
    columns inferred from their values have none, ``zeek_type_of`` reads their Arrow type)
    and whose schema metadata has ``zeek_format``, ``zeek_path`` and ``skipped_rows``.
    Several header blocks in one file give the union of their columns (null where a
    block lacks one).

    Raises
    ------
    ZeekParseError
        The file is not a Zeek log, a row is malformed (``errors="raise"``), or a gzip is damaged.
    ZeekSchemaConflict
        Two header blocks give one column different types.
    """
    _check_errors(errors)
    source = _Source(path, errors)
    first, chunks = _peek(source.chunks())
    fmt = _sniff(first, source.path)
    skipped: list[tuple[int, str]] = []
    if fmt == "json":
        table, ltype = _json_table(source, chunks, errors, skipped)
    else:
        blocks: list[_zeek_tsv.Block] = []
        parts = list(_tsv_tables(source, chunks, errors, blocks, skipped))
        schema = _zeek_tsv.unify(source.path, blocks)
        table = _concat(parts, schema)
        ltype = _tsv_log_type(source, blocks)
    _report(source, skipped, table.num_rows)
    return _finish(table, fmt, ltype, len(skipped))


def _json_table(source: _Source, chunks: Any, errors: str,
                skipped: list[tuple[int, str]]) -> tuple[pa.Table, str | None]:
    typer = _zeek_json.JsonTyper(source.path, None, _name_type(source.path))
    tables = []
    for batch in _zeek_json.iter_rows(chunks, source.path, errors, 1 << 16):
        table, dropped = typer.table(batch, errors)
        tables.append(table)
        skipped += dropped
    ltype = typer.log_type or _name_type(source.path)
    return (pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})), ltype


def _tsv_tables(source: _Source, chunks: Any, errors: str, blocks: list[_zeek_tsv.Block],
                skipped: list[tuple[int, str]]) -> Iterator[pa.Table]:
    """Each data segment's table, in file order; ``blocks`` and ``skipped`` fill as it goes."""
    for seg in _zeek_tsv.iter_segments(chunks, source.path):
        if not blocks or blocks[-1] is not seg.block:
            blocks.append(seg.block)
            _zeek_tsv.unify(source.path, blocks)  # a type conflict stops us before its rows
        result = _zeek_tsv.parse_segment(seg, source.path, errors)
        seg.lines = result.lines
        _zeek_tsv.release_pools()
        skipped += result.skipped
        yield result.table


def _tsv_log_type(source: _Source, blocks: list[_zeek_tsv.Block]) -> str | None:
    return next((b.path for b in blocks if b.path), None) or _name_type(source.path)


def _tsv_frame(source: _Source, chunks: Any, errors: str) -> pd.DataFrame:
    """A TSV log as a DataFrame, numeric columns copied out segment by segment (``_zeek_frame``)."""
    blocks: list[_zeek_tsv.Block] = []
    skipped: list[tuple[int, str]] = []
    numeric: dict[str, _zeek_frame.NumericColumn] = {}
    parts: list[pa.Table] = []
    rows = 0
    estimate = 0
    for table in _tsv_tables(source, chunks, errors, blocks, skipped):
        if not estimate and table.num_rows:
            seg_bytes = sum(b.size for col in table.columns for chunk in col.chunks for b in chunk.buffers() if b)
            estimate = _zeek_frame.estimate_rows(source.path, source.gzip, seg_bytes, table.num_rows) \
                if seg_bytes else 0
            estimate = max(estimate, table.num_rows)
        names = [f.name for f in table.schema if _zeek_frame.is_numeric(f.type)]
        for name in names:
            column = numeric.get(name)
            if column is None:
                column = numeric[name] = _zeek_frame.NumericColumn(table.schema.field(name).type,
                                                                   max(estimate, rows + table.num_rows))
            column.pad(rows)
            column.append(table[name])
        parts.append(table.drop_columns(names))
        rows += table.num_rows
        del table
        _zeek_tsv.release_pools()
    schema = _zeek_tsv.unify(source.path, blocks)
    rest = pa.schema([f for f in schema if f.name not in numeric])
    table = _finish(_concat(parts, rest), "tsv", _tsv_log_type(source, blocks), len(skipped))
    del parts
    _report(source, skipped, rows)
    columns = {name: column.to_pandas(rows) for name, column in numeric.items()}
    return _consume_to_pandas([table], columns, schema)


def _concat(parts: list[pa.Table], schema: pa.Schema) -> pa.Table:
    """Tables of the blocks -> one table of ``schema`` (missing columns become nulls)."""
    aligned = []
    for part in parts:
        cols = [part[f.name] if f.name in part.column_names else pa.nulls(part.num_rows, f.type)
                for f in schema]
        aligned.append(pa.table(cols, schema=schema))
    return pa.concat_tables(aligned) if aligned else schema.empty_table()


def iter_batches(path: PathLike, *, batch_rows: int = 65_536, errors: str = "raise") -> Iterator[pa.RecordBatch]:
    """Yield the rows of a Zeek log as Arrow record batches, with bounded memory.

    The file is read in chunks of about 16 MB (decompressed); nothing holds the whole
    file. For TSV every batch has the same schema, the union of all header blocks (a
    first pass reads only the headers). For JSON, a column the built-in schema does not
    know takes its type from its values in file order (null until a value appears, int
    widening to double), so where batches are cut does not matter; a later batch may add
    columns, and a value of another kind is a ``ZeekParseError``.

    Parameters
    ----------
    path : a Zeek TSV or JSON-lines log, plain or gzip.
    batch_rows : the most rows in one batch.
    errors : "raise" or "skip", as in :func:`read_arrow`; skipped rows are reported
        by one warning when the iteration ends.

    Raises
    ------
    ZeekParseError, ZeekSchemaConflict, as :func:`read_arrow`.
    """
    _check_errors(errors)
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    source = _Source(path, errors)
    first, chunks = _peek(source.chunks())
    fmt = _sniff(first, source.path)
    skipped: list[tuple[int, str]] = []
    rows = 0
    if fmt == "json":
        typer = _zeek_json.JsonTyper(source.path, None, _name_type(source.path))
        for batch in _zeek_json.iter_rows(chunks, source.path, errors, batch_rows):
            table, dropped = typer.table(batch, errors)
            skipped += dropped
            rows += table.num_rows
            ltype = typer.log_type or _name_type(source.path)
            yield from _finish(table, fmt, ltype, 0).to_batches(max_chunksize=batch_rows)  # already batch_rows
    else:
        schema, ltype = _scan_schema(path, errors)
        schema = _finish(schema.empty_table(), fmt, ltype, 0).schema
        pending: list[pa.Table] = []
        size = 0
        for seg in _zeek_tsv.iter_segments(chunks, source.path):
            result = _zeek_tsv.parse_segment(seg, source.path, errors)
            seg.lines = result.lines
            _zeek_tsv.release_pools()
            skipped += result.skipped
            rows += result.table.num_rows
            pending.append(_concat([result.table], schema))
            size += result.table.num_rows
            while size >= batch_rows:  # cut exact batches across segment boundaries
                table = pa.concat_tables(pending)
                yield table.slice(0, batch_rows).combine_chunks().to_batches()[0]
                pending, size = [table.slice(batch_rows)], size - batch_rows
        if size:
            yield pa.concat_tables(pending).combine_chunks().to_batches()[0]
    _report(source, skipped, rows)


def _scan_schema(path: PathLike, errors: str) -> tuple[pa.Schema, str | None]:
    """Union schema of all header blocks, reading the file once without parsing rows."""
    source = _Source(path, errors)
    blocks: list[_zeek_tsv.Block] = []
    for seg in _zeek_tsv.iter_segments(source.chunks(), source.path):
        if not blocks or blocks[-1] is not seg.block:
            blocks.append(seg.block)
    schema = _zeek_tsv.unify(source.path, blocks)
    return schema, next((b.path for b in blocks if b.path), None) or _name_type(source.path)


# ------------------------------------------------------------------ pandas
def _masked(col: pa.ChunkedArray) -> Any:
    """Arrow numeric/bool column -> pandas masked array with a single copy.

    The chunks are copied straight into one numpy array (no combine_chunks, no
    fill_null temporaries in Arrow's pool, which fragment it). Doubles are built here
    too because pyarrow's own mapping would turn NaN into NA, and Zeek's ``nan`` is
    a value, not a missing one.
    """
    import numpy as np
    import pandas as pd

    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    is_bool = pa.types.is_boolean(col.type)
    dtype = np.dtype(bool) if is_bool else np.dtype(col.type.to_pandas_dtype())
    values = np.empty(len(col), dtype)
    mask = np.zeros(len(col), bool)
    pos = 0
    for chunk in chunks:
        n = len(chunk)
        if chunk.null_count:
            mask[pos:pos + n] = chunk.is_null().to_numpy(zero_copy_only=False)
            chunk = chunk.fill_null(False if is_bool else 0)
        values[pos:pos + n] = chunk.to_numpy(zero_copy_only=False)
        pos += n
    if is_bool:
        return pd.arrays.BooleanArray(values, mask, copy=False)
    cls = pd.arrays.FloatingArray if pa.types.is_floating(col.type) else pd.arrays.IntegerArray
    return cls(values, mask, copy=False)


def _consume_to_pandas(holder: list[pa.Table], converted: dict[str, Any] | None = None,
                       schema: pa.Schema | None = None) -> pd.DataFrame:
    """Table -> DataFrame, dropping each Arrow column once converted.

    ``holder`` is a one-item list so that no caller frame keeps the table alive:
    converted columns are freed as we go, which keeps peak memory near one copy.
    ``converted`` holds columns already made (``_tsv_frame``'s numeric ones) and
    ``schema`` the full schema, for the column order and Zeek types.
    """
    import pandas as pd

    table = holder.pop()
    meta = table.schema.metadata or {}
    schema = schema if schema is not None else table.schema
    zeek_types = {f.name: zeek_type_of(f) for f in schema}
    order = schema.names
    text = pd.StringDtype("pyarrow")

    def mapper(t: pa.DataType) -> Any:
        if pa.types.is_list(t):
            return pd.ArrowDtype(t)
        if pa.types.is_large_string(t) or pa.types.is_string(t):
            return text
        return None

    columns: dict[str, Any] = dict(converted or {})
    release = _zeek_tsv.release_pools
    release()
    for f in table.schema:
        if pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type):
            columns[f.name] = _masked(table[f.name])
            table = table.drop_columns([f.name])
            release()  # the Arrow copy is freed: return it before the next one
    left = table.num_columns
    rest = table.to_pandas(types_mapper=mapper, self_destruct=True, split_blocks=True)
    del table
    # a table of numeric columns only has no Arrow column left to carry the row count
    index = rest.index if left or not columns else pd.RangeIndex(len(next(iter(columns.values()))))
    for name in rest.columns:
        columns[name] = rest[name]
    df = pd.DataFrame({name: columns[name] for name in order}, index=index, copy=False)
    release()
    df.attrs["skipped_rows"] = int(meta.get(b"skipped_rows", b"0"))
    df.attrs["log_type"] = meta.get(b"zeek_path", b"").decode() or None
    df.attrs["zeek_format"] = meta.get(b"zeek_format", b"").decode() or None
    df.attrs["zeek_types"] = zeek_types
    return df


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow table from :func:`read_arrow` -> DataFrame with the documented dtypes.

    Text columns are zero-copy (large_string backs pandas' pyarrow string dtype),
    lists stay Arrow-backed, numbers and bools become pandas masked arrays over the
    Arrow buffers. ``df.attrs`` gets ``skipped_rows``, ``log_type``, ``zeek_format``
    and ``zeek_types``.
    """
    return _consume_to_pandas([table])


def read_log(path: PathLike, *, errors: str = "raise") -> pd.DataFrame:
    """Read a Zeek log into a pandas DataFrame with Zeek's column names and typed columns.

    Parameters
    ----------
    path : a Zeek TSV or JSON-lines log, plain or gzip (detected from content).
    errors : "raise" (default) or "skip" (drop malformed rows, count them, warn).

    Returns
    -------
    DataFrame with the dtypes in this module's docstring. ``df.attrs`` holds
    ``skipped_rows``, ``log_type`` (``#path``/``_path``, else from the file name),
    ``zeek_format`` ("tsv"/"json") and ``zeek_types`` (column -> Zeek type).

    Raises
    ------
    ZeekParseError
        The file is not a Zeek log, a row is malformed (``errors="raise"``), or a gzip is damaged.
    ZeekSchemaConflict
        Two header blocks give one column different types.
    """
    _check_errors(errors)
    source = _Source(path, errors)
    first, chunks = _peek(source.chunks())
    if _sniff(first, source.path) == "tsv":
        return _tsv_frame(source, chunks, errors)
    skipped: list[tuple[int, str]] = []
    table, ltype = _json_table(source, chunks, errors, skipped)
    _report(source, skipped, table.num_rows)
    holder = [_finish(table, "json", ltype, len(skipped))]
    del table
    return _consume_to_pandas(holder)


# ------------------------------------------------------------------ helpers
def zeek_type_of(field: pa.Field | pa.DataType | str) -> str:
    """The Zeek type of an Arrow field read by this module (or a best guess for a bare type).

    A ``str`` is taken as a Zeek type name and normalised (``table[T]`` -> ``set[T]``).
    """
    from ._zeek_types import normalise_type

    if isinstance(field, str):
        return normalise_type(field)
    if isinstance(field, pa.Field):
        meta = field.metadata or {}
        if b"zeek_type" in meta:
            return meta[b"zeek_type"].decode()
        field = field.type
    for name in ("time", "interval", "count", "int", "port", "double", "bool", "string"):
        if arrow_type(name) == field:
            return name
    if pa.types.is_list(field):
        return f"vector[{zeek_type_of(field.value_type)}]"
    return "string"


def log_type(path_or_header: PathLike | pa.Table | pa.Schema) -> str | None:
    """Zeek log type ("conn", "dns", ...) of a file or of a table read by this module.

    For a file: ``#path`` (TSV) or ``_path`` (JSON) from the first lines, else the
    file name (``conn.log``, ``conn.log.labeled``, ``dns.json.gz`` -> conn, conn, dns).
    """
    if isinstance(path_or_header, (pa.Table, pa.Schema)):
        schema = path_or_header.schema if isinstance(path_or_header, pa.Table) else path_or_header
        value = (schema.metadata or {}).get(b"zeek_path", b"").decode()
        return value or None
    source = _Source(path_or_header, "skip")
    first, _ = _peek(source.chunks())
    for raw in first.splitlines()[:200]:
        line = raw.strip()
        if line.startswith(b"#path"):
            value = line[5:].strip().lstrip(b"|,;\x00").strip()
            if value:
                return value.decode("utf-8", "replace")
        elif line.startswith(b"{"):
            m = re.search(rb'"_path"\s*:\s*"([^"]+)"', line)
            if m:
                return m.group(1).decode("utf-8", "replace")
            break
    return _name_type(source.path)

