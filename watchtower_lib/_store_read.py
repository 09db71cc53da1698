"""Reading the Parquet store: time-range loads with partition pruning, schema union, summaries.

Why read through the manifest: it lists only committed parts, so a load never
sees a part that a crashed ingest left behind. Why pyarrow.dataset with hive
partitioning: the ``date=YYYY-MM-DD`` folder names prune whole days without
opening a file; the ``ts`` filter then trims the first and last day exactly.
Why unify schemas here: logs of one type written by different Zeek versions
differ in columns (Bro 2.x has no ``local_resp``); a load returns the union, null
where a file lacks a column, and refuses only a real type clash.
"""
from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.dataset as ds

from ._manifest import MANIFEST_NAME, Manifest, Part
from ._store_write import SENSOR_COLUMN, UNKNOWN_DAY
from .errors import StoreError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

_TS = pa.timestamp("ns", tz="UTC")
_HIVE = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")


def _open(store_dir: str | Path) -> Manifest:
    store = Path(store_dir)
    try:
        return Manifest(store, create=False)
    except FileNotFoundError:
        what = "does not exist" if not store.exists() else f"has no {MANIFEST_NAME}"
        raise StoreError(f"no Watch Tower store at {store} ({what}); "
                         f"ingest logs first: watchtower ingest PATH --store {store}") from None


def log_types(store_dir: str | Path) -> list[str]:
    """The log types in the store (including types whose files had no rows)."""
    with _open(store_dir) as manifest:
        return manifest.log_types()


def _check_type(manifest: Manifest, store_dir: str | Path, log_type: str) -> None:
    known = manifest.log_types()
    if log_type in known:
        return
    close = difflib.get_close_matches(log_type, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise StoreError(f"no {log_type!r} logs in the store at {store_dir}{hint}; "
                     f"it has: {', '.join(known) or 'nothing yet'}")


def _timestamp(value: Any, name: str) -> pd.Timestamp | None:
    import pandas as pd

    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{name}={value!r} is not a date or time ({exc})") from None
    if ts is pd.NaT:
        raise StoreError(f"{name}={value!r} is not a date or time")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _day_filter(start: pd.Timestamp | None, end: pd.Timestamp | None) -> ds.Expression | None:
    """Partition filter on the ``date`` folder: days that can hold rows in [start, end)."""
    import pandas as pd

    if start is None and end is None:
        return None
    expr = ds.field("date") != UNKNOWN_DAY
    if start is not None:
        expr = expr & (ds.field("date") >= start.strftime("%Y-%m-%d"))
    if end is not None:
        last = end - pd.Timedelta(1, "ns")  # end is exclusive
        expr = expr & (ds.field("date") <= last.strftime("%Y-%m-%d"))
    return expr


def _selected(store: Path, manifest: Manifest, log_type: str, start: pd.Timestamp | None,
              end: pd.Timestamp | None) -> list[Part]:
    """Committed parts of ``log_type`` whose day partition overlaps [start, end)."""
    parts = manifest.parts(log_type)
    if not parts:
        return []
    root = store / log_type
    by_path = {str(store / p.relpath): p for p in parts}
    dataset = ds.dataset(list(by_path), schema=pa.schema([("date", pa.string())]), format="parquet",
                         partitioning=_HIVE, partition_base_dir=str(root))
    day_filter = _day_filter(start, end)
    fragments = dataset.get_fragments(filter=day_filter) if day_filter is not None else dataset.get_fragments()
    chosen = [by_path[f.path] for f in fragments]
    log.debug("%s: %d of %d parts overlap the range", log_type, len(chosen), len(parts))
    return chosen


def _wide(t: pa.DataType) -> pa.DataType:
    """string and large_string (and lists of them) are one type at different widths."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.large_string()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(_wide(t.value_type))
    return t


_WIDENS_TO_DOUBLE = (pa.int64(), pa.uint64(), pa.float64())


def _merge(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The type that holds both, or None for a real clash.

    Null yields (also inside lists: ``list<null>`` from a JSON column of empty lists);
    int64/uint64 next to float64 is float64, because the JSON reader widens an
    inferred integer column to double mid-file, so one source can give parts of
    both (reading a part whose integers a double cannot hold exactly fails
    loudly in pyarrow's safe cast, it is not rounded).
    """
    if pa.types.is_null(a):
        return b
    if pa.types.is_null(b) or a.equals(b):
        return a
    if _wide(a).equals(_wide(b)):
        return _wide(a)
    if (pa.types.is_list(a) or pa.types.is_large_list(a)) and (pa.types.is_list(b) or pa.types.is_large_list(b)):
        inner = _merge(a.value_type, b.value_type)
        return None if inner is None else pa.list_(inner)
    if a in _WIDENS_TO_DOUBLE and b in _WIDENS_TO_DOUBLE and pa.float64() in (a, b):
        return pa.float64()
    return None


def unify_schemas(items: Sequence[tuple[str, pa.Schema]]) -> pa.Schema:
    """Union of columns in first-seen order; a null-typed column yields to a typed one.

    Text columns written as ``string`` by one reader version and ``large_string``
    by another are the same column; they are read as ``large_string``. An integer
    column next to a double one is read as double (see :func:`_merge`).

    Raises
    ------
    StoreError
        One column has two real types; the message names both files.
    """
    fields: dict[str, tuple[pa.Field, str]] = {}
    for where, schema in items:
        for f in schema:
            seen = fields.get(f.name)
            if seen is None or pa.types.is_null(seen[0].type):
                fields[f.name] = (f, where)
                continue
            merged = _merge(seen[0].type, f.type)
            if merged is None:
                raise StoreError(
                    f"column {f.name!r} is {seen[0].type} in {seen[1]} but {f.type} in {where}; "
                    f"the files disagree on its Zeek type (re-ingest one of them into another store)")
            if not merged.equals(seen[0].type):
                widened = seen[0].with_type(merged)
                if not _wide(seen[0].type).equals(_wide(f.type)):  # a new Zeek type: let it follow the Arrow type
                    widened = widened.remove_metadata()
                fields[f.name] = (widened, seen[1])
    return pa.schema([f for f, _ in fields.values()])


def files(store_dir: str | Path, log_type: str, start: Any = None, end: Any = None) -> list[Path]:
    """The Parquet files a :func:`load` of this range reads (after partition pruning)."""
    store = Path(store_dir)
    with _open(store) as manifest:
        _check_type(manifest, store, log_type)
        parts = _selected(store, manifest, log_type, _timestamp(start, "start"), _timestamp(end, "end"))
    return [store / p.relpath for p in parts]


def load(
    store_dir: str | Path,
    log_type: str,
    start: Any = None,
    end: Any = None,
    columns: Sequence[str] | None = None,
    sensor: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Rows of one log type with ``start <= ts < end``, as the reader's typed DataFrame.

    Parameters
    ----------
    store_dir : the store.
    log_type : ``"conn"``, ``"dns"``, ... (see :func:`log_types`).
    start, end : anything ``pandas.Timestamp`` takes (``"2022-06-13"``, a datetime);
        naive values are UTC. ``end`` is exclusive. With either bound, rows whose
        ``ts`` is unset are left out; with neither, every row is returned.
    columns : the columns to return (default all, plus ``_sensor``).
    sensor : only rows from this sensor (or these sensors).

    Returns
    -------
    pandas.DataFrame
        Sorted by ``ts`` (unset last), index 0..n-1, the same dtypes as
        :func:`watchtower_lib.zeek.read_log` plus a string ``_sensor`` column.

    Raises
    ------
    StoreError
        Missing store, unknown log type or column (the message lists what exists),
        two files giving one column different types, or a damaged part file (the
        message names it, its source, and how to repair it).
    """
    store = Path(store_dir)
    start_ts, end_ts = _timestamp(start, "start"), _timestamp(end, "end")
    with _open(store) as manifest:
        _check_type(manifest, store, log_type)
        parts = _selected(store, manifest, log_type, start_ts, end_ts)
        if parts:
            schema = unify_schemas([(f"{p.relpath} (from {p.source_path})", p.schema) for p in parts])
        else:  # keep the columns even when nothing is in range
            schema = unify_schemas(manifest.source_schemas(log_type))
    wanted = list(schema.names) if columns is None else list(columns)
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        raise StoreError(f"{log_type} has no column {missing[0]!r}; columns: {', '.join(schema.names)}")
    read = wanted + (["ts"] if "ts" in schema.names and "ts" not in wanted else [])
    if not parts:
        table = schema.empty_table().select(read)
    else:
        expr = _row_filter(schema, start_ts, end_ts, sensor)
        try:
            dataset = ds.dataset([str(store / p.relpath) for p in parts], schema=schema, format="parquet")
            table = dataset.to_table(columns=read, filter=expr)
        except (pa.ArrowException, OSError) as exc:  # pyarrow's message may not even name the file
            raise _unreadable(store, log_type, parts, schema, read, expr, exc) from exc
    if "ts" in read and pa.types.is_timestamp(schema.field("ts").type):
        table = table.sort_by([("ts", "ascending")])  # stable; unset ts last (Arrow's default)
    table = table.select(wanted)
    log.debug("loaded %d %s rows from %d files", table.num_rows, log_type, len(parts))
    return _to_pandas(table, log_type)


def _unreadable(store: Path, log_type: str, parts: list[Part], schema: pa.Schema, read: list[str],
                expr: ds.Expression | None, exc: Exception) -> StoreError:
    """The error for a load that pyarrow refused: which part, why, and how to repair it.

    Only on this failure path are the parts read one by one to find the culprit.
    """
    import pyarrow.parquet as pq

    for part in parts:
        path = store / part.relpath
        try:
            ds.dataset([str(path)], schema=schema, format="parquet").to_table(columns=read, filter=expr)
            continue
        except (pa.ArrowException, OSError) as part_exc:
            problem = str(part_exc).strip()
        try:
            pq.read_table(path)
        except (pa.ArrowException, OSError):
            with _open(store) as manifest:
                row = manifest._db.execute("SELECT sensor FROM sources WHERE sha256 = ?", (part.sha256,)).fetchone()
            sensor = row[0] if row else "local"
            return StoreError(
                f"{path}: this Parquet part of the store is damaged ({problem}); it holds {part.rows} "
                f"{log_type} rows from {part.source_path or 'a source the manifest no longer names'}. To repair: "
                f"remove that source from the manifest (sqlite3 {store / MANIFEST_NAME} \"DELETE FROM parts "
                f"WHERE sha256 = '{part.sha256}'; DELETE FROM sources WHERE sha256 = '{part.sha256}'\"), "
                f"then ingest it again (watchtower ingest {part.source_path or 'SOURCE'} --store {store} "
                f"--sensor {sensor}), which also deletes the damaged file")
        return StoreError(f"{path}: its {log_type} rows (from {part.source_path}) do not convert to the types the "
                          f"other parts give ({problem}); the files disagree on a column's Zeek type "
                          f"(re-ingest one of them into another store)")
    return StoreError(f"cannot load {log_type} from the store at {store} ({exc})")


def _row_filter(schema: pa.Schema, start: pd.Timestamp | None, end: pd.Timestamp | None,
                sensor: str | Sequence[str] | None) -> ds.Expression | None:
    expr: ds.Expression | None = None

    def both(a: ds.Expression | None, b: ds.Expression) -> ds.Expression:
        return b if a is None else a & b

    if start is not None or end is not None:
        if "ts" not in schema.names or not pa.types.is_timestamp(schema.field("ts").type):
            return ds.scalar(False)  # no time column: nothing is inside a time range
        if start is not None:
            expr = both(expr, ds.field("ts") >= pa.scalar(start.value, _TS))
        if end is not None:
            expr = both(expr, ds.field("ts") < pa.scalar(end.value, _TS))
    if sensor is not None:
        names = [sensor] if isinstance(sensor, str) else list(sensor)
        expr = both(expr, ds.field(SENSOR_COLUMN).isin(names))
    return expr


def _to_pandas(table: pa.Table, log_type: str) -> pd.DataFrame:
    """The reader's own Arrow -> pandas conversion, so a store load and read_log agree on dtypes."""
    from . import zeek

    return zeek.to_pandas(table.replace_schema_metadata({b"zeek_path": log_type.encode()}))


def summary(store_dir: str | Path) -> pd.DataFrame:
    """One row per log type: rows, files (sources), parts (Parquet files), first_ts, last_ts.

    Read from the manifest alone, so it is instant whatever the store's size.
    """
    import pandas as pd

    with _open(store_dir) as manifest:
        totals = manifest.totals()
    df = pd.DataFrame(totals, columns=["log_type", "rows", "files", "parts", "first_ts", "last_ts"])
    for i, col in ((4, "first_ts"), (5, "last_ts")):  # exact: int64 ns -> datetime, no float round trip
        ns = pa.array([row[i] for row in totals], pa.int64()).cast(_TS)
        df[col] = pd.Series(ns.to_pandas(), index=df.index, dtype="datetime64[ns, UTC]")
    return df.astype({"rows": "int64", "files": "int64", "parts": "int64"})
