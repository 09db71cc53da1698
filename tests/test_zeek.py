"""watchtower_lib.zeek on the whole shared corpus: every file parses (or fails with the
documented error), with the row counts and time spans that PROVENANCE.md records,
and the WRCCDC TSV and JSON twins give equal frames."""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from watchtower_lib import _zeek_io, zeek
from watchtower_lib.errors import ZeekParseError

NOT_LOGS = {"PROVENANCE.md", "labels.config"}
# file -> (what errors="raise" does, why). Everything else must parse in both modes.
DOCUMENTED_FAILURES = {
    "edge/zeekcut-conn-plain-tsv-no-zeek-header.log": "not a Zeek log",
    "edge/zat-http-gzip-truncated-corrupt.log.gz": "gzip data is truncated or corrupt",
    "edge/zeekcut-invalid-time-values-no-separator-header.log": "value does not parse",
    # Zeek's canonified baselines replace times by XXXXXXXXXX.XXXXXX: not a time.
    "edge/zeek-baseline-canonified/all-types-set-vector-subnet-func.log": "value does not parse",
    "edge/zeek-baseline-canonified/non-printable-escaping-http.tsv.log": "value does not parse",
}


def provenance(shared: Path) -> dict[str, tuple[int, str]]:
    """file -> (rows, time span) from the tables of PROVENANCE.md."""
    out = {}
    for line in (shared / "PROVENANCE.md").read_text().splitlines():
        cells = [c.strip() for c in re.split(r"\s\|\s", line.strip().strip("|"))]  # " | ": cells may hold "||"
        if len(cells) >= 4 and cells[0].startswith("`") and re.fullmatch(r"\d+", cells[2]):
            span = cells[3] if len(cells) >= 6 else ""
            out[cells[0].strip("`")] = (int(cells[2]), span)
    return out


def corpus(shared: Path) -> list[str]:
    return sorted(str(p.relative_to(shared)) for p in shared.rglob("*") if p.is_file() and p.name not in NOT_LOGS)


@pytest.fixture(scope="module")
def prov(shared_data: Path) -> dict[str, tuple[int, str]]:
    table = provenance(shared_data)
    assert len(table) > 140  # the parser really read the tables
    return table


def test_provenance_lists_every_file(shared_data: Path, prov: dict[str, tuple[int, str]]) -> None:
    assert set(corpus(shared_data)) <= set(prov)


def _read_quiet(path: Path, errors: str) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zeek.ZeekDataWarning)
        return zeek.read_log(path, errors=errors)


def test_every_file_in_the_corpus(shared_data: Path, prov: dict[str, tuple[int, str]]) -> None:
    """Every file: exact row count (rows + skipped = PROVENANCE rows), or the documented error."""
    checked = 0
    for rel in corpus(shared_data):
        path = shared_data / rel
        rows, _ = prov[rel]
        if rel in DOCUMENTED_FAILURES:
            with pytest.raises(ZeekParseError, match=DOCUMENTED_FAILURES[rel]) as info:
                zeek.read_log(path)
            assert info.value.path == str(path)
            if rel.endswith("no-zeek-header.log"):
                with pytest.raises(ZeekParseError, match="not a Zeek log"):
                    zeek.read_log(path, errors="skip")
                continue
        else:
            df = zeek.read_log(path)
            assert len(df) == rows, rel
            assert df.attrs["skipped_rows"] == 0
        skipped = _read_quiet(path, "skip")
        assert len(skipped) + skipped.attrs["skipped_rows"] == rows, rel
        checked += 1
    assert checked >= 160


def test_read_log_equals_read_arrow_to_pandas_on_every_file(shared_data: Path) -> None:
    """read_log copies numeric columns out segment by segment (``_zeek_frame``); it must give exactly
    the frame of the plain route, read_arrow then to_pandas: values, NA, dtypes, attrs, column order.
    With 3-row segments, a multi-block file crosses segment and block boundaries many times."""
    from watchtower_lib import _zeek_io

    compared = 0
    for rel in corpus(shared_data):
        path = shared_data / rel
        if rel in DOCUMENTED_FAILURES or "json" in rel:  # JSON takes the plain route in both
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", zeek.ZeekDataWarning)
            fast = zeek.read_log(path, errors="skip")  # also the files with malformed rows
            plain = zeek.to_pandas(zeek.read_arrow(path, errors="skip"))
        pd.testing.assert_frame_equal(fast, plain, check_exact=True, obj=rel)
        assert fast.attrs == plain.attrs, rel
        compared += 1
    assert compared >= 100
    tiny = shared_data / "edge/zeek-baseline-2019"
    concatenated = sorted(p for p in tiny.rglob("*") if p.is_file() and "concat" in p.name)
    original = _zeek_io.CHUNK_BYTES
    try:
        _zeek_io.CHUNK_BYTES = 256  # a few rows per segment
        for path in [*concatenated, shared_data / "multi/zat-samples/tsv/conn.log"]:
            pd.testing.assert_frame_equal(zeek.read_log(path), zeek.to_pandas(zeek.read_arrow(path)),
                                          check_exact=True, obj=path.name)
    finally:
        _zeek_io.CHUNK_BYTES = original


def test_numeric_column_reads_arrow_buffers_at_any_offset() -> None:
    """``_zeek_frame`` reads Arrow's value and validity buffers with numpy: slices that start
    inside a bitmap byte, bools, nulls and a chunk of another integer width must come out as
    pyarrow's own conversion gives them."""
    import pyarrow as pa

    from watchtower_lib import _zeek_frame

    cases = [
        (pa.uint64(), [pa.array([1, None, 3, 2**64 - 1, None, 6, 7, 8, 9, None, 11], pa.uint64()).slice(3, 7),
                       pa.array([None, 5], pa.uint32()), pa.array([], pa.uint64())]),
        (pa.bool_(), [pa.array([True, False, None, True, True, None, False, True, False, True]).slice(5),
                      pa.array([False, True, True])]),
        (pa.float64(), [pa.array([1.5, float("nan"), None, float("inf"), -0.0]).slice(1, 3), pa.nulls(2, pa.float64())]),
        (pa.uint16(), [pa.array(list(range(20)), pa.uint16()).slice(13)]),
    ]
    for arrow_type, chunks in cases:
        column = _zeek_frame.NumericColumn(arrow_type, 4)  # too small: the buffers must grow
        for chunk in chunks:
            column.append(chunk)
        expected = [v for c in chunks for v in c.cast(arrow_type).to_pylist()]
        got = column.to_pandas(len(expected))
        assert len(got) == len(expected), arrow_type
        for value, want in zip(got, expected):
            if want is None:
                assert value is pd.NA, arrow_type
            elif isinstance(want, float) and want != want:
                assert value != value, arrow_type  # nan is a value, not NA
            else:
                assert value == want, arrow_type


def test_time_spans_match_provenance(shared_data: Path, prov: dict[str, tuple[int, str]]) -> None:
    """min/max of ts, in UTC to the second, as PROVENANCE.md lists them (TSV and JSON alike)."""
    compared = 0
    for rel, (rows, span) in prov.items():
        m = re.fullmatch(r"(\S+Z) \.\. (\S+Z)", span)
        if not m or rel in DOCUMENTED_FAILURES or not (shared_data / rel).is_file():
            continue
        df = zeek.read_log(shared_data / rel)
        assert str(df["ts"].dtype) == "datetime64[ns, UTC]", rel
        lo, hi = df["ts"].min().floor("s"), df["ts"].max().floor("s")
        assert (lo, hi) == (pd.Timestamp(m.group(1)), pd.Timestamp(m.group(2))), rel
        compared += 1
    assert compared >= 110


def test_conn_dtypes_are_the_documented_ones(shared_data: Path) -> None:
    df = zeek.read_log(shared_data / "labelled/stratosphere-sdt/008-ctu-normal-40-day1/conn.log.labeled")
    expected = {
        "ts": "datetime64[ns, UTC]", "uid": "string", "id.orig_h": "string", "id.orig_p": "UInt16",
        "id.resp_h": "string", "id.resp_p": "UInt16", "proto": "string", "service": "string",
        "duration": "timedelta64[ns]", "orig_bytes": "UInt64", "conn_state": "string", "local_orig": "boolean",
        "missed_bytes": "UInt64", "history": "string", "orig_pkts": "UInt64",
    }
    assert {k: str(df[k].dtype) for k in expected} == expected
    assert isinstance(df["tunnel_parents"].dtype, pd.ArrowDtype)
    assert df["tunnel_parents"].iloc[0] == []  # (empty)
    first = df.iloc[0]
    assert first["uid"] == "CHLXQF2OBY4onAR0Ug"
    assert first["ts"] == pd.Timestamp("2022-06-12T21:59:58.444458Z")  # 1655071198.444458
    assert first["duration"] == pd.Timedelta(microseconds=1135424)
    assert (first["orig_bytes"], first["resp_bytes"], first["id.resp_p"]) == (1596, 4039, 443)
    assert bool(first["local_orig"]) is True and bool(first["local_resp"]) is False
    assert df.attrs["log_type"] == "conn" and df.attrs["zeek_types"]["tunnel_parents"] == "set[string]"


def _comparable(df: pd.DataFrame, column: str) -> list:
    values = df[column].tolist()
    return [None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT else v
            for v in values]


@pytest.mark.slow
def test_wrccdc_tsv_and_json_give_equal_frames(shared_data: Path) -> None:
    """The same events as Zeek TSV and as Zeek JSON: same dtypes, same values, column by column."""
    base = shared_data / "multi/wrccdc-2018"
    pairs = sorted(base.glob("zeek-tsv/*.log.gz"))
    assert len(pairs) == 32
    compared = ambiguous = empty_sets = 0
    for tsv_path in pairs:
        name = tsv_path.name.split(".")[0]
        tsv = zeek.read_log(tsv_path)
        js = zeek.read_log(base / "zeek-json" / f"{name}.json.gz")
        assert js.attrs["log_type"] == tsv.attrs["log_type"] == name
        assert {"_path", "_write_ts"} <= set(js.columns)
        shared = [c for c in tsv.columns if c in js.columns]
        for column in set(tsv.columns) - set(shared):  # Zeek's JSON omits unset fields
            assert tsv[column].isna().all(), (name, column)
        assert len(tsv) == len(js), name
        for column in shared:
            assert tsv[column].dtype == js[column].dtype, (name, column)
            if name == "loaded_scripts":  # TSV pads names with spaces, JSON does not
                continue
            left, right = _comparable(tsv, column), _comparable(js, column)
            for t, j in zip(left, right):
                if isinstance(t, float) and isinstance(j, float):  # TSV prints doubles with 6 decimals
                    assert math.isclose(t, j, rel_tol=1e-12, abs_tol=5.0001e-7), (name, column, t, j)
                elif t == [] and j == [""]:  # TSV writes a set holding only "" as the empty marker
                    empty_sets += 1
                elif t != j:
                    # Zeek's JSON writes a literal backslash unescaped and an unprintable byte as
                    # "\\xNN" text, so a value that itself contains "\\xNN" text is ambiguous there.
                    assert isinstance(t, str) and "\\x" in t, (name, column, t, j)
                    ambiguous += 1
            compared += 1
    assert compared >= 390  # columns compared value by value
    assert ambiguous == 33  # analyzer.failure_reason quoting binpac patterns such as "\\x0d\\x0a"
    assert empty_sets == 1035  # known_services.service


def test_json_ts_iso_and_epoch(shared_data: Path) -> None:
    """ISO-8601 ts (WRCCDC) and epoch ts (zat) both become UTC datetimes to the microsecond."""
    iso = zeek.read_log(shared_data / "multi/wrccdc-2018/zeek-json/ssh.json.gz")
    epoch = zeek.read_log(shared_data / "multi/zat-samples/json/conn.log")
    assert str(iso["ts"].dtype) == str(epoch["ts"].dtype) == "datetime64[ns, UTC]"
    assert iso["ts"].iloc[0] == pd.Timestamp("2018-03-24T17:16:39.739898Z")  # the first line, verbatim
    assert epoch["ts"].min().floor("s") == pd.Timestamp("2019-12-03T22:44:56Z")
    assert str(epoch["id.resp_p"].dtype) == "UInt16"  # standard log: types from the built-in schema
    assert epoch.attrs["log_type"] == "conn"  # from the file name: this JSON has no _path


def test_read_arrow_schema_carries_zeek_types(shared_data: Path) -> None:
    table = zeek.read_arrow(shared_data / "multi/zat-samples/tsv/files.log")
    assert table.schema.field("ts").type == pa.timestamp("ns", tz="UTC")
    assert zeek.zeek_type_of(table.schema.field("tx_hosts")) == "table[addr]"
    assert table.schema.field("tx_hosts").type == pa.list_(pa.large_string())
    assert table.schema.metadata[b"zeek_path"] == b"files"
    assert table.schema.metadata[b"skipped_rows"] == b"0"


def test_iter_batches_matches_read_arrow(shared_data: Path) -> None:
    path = shared_data / "multi/wrccdc-2018/zeek-tsv/dns.log.gz"
    whole = zeek.read_arrow(path)
    batches = list(zeek.iter_batches(path, batch_rows=10_000))
    assert [b.num_rows for b in batches[:5]] == [10_000] * 5
    assert all(b.num_rows <= 10_000 for b in batches)
    assert sum(b.num_rows for b in batches) == whole.num_rows == 53615
    joined = pa.Table.from_batches(batches)
    assert joined.schema.remove_metadata() == whole.schema.remove_metadata()
    assert joined.equals(whole.replace_schema_metadata(joined.schema.metadata))


def test_iter_batches_bounded_memory_chunking(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With tiny chunks the reader still cuts rows correctly: no chunk ever holds the whole file."""
    monkeypatch.setattr(_zeek_io, "CHUNK_BYTES", 4096)
    path = shared_data / "labelled/stratosphere-sdt/008-ctu-normal-40-day1/conn.log.labeled"
    sizes = []
    source = zeek._Source(path, "raise")
    for buf, n in source.chunks():
        sizes.append(n)
    assert max(sizes) <= 4096 and len(sizes) > 100
    rows = sum(b.num_rows for b in zeek.iter_batches(path, batch_rows=500))
    assert rows == 5663
    monkeypatch.undo()
    small = zeek.read_arrow(path)
    monkeypatch.setattr(_zeek_io, "CHUNK_BYTES", 4096)
    assert zeek.read_arrow(path).equals(small)


def test_log_type(shared_data: Path) -> None:
    assert zeek.log_type(shared_data / "multi/zat-samples/tsv/tor_ssl.log") == "ssl"  # #path wins
    assert zeek.log_type(shared_data / "multi/wrccdc-2018/zeek-json/dns.json.gz") == "dns"  # _path
    assert zeek.log_type(shared_data / "multi/zat-samples/json/x509.log") == "x509"  # file name
    assert zeek.log_type(shared_data / "labelled/stratosphere-sdt/001-njrat-ctu-botnet-230-1/labeled-conn.log") == "conn"
    assert zeek.log_type(zeek.read_arrow(shared_data / "edge/zeekcut-one-column.log")) == "onecolumn"


def test_errors_argument_is_checked(shared_data: Path) -> None:
    with pytest.raises(ValueError, match="errors"):
        zeek.read_log(shared_data / "edge/zeekcut-one-column.log", errors="ignore")


def test_missing_file_is_a_parse_error(tmp_path: Path) -> None:
    with pytest.raises(ZeekParseError, match="cannot open"):
        zeek.read_log(tmp_path / "nope.log")


@pytest.mark.parametrize("compress", [False, True])
def test_a_file_without_line_breaks_fails_before_being_read_whole(
        shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compress: bool) -> None:
    """A real log with its line breaks removed: the reader stops at MAX_LINE_BYTES, not at EOF."""
    import gzip

    body = (shared_data / "labelled/stratosphere-sdt/008-ctu-normal-40-day1/conn.log.labeled").read_bytes()
    flat = body.replace(b"\n", b" ")
    path = tmp_path / ("flat.log.gz" if compress else "flat.log")
    path.write_bytes(gzip.compress(flat) if compress else flat)
    monkeypatch.setattr(_zeek_io, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(_zeek_io, "MAX_LINE_BYTES", 64 << 10)
    read = []
    real_chunks = _zeek_io.Source.chunks

    def counting(self):  # how far the reader got before it gave up
        for buf, n in real_chunks(self):
            read.append(n)
            yield buf, n

    monkeypatch.setattr(_zeek_io.Source, "chunks", counting)
    with pytest.raises(ZeekParseError, match=r"no line break in 65,536 bytes from byte 0") as info:
        zeek.read_log(path)
    assert str(path) in str(info.value) and len(flat) > 10 * (64 << 10) and read == []


def test_json_raw_bytes_that_are_not_utf8_and_crlf(shared_data: Path, tmp_path: Path) -> None:
    """Real WRCCDC dns JSON with CRLF line ends and one query's text given a raw 0xff byte (Zeek would
    have escaped it; other JSON writers do not): the value comes back as ``\\xff`` text, as in TSV."""
    import gzip

    lines = gzip.decompress((shared_data / "multi/wrccdc-2018/zeek-json/dns.json.gz").read_bytes()).splitlines()[:50]
    expected = zeek.read_log(_write(tmp_path / "dns.json", b"\n".join(lines) + b"\n"))
    row = next(i for i, line in enumerate(lines) if b'"query":"' in line)
    query = expected["query"].iloc[row]
    lines[row] = lines[row].replace(f'"query":"{query}"'.encode(), f'"query":"\xff{query}"'.encode("latin-1"))
    df = zeek.read_log(_write(tmp_path / "dns-crlf.json", b"\r\n".join(lines) + b"\r\n"))
    assert len(df) == len(expected) == 50
    assert df["query"].iloc[row] == "\\xff" + query
    pd.testing.assert_frame_equal(df.drop(index=row), expected.drop(index=row))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
