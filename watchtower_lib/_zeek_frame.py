"""Numeric columns of a TSV log straight into pandas' masked arrays, segment by segment.

Why: ``read_log`` used to build the whole Arrow table and then copy each numeric
column into numpy. At that moment both copies were resident (Arrow's allocator
keeps freed pages for a while), so the peak was the table *plus* every numeric
column again: 706 MB for a 2,000,000-row conn.log, more than zat's. Copying each
segment's numeric columns out as soon as it is parsed lets the next segment's
parse reuse the Arrow memory they held, and the numpy buffers are written once,
in place. Only text and list columns stay in Arrow (pandas uses them zero-copy).

The buffers are sized from an estimate of the file's rows; pages of an
over-estimate are never touched, so they cost address space, not memory. A
file with more rows than estimated grows the buffers by half again.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

_GROWTH = 1.5


def is_numeric(t: pa.DataType) -> bool:
    """Columns that become pandas masked arrays (counts, ints, ports, doubles, bools)."""
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


class NumericColumn:
    """One numeric column being filled: ``values`` and ``mask`` (True = NA) up to ``rows``."""

    def __init__(self, arrow_type: pa.DataType, capacity: int) -> None:
        self.arrow_type = arrow_type
        self.is_bool = pa.types.is_boolean(arrow_type)
        self.is_float = pa.types.is_floating(arrow_type)
        dtype = np.dtype(bool) if self.is_bool else np.dtype(arrow_type.to_pandas_dtype())
        self.values = np.empty(max(capacity, 1), dtype)
        self.mask = np.empty(max(capacity, 1), bool)
        self.rows = 0

    def _room(self, n: int) -> None:
        need = self.rows + n
        if need <= len(self.values):
            return
        size = max(need, int(len(self.values) * _GROWTH))
        for name in ("values", "mask"):
            old = getattr(self, name)
            new = np.empty(size, old.dtype)
            new[: self.rows] = old[: self.rows]
            setattr(self, name, new)

    def pad(self, upto: int) -> None:
        """NA up to row ``upto`` (a header block without this column)."""
        if upto > self.rows:
            n = upto - self.rows
            self._room(n)
            self.values[self.rows:upto] = 0
            self.mask[self.rows:upto] = True
            self.rows = upto

    def append(self, column: pa.ChunkedArray | pa.Array) -> None:
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        self._room(len(column))
        for chunk in chunks:
            n, at = len(chunk), self.rows
            if not n:
                continue
            if chunk.type != self.arrow_type:
                chunk = chunk.cast(self.arrow_type)
            # The Arrow buffers read by numpy, no temporaries: to_numpy after fill_null cost
            # two extra copies (and pandas' import inside pyarrow's conversion).
            values, mask = self.values[at:at + n], self.mask[at:at + n]
            validity, data = chunk.buffers()[:2]
            if self.is_bool:
                values[:] = _bits(data, chunk.offset, n)
            else:
                values[:] = np.frombuffer(data, values.dtype, n, chunk.offset * values.itemsize)
            if chunk.null_count:
                np.equal(_bits(validity, chunk.offset, n), 0, out=mask)
                values[mask] = False if self.is_bool else 0
            else:
                mask[:] = False
            self.rows += n

    def to_pandas(self, rows: int) -> Any:
        """The pandas masked array of the first ``rows`` rows (views, no copy)."""
        import pandas as pd

        self.pad(rows)
        values, mask = self.values[:rows], self.mask[:rows]
        if self.is_bool:
            return pd.arrays.BooleanArray(values, mask, copy=False)
        cls = pd.arrays.FloatingArray if self.is_float else pd.arrays.IntegerArray
        return cls(values, mask, copy=False)


def _bits(buffer: pa.Buffer, offset: int, n: int) -> np.ndarray:
    """An Arrow bitmap (LSB first) as n bytes of 0/1, starting at bit ``offset``."""
    start = offset // 8
    raw = np.frombuffer(buffer, np.uint8, (offset % 8 + n + 7) // 8, start)
    return np.unpackbits(raw, bitorder="little")[offset % 8: offset % 8 + n]


def estimate_rows(path: str, gzip: bool, seg_bytes: int, seg_rows: int) -> int:
    """Rows a file probably holds, from the first segment's bytes per row (generous for gzip)."""
    if seg_rows <= 0 or seg_bytes <= 0:
        return 1024
    try:
        size = os.path.getsize(path)
    except OSError:
        return seg_rows
    if gzip:
        size *= 8  # Zeek TSV gzips 5-10x; more rows grow the buffers
    return int(size / (seg_bytes / seg_rows) * 1.05) + 1024
