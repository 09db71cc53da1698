"""Labelled Zeek datasets (IoT-23, Stratosphere) -> a frame with ``label`` and ``detail``.

Why a module: the public labelled corpora label flows in two ways, and models
need one. ``read_labelled`` reads the log with :mod:`watchtower_lib.zeek` and adds

* ``label`` - ``"benign"``, ``"malicious"`` or ``"unknown"`` (pandas string dtype);
  ``Background``, ``Unknown``, unset and empty labels are ``"unknown"``,
  case-insensitively;
* ``detail`` - the detailed label (``C&C``, ``DDoS``, ``External-Attack-to-Device``),
  NA when unset or empty;
* ``label_raw`` - the label text as written, so nothing is lost in the mapping.

The source label columns (``label`` and ``detailed-label``/``detailedlabel``) are
replaced by these.

IoT-23's ``conn.log.labeled`` joins its last three columns with three spaces instead
of tabs, in ``#fields``, ``#types`` and every row, so the Zeek reader sees one
column ``"tunnel_parents   label   detailed-label"``; it is split here, vectorised,
and each part gets its declared Zeek type.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from . import zeek
from ._zeek_types import STRING, Markers, arrow_type, csv_type, finish_column
from .errors import ZeekParseError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["read_labelled", "normalise_label", "LABELS"]

#: The only values of the ``label`` column.
LABELS = ("benign", "malicious", "unknown")
_JOINER = "   "  # IoT-23 joins its last three columns with three spaces
_DETAIL_NAMES = ("detailed-label", "detailedlabel", "detailed_label")
_MAP = {"benign": "benign", "malicious": "malicious",
        "background": "unknown", "unknown": "unknown", "": "unknown"}


def normalise_label(value: str | None) -> str:
    """One raw label -> benign / malicious / unknown (case-insensitive; None -> unknown)."""
    if value is None:
        return "unknown"
    return _MAP.get(value.strip().lower(), "unknown")


def _split_joined(table: pa.Table, path: str) -> pa.Table:
    """Split IoT-23's space-joined column(s) into their real columns, with their types."""
    for i, field in enumerate(table.schema):
        if _JOINER not in field.name:
            continue
        names = [n.strip() for n in field.name.split(_JOINER)]
        meta = field.metadata or {}
        types = [t.strip() for t in meta.get(b"zeek_type", b"").decode().split(_JOINER)]
        if len(types) != len(names):
            types = ["string"] * len(names)
        col = table[field.name].combine_chunks()
        parts = pc.split_pattern(col, _JOINER, max_splits=len(names) - 1)
        counts = pc.list_value_length(parts)
        short = pc.fill_null(pc.less(counts, len(names)), False)
        if pc.any(short).as_py():
            row = pc.index(short, True).as_py()
            raise ZeekParseError(path, f"column {field.name!r} does not split into {len(names)} parts",
                                 field=field.name, value=col[row].as_py(), expected=f"{len(names)} values "
                                 "joined by three spaces (IoT-23 layout)")
        new = [_retype(pc.list_element(parts, k), ztype) for k, ztype in enumerate(types)]
        table = table.remove_column(i)
        for k, (name, ztype, arr) in enumerate(zip(names, types, new)):
            table = table.add_column(i + k, pa.field(name, arrow_type(ztype), metadata={"zeek_type": ztype}), [arr])
        return _split_joined(table, path)
    return table


def _retype(values: pa.Array, zeek_type: str) -> pa.Array:
    """Text parts -> the Zeek type declared for them (unset '-' -> null)."""
    markers = Markers()
    values = pc.if_else(pc.equal(values, markers.unset.decode()), pa.scalar(None, values.type), values)
    target = csv_type(zeek_type)
    if target != STRING:
        values = pc.cast(values, target)
    return finish_column(pa.chunked_array([values]), zeek_type, markers)


def read_labelled(path: str | os.PathLike[str], *, errors: str = "raise") -> pd.DataFrame:
    """Read an IoT-23 or Stratosphere labelled Zeek log with normalised labels.

    Parameters
    ----------
    path : ``conn.log.labeled`` (IoT-23, plain or gzip) or a Stratosphere
        ``*.labeled`` / ``labeled-conn.log`` file.
    errors : passed to :func:`watchtower_lib.zeek.read_arrow`.

    Returns
    -------
    DataFrame of the log's columns (typed as by ``read_log``) plus ``label``,
    ``detail`` and ``label_raw``.

    Raises
    ------
    ZeekParseError
        The file is not a Zeek log, or it has no ``label`` column.
    """
    table = _split_joined(zeek.read_arrow(path, errors=errors), os.fspath(path))
    lower = {name.lower(): name for name in table.column_names}
    if "label" not in lower:
        raise ZeekParseError(os.fspath(path), "no 'label' column: not a labelled dataset",
                             value=", ".join(table.column_names[-4:]),
                             expected="IoT-23 (label, detailed-label) or Stratosphere (label, detailedlabel) columns")
    raw = table[lower["label"]].combine_chunks()
    detail_name = next((lower[n] for n in _DETAIL_NAMES if n in lower), None)
    detail = (table[detail_name].combine_chunks() if detail_name
              else pa.nulls(table.num_rows, STRING))
    detail = pc.if_else(pc.fill_null(pc.equal(detail, ""), True), pa.scalar(None, STRING), detail)
    norm = pc.utf8_lower(pc.utf8_trim_whitespace(pc.fill_null(raw, "")))
    label = pc.if_else(pc.equal(norm, "benign"), "benign",
                       pc.if_else(pc.equal(norm, "malicious"), "malicious", "unknown"))
    unknown = set(pc.unique(norm).to_pylist()) - set(_MAP)
    if unknown:
        log.warning("%s: label values %s are not Benign/Malicious/Background; counted as unknown",
                    os.fspath(path), sorted(unknown))
    drop = [lower["label"]] + ([detail_name] if detail_name else [])
    table = table.drop_columns(drop)
    table = table.append_column(pa.field("label", STRING), [pc.cast(label, STRING)])
    table = table.append_column(pa.field("detail", STRING), [pc.cast(detail, STRING)])
    table = table.append_column(pa.field("label_raw", STRING), [pc.cast(raw, STRING)])
    return zeek.to_pandas(table)
