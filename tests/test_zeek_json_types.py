"""Inferred JSON column types do not depend on where batches are cut.

Real WRCCDC dns rows (multi/wrccdc-2018/zeek-json/dns.json.gz) get extra fields the
built-in schema does not know, whose values are taken from the same rows' real
fields: null for the first rows and a number later, integers that later meet a
float, a field that is never set, lists that start empty. ``read_log``,
``read_arrow`` and ``iter_batches`` with 1, 2 and 65,536 rows per batch must give
the same values; a field that mixes a string into numbers fails the same way in all.
Expected values come from ``json.loads`` of the raw lines, not from the reader.
"""
from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from watchtower_lib import zeek
from watchtower_lib.errors import ZeekParseError

DNS = "multi/wrccdc-2018/zeek-json/dns.json.gz"
BATCHES = (1, 2, 65_536)


def _real_rows(shared: Path, n: int) -> list[dict[str, Any]]:
    lines = gzip.decompress((shared / DNS).read_bytes()).splitlines()[:n]
    return [json.loads(line) for line in lines]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _batches(path: Path, batch_rows: int, errors: str = "raise") -> list[pa.RecordBatch]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zeek.ZeekDataWarning)
        return list(zeek.iter_batches(path, batch_rows=batch_rows, errors=errors))


def _joined(batches: list[pa.RecordBatch]) -> pa.Table:
    """What a consumer of iter_batches gets by concatenating (read_arrow concatenates the same way)."""
    return pa.concat_tables([pa.Table.from_batches([b]) for b in batches], promote_options="permissive")


@pytest.fixture()
def widening(shared_data: Path, tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    rows = _real_rows(shared_data, 8)
    for i, row in enumerate(rows):
        row["wt_late"] = None if i < 3 else row["trans_id"]  # null in the first 3 rows, then the real int
        row["wt_widens"] = row["id.orig_p"] if i < 5 else row["rtt"]  # ints, then the real float rtt
        row["wt_never"] = None
        row["wt_list"] = [] if i < 4 else row["TTLs"]  # empty lists, then the real TTLs (floats)
    assert all(isinstance(r["trans_id"], int) and isinstance(r["id.orig_p"], int) for r in rows)
    assert all(isinstance(r["rtt"], float) for r in rows[5:])
    return _write(tmp_path / "dns.json", rows), rows


def test_inferred_types_are_the_same_for_every_batch_size(widening: tuple[Path, list[dict[str, Any]]]) -> None:
    path, rows = widening
    df = zeek.read_log(path)
    assert df["wt_late"].tolist() == [pd.NA] * 3 + [r["trans_id"] for r in rows[3:]]
    assert df["wt_late"].tolist()[3:] == [35149, 3443, 3443, 54939, 54939]  # the raw lines, by eye
    assert str(df["wt_late"].dtype) == "Int64" and df.attrs["zeek_types"]["wt_late"] == "int"
    widened = [float(r["id.orig_p"]) for r in rows[:5]] + [r["rtt"] for r in rows[5:]]
    assert df["wt_widens"].tolist() == widened
    assert widened[4:] == [53995.0, 0.0010478496551513672, 0.0014660358428955078, 0.0015559196472167969]
    assert str(df["wt_widens"].dtype) == "Float64" and df.attrs["zeek_types"]["wt_widens"] == "double"
    assert df["wt_never"].isna().all() and str(df["wt_never"].dtype) == "object"  # no value: no type
    assert df["wt_list"].tolist()[:4] == [[]] * 4 and df["wt_list"].tolist()[4] == [2230.0, 38229.0]
    assert df.attrs["zeek_types"]["wt_list"] == "vector[double]"

    whole = zeek.read_arrow(path)
    assert whole.schema.field("wt_late").type == pa.int64() and whole.schema.field("wt_never").type == pa.null()
    assert whole.schema.field("wt_list").type == pa.list_(pa.float64())
    for batch_rows in BATCHES:
        batches = _batches(path, batch_rows)
        assert [b.num_rows for b in batches] == ([1] * 8 if batch_rows == 1 else [2] * 4 if batch_rows == 2 else [8])
        joined = _joined(batches)
        assert joined.schema.remove_metadata() == whole.schema.remove_metadata(), batch_rows
        assert joined.to_pylist() == whole.to_pylist(), batch_rows
    first = _batches(path, 1)
    # column by column, each batch says only what its own and earlier rows showed
    assert [str(b.schema.field("wt_late").type) for b in first] == ["null"] * 3 + ["int64"] * 5
    assert [str(b.schema.field("wt_widens").type) for b in first] == ["int64"] * 5 + ["double"] * 3
    assert str(first[3].schema.field("wt_list").type) == "list<item: null>"


def test_known_columns_keep_the_schema_types(shared_data: Path, widening: tuple[Path, list[dict[str, Any]]],
                                            tmp_path: Path) -> None:
    path, rows = widening
    plain = zeek.read_log(_write(tmp_path / "plain.json", _real_rows(shared_data, 8)))
    df = zeek.read_log(path)
    pd.testing.assert_frame_equal(df[list(plain.columns)], plain)
    assert str(df["trans_id"].dtype) == "UInt64" and str(df["id.orig_p"].dtype) == "UInt16"


@pytest.mark.parametrize("first, later, what", [
    ("trans_id", "query", "a string where earlier rows had int"),
    ("query", "trans_id", "an integer where earlier rows had string"),
    ("ts", "query", "a string where earlier rows had time"),
])
def test_a_field_that_mixes_kinds_is_a_clear_error_for_every_batch_size(
        shared_data: Path, tmp_path: Path, first: str, later: str, what: str) -> None:
    rows = _real_rows(shared_data, 6)
    for i, row in enumerate(rows):
        row["wt_mixed"] = None if i == 0 else row[first] if i < 4 else row[later]
    path = _write(tmp_path / "dns.json", rows)
    kind = {"trans_id": "int", "query": "string", "ts": "time"}[first]
    bad = json.dumps(rows[4]["wt_mixed"])
    for read in [zeek.read_log, zeek.read_arrow, *[lambda p, n=n: _batches(p, n) for n in BATCHES]]:
        with pytest.raises(ZeekParseError) as info:
            read(path)
        err = info.value
        assert (err.path, err.line, err.field, err.value, err.expected) == (str(path), 5, "wt_mixed", bad, kind)
        assert f"{what}, since line 2" in str(err)
    # errors="skip": line 5 (and 6) are dropped the same way whatever the batching
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zeek.ZeekDataWarning)
        whole = zeek.read_arrow(path, errors="skip")
    assert whole.num_rows == 4 and whole.schema.metadata[b"skipped_rows"] == b"2"
    assert whole["uid"].to_pylist() == [r["uid"] for r in rows[:4]]
    for batch_rows in BATCHES:
        assert _joined(_batches(path, batch_rows, "skip")).to_pylist() == whole.to_pylist()


def test_integers_a_double_would_round_are_not_widened(shared_data: Path, tmp_path: Path) -> None:
    rows = _real_rows(shared_data, 3)
    rows[0]["wt_big"] = 2**53 + 1
    rows[1]["wt_big"] = None
    rows[2]["wt_big"] = rows[2]["rtt"]
    path = _write(tmp_path / "dns.json", rows)
    for batch_rows in BATCHES:
        with pytest.raises(ZeekParseError, match=r"would be rounded; the column was int, since line 1") as info:
            _batches(path, batch_rows)
        assert info.value.line == 3 and info.value.field == "wt_big"


def test_lone_surrogate_escape_comes_back_as_its_text(tmp_path):
    r"""A JSON string holding a lone UTF-16 surrogate ("\ud800", which no UTF-8 text can hold) comes
    back as the six characters of its escape, as bytes that are not UTF-8 come back as \xNN text;
    the row is kept, the other values are untouched."""
    from watchtower_lib import zeek

    path = tmp_path / "conn.log"
    path.write_text('{"ts":1521912920.5,"uid":"CAbc","_path":"conn","note":"\\ud800x"}\n'
                    '{"ts":1521912921.5,"uid":"CDef","_path":"conn","note":"fine"}\n', encoding="ascii")
    df = zeek.read_log(path)
    assert df["note"].tolist() == ["\\ud800x", "fine"] and df["uid"].tolist() == ["CAbc", "CDef"]
    assert [b.num_rows for b in zeek.iter_batches(path, batch_rows=1)] == [1, 1]
