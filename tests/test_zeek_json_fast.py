"""The vectorised JSON path gives exactly what the line-by-line path gives: tables, frames, batches,
warnings and errors (file, line, field, value).

Every JSON log in the shared corpus is read both ways (``_zeek_json.FAST`` switches the vectorised
path off), and so are files built from real rows with the awkward cases: nulls, ISO and epoch ``ts``,
pre-1970 times, raw bytes that are not UTF-8, CRLF, ``#`` comments and blank lines, escapes, fields the
built-in schema does not know (null for the first rows, then ints, then floats, lists that start empty),
and malformed rows. ``FAST_MIN_ROWS`` is lowered so that small batches take the vectorised path too,
and ``PIECE_BYTES`` so that a batch is cut into several pieces parsed by several threads.
"""
from __future__ import annotations

import gzip
import json
import logging
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from watchtower_lib import _zeek_json, _zeek_json_fast, zeek
from watchtower_lib.errors import ZeekParseError

DNS = "multi/wrccdc-2018/zeek-json/dns.json.gz"  # ISO-8601 ts, lists, the built-in dns schema
CONN = "scenarios/stratosphere-sdt/002-nmap-port-scanning/conn.log"  # epoch ts, the built-in conn schema
STATS = "multi/zat-samples/json/stats.log"


def _json_files(root: Path) -> list[Path]:
    """Every file in the corpus whose first data line is a JSON object (content, not name)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        head = path.read_bytes()[:1 << 16]
        if head[:2] == b"\x1f\x8b":  # the head only (one edge file is a truncated gzip)
            head = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(path.read_bytes()[:1 << 16], 1 << 16)
        for line in head.splitlines():
            line = line.strip()
            if line and not line.startswith(b"#"):
                if line.startswith(b"{"):
                    found.append(path)
                break
    return found


def _lines(shared: Path, name: str, n: int | None = None) -> list[bytes]:
    data = (shared / name).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.splitlines()[:n]


def _outcome(read: Callable[[], Any]) -> tuple[str, Any, list[str]]:
    """("ok", result, warnings) or ("error", (message, path, line, field, value, expected), warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result: Any = read()
        except ZeekParseError as exc:
            return "error", (str(exc), exc.path, exc.line, exc.field, exc.value, exc.expected), []
    return "ok", result, [f"{w.category.__name__}: {w.message}" for w in caught]


def _both(monkeypatch: pytest.MonkeyPatch, read: Callable[[], Any]) -> tuple[Any, Any]:
    monkeypatch.setattr(_zeek_json, "FAST", True)
    fast = _outcome(read)
    monkeypatch.setattr(_zeek_json, "FAST", False)
    slow = _outcome(read)
    monkeypatch.setattr(_zeek_json, "FAST", True)
    return fast, slow


def _same_table(a: pa.Table | pa.RecordBatch, b: pa.Table | pa.RecordBatch) -> None:
    assert a.schema.equals(b.schema, check_metadata=True), f"{a.schema}\n!=\n{b.schema}"
    assert a.num_rows == b.num_rows
    # repr tells nan from nan-with-sign, -0.0 from 0.0; equals() would call nan != nan
    for name in a.schema.names:
        assert repr(a[name].to_pylist()) == repr(b[name].to_pylist()), name


def assert_same_everywhere(monkeypatch: pytest.MonkeyPatch, path: Path,
                           batch_sizes: tuple[int, ...] = (1, 7, 300), modes: tuple[str, ...] = ("raise", "skip"),
                           arrow: bool = True) -> None:
    """read_log, read_arrow and iter_batches, with errors raise and skip, agree across the two paths."""
    for errors in modes:
        fast, slow = _both(monkeypatch, lambda: zeek.read_log(path, errors=errors))
        assert fast[0] == slow[0] and fast[2] == slow[2], (fast, slow)
        if fast[0] == "error":
            assert fast[1] == slow[1]
            continue
        pd.testing.assert_frame_equal(fast[1], slow[1], check_exact=True)
        assert fast[1].attrs == slow[1].attrs
        if arrow:
            fast, slow = _both(monkeypatch, lambda: zeek.read_arrow(path, errors=errors))
            assert fast[0] == slow[0] == "ok" and fast[2] == slow[2]
            _same_table(fast[1], slow[1])
        for rows in batch_sizes:
            fast, slow = _both(monkeypatch, lambda: list(zeek.iter_batches(path, batch_rows=rows, errors=errors)))
            assert fast[0] == slow[0] and fast[2] == slow[2], (rows, fast[1], slow[1])
            if fast[0] == "error":
                assert fast[1] == slow[1]
                continue
            assert len(fast[1]) == len(slow[1]), rows
            for a, b in zip(fast[1], slow[1]):
                _same_table(a, b)


@pytest.fixture()
def small_batches_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let batches of any size, and pieces of a few kB, take the vectorised path."""
    monkeypatch.setattr(_zeek_json, "FAST_MIN_ROWS", 1)
    monkeypatch.setattr(_zeek_json_fast, "PIECE_BYTES", 4096)
    monkeypatch.setattr(_zeek_json_fast, "MAX_PIECES", 4)


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "line-by-line path for lines" in r.getMessage()]


# ------------------------------------------------------------------ the corpus
@pytest.mark.slow
def test_every_shared_json_file_reads_the_same_both_ways(shared_data: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    files = _json_files(shared_data)
    assert len(files) >= 50 and shared_data / DNS in files and shared_data / CONN in files
    caplog.set_level(logging.DEBUG, logger="watchtower_lib._zeek_json")
    for path in files:  # valid files: errors="skip" changes nothing, and read_log reads as read_arrow does
        assert_same_everywhere(monkeypatch, path, batch_sizes=(10_000,), modes=("raise",), arrow=False)
    assert _refusals(caplog) == []  # every real file went the vectorised way, every batch


def test_the_corpus_in_small_batches_and_pieces(shared_data: Path, monkeypatch: pytest.MonkeyPatch,
                                                small_batches_fast: None, tmp_path: Path) -> None:
    conn = _write(tmp_path / "conn.json", _lines(shared_data, CONN, 500))
    for path in [conn] + [shared_data / name for name in (
            STATS, "multi/zat-samples/json/files.log", "multi/zat-samples/json/x509.log",
            "edge/zeek-baseline-canonified/json-invalid-utf8-escapes.json.log",
            "edge/zeek-baseline-canonified/json-iso8601-timestamps-incl-pre-1970.json.log",
            "edge/zeek-baseline-canonified/json-null-field.json.log")]:
        assert_same_everywhere(monkeypatch, path, batch_sizes=(1, 3, 100), modes=("raise",))


@pytest.mark.slow
def test_the_real_dns_log_in_pieces(shared_data: Path, monkeypatch: pytest.MonkeyPatch,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """53,615 rows in one batch cut into 4 pieces parsed by 4 threads, and in batches of 10,000."""
    caplog.set_level(logging.DEBUG, logger="watchtower_lib._zeek_json")
    whole = zeek.read_arrow(shared_data / DNS)  # one piece per CPU; the corpus test compares it with the slow path
    batches = list(zeek.iter_batches(shared_data / DNS, batch_rows=10_000))
    monkeypatch.setattr(_zeek_json_fast, "PIECE_BYTES", 1 << 20)
    monkeypatch.setattr(_zeek_json_fast, "MAX_PIECES", 4)
    _same_table(zeek.read_arrow(shared_data / DNS), whole)
    assert whole.num_rows == 53_615
    in_pieces = list(zeek.iter_batches(shared_data / DNS, batch_rows=10_000))
    assert [b.num_rows for b in in_pieces] == [b.num_rows for b in batches] == [10_000] * 5 + [3_615]
    for a, b in zip(in_pieces, batches):
        _same_table(a, b)
    assert _refusals(caplog) == []


# ------------------------------------------------------------------ awkward but valid files
def _dump(rows: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode() for r in rows]


def _write(path: Path, lines: list[bytes], eol: bytes = b"\n") -> Path:
    path.write_bytes(eol.join(lines) + eol)
    return path


@pytest.fixture()
def dns_rows(shared_data: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _lines(shared_data, DNS, 400)]


@pytest.fixture()
def conn_rows(shared_data: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _lines(shared_data, CONN, 400)]


def test_nulls_iso_epoch_and_pre_1970_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_batches_fast: None,
                                            dns_rows: list[dict[str, Any]], conn_rows: list[dict[str, Any]],
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="watchtower_lib._zeek_json")
    dns = [dict(r) for r in dns_rows]
    early = ["1969-12-31T23:59:59.500000Z", "1969-12-31T23:59:58.400000Z", "1900-02-28T12:00:00.000001Z",
             "1986-12-01T01:01:01.900000Z", "1969-12-31 23:59:59", "1970-01-01T00:00:00+01:00",
             "2018-03-24T17:15:20.123456789Z"]
    for i, r in enumerate(dns):
        if i % 7 == 0:
            r["_write_ts"] = early[(i // 7) % len(early)]  # other ISO forms go through datetime
        if i % 5 == 0:
            r["rcode"] = None  # an explicit null
        if i % 9 == 0:
            r.pop("answers", None), r.pop("TTLs", None)  # an absent field
        if i % 11 == 0:
            r["query"] = r["query"] + "\\x41\\xff"  # Zeek's escape of a byte it cannot print
    assert_same_everywhere(monkeypatch, _write(tmp_path / "dns.json", _dump(dns)))
    conn = [dict(r) for r in conn_rows]
    for i, r in enumerate(conn):
        if i % 6 == 0:
            r["duration"] = None
        if i % 13 == 0:
            r["ts"] = round(r["ts"] - 1.7e9, 6)  # before 1970, as an epoch number
    conn[3]["ts"] = int(conn[3]["ts"])  # an integral epoch written as an integer
    assert_same_everywhere(monkeypatch, _write(tmp_path / "conn.json", _dump(conn)))
    assert _refusals(caplog) == []  # none of this needs the line-by-line path


def test_crlf_comments_blank_lines_and_bytes_that_are_not_utf8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               small_batches_fast: None,
                                                               dns_rows: list[dict[str, Any]]) -> None:
    lines = _dump(dns_rows[:200])
    with_comments = [b"#separator none, a comment first"] + lines[:50] + [b"# a comment", b"", b"   "] + lines[50:]
    assert_same_everywhere(monkeypatch, _write(tmp_path / "dns-comments.json", with_comments))
    assert_same_everywhere(monkeypatch, _write(tmp_path / "dns-crlf.json", with_comments, b"\r\n"))
    raw = list(lines)
    raw[20] = raw[20].replace(b'"query":"', b'"query":"\xff\xc3(')  # raw bytes, as a non-Zeek writer may leave
    raw[40] = raw[40].replace(b'"query":"', b'"query":"\xc3\xa9\xf0\x9f\x9a\x80')  # valid UTF-8
    assert_same_everywhere(monkeypatch, _write(tmp_path / "dns-bytes.json", raw, b"\r\n"))
    fast, _ = _both(monkeypatch, lambda: zeek.read_log(tmp_path / "dns-bytes.json"))
    assert fast[1]["query"].iloc[20].startswith("\\xff\\xc3(")


def test_fields_the_schema_does_not_know(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_batches_fast: None,
                                         dns_rows: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    """Inferred columns take their values from the same rows' real fields, as in test_zeek_json_types."""
    caplog.set_level(logging.DEBUG, logger="watchtower_lib._zeek_json")
    rows = [dict(r) for r in dns_rows]
    for i, r in enumerate(rows):
        r["wt_late"] = None if i < 150 else r["trans_id"]  # null for the first rows, then ints
        r["wt_widens"] = r["id.orig_p"] if i < 120 else r.get("rtt")  # ints, then the real float rtt
        r["wt_list"] = [] if i < 130 else r.get("TTLs", [])  # empty lists, then the real TTLs
        r["wt_text"] = r["uid"] if i % 3 else None
        r["wt_time"] = r["ts"] if i > 10 else None  # ISO text -> inferred time
        r["wt_flag"] = r["AA"]
        if i == 5:
            r["wt_never"] = None
    path = _write(tmp_path / "dns-extra.json", _dump(rows))
    assert_same_everywhere(monkeypatch, path, batch_sizes=(1, 7, 64, 100, 1000))
    df = zeek.read_log(path)
    assert df.attrs["zeek_types"]["wt_widens"] == "double" and df.attrs["zeek_types"]["wt_time"] == "time"
    assert df.attrs["zeek_types"]["wt_list"] == "vector[double]"
    unknown = [dict(r, **{"wt_a": i, "wt_b": [None, None] if i < 3 else [i]}) for i, r in enumerate(rows[:40])]
    path = _write(tmp_path / "unknown.json", _dump([{k: v for k, v in r.items() if k != "_path"} for r in unknown]))
    assert_same_everywhere(monkeypatch, path, batch_sizes=(1, 2, 5))  # no _path, no schema: all inferred


# ------------------------------------------------------------------ malformed files
def _malformed(rows: list[dict[str, Any]]) -> dict[str, list[bytes]]:
    good = _dump(rows[:120])

    def edit(i: int, change: Callable[[dict[str, Any]], None]) -> list[bytes]:
        out = list(good)
        row = dict(rows[i])
        change(row)
        out[i] = _dump([row])[0]
        return out

    later = [dict(r, wt_x=(r["trans_id"] if i < 80 else r["query"])) for i, r in enumerate(rows[:120])]
    big = [dict(r, wt_big=(2**53 + 1 if i < 60 else 0.5)) for i, r in enumerate(rows[:120])]
    return {
        "broken line": good[:30] + [good[30][:-9]] + good[31:],
        "two objects on a line": good[:30] + [good[30] + good[31]] + good[32:],
        "a line that is null": good[:30] + [b"null"] + good[30:],
        "a line that is a list": good[:1] + [b"[1, 2]"] + good[1:],
        "text in a count column": edit(50, lambda r: r.update(trans_id="x")),
        "a port out of range": edit(50, lambda r: r.update({"id.orig_p": 70000})),
        "a float in an int column": edit(50, lambda r: r.update(qtype=1.5)),
        "a 30 February": edit(50, lambda r: r.update(ts="2018-02-30T00:00:00.000000Z")),
        "a number as text in a time column": edit(50, lambda r: r.update(ts="1521911720.5")),
        "a list in a string column": edit(50, lambda r: r.update(query=["a"])),
        "an object in a string column": edit(50, lambda r: r.update(query={"a": 1})),
        "a duplicate key": good[:50] + [good[50].replace(b"{", b'{"trans_id":1,', 1)] + good[51:],
        "Infinity": edit(50, lambda r: r.update(rtt=float("inf"))),
        "text after integers in an inferred column": _dump(later),
        "an integer beyond 2**53 then a float": _dump(big),
    }


ERRORS = ["broken line", "two objects on a line", "a line that is null", "a line that is a list",
          "text in a count column", "a port out of range", "a float in an int column", "a 30 February",
          "a number as text in a time column", "Infinity", "text after integers in an inferred column",
          "an integer beyond 2**53 then a float"]
REFUSED = ["a list in a string column", "an object in a string column", "a duplicate key"]


@pytest.mark.parametrize("case", REFUSED)
def test_values_only_the_line_by_line_path_reads(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 small_batches_fast: None, dns_rows: list[dict[str, Any]],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """JSON text of a list or object in a string column, a key given twice (json keeps the last):
    the vectorised path refuses the batch, the line-by-line path reads it."""
    caplog.set_level(logging.DEBUG, logger="watchtower_lib._zeek_json")
    path = _write(tmp_path / "dns.json", _malformed(dns_rows)[case])
    assert_same_everywhere(monkeypatch, path, batch_sizes=(16, 1000), modes=("raise",))
    assert _refusals(caplog)


@pytest.mark.parametrize("case", ERRORS)
def test_malformed_files_fail_or_skip_the_same_way(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   small_batches_fast: None, dns_rows: list[dict[str, Any]]) -> None:
    lines = _malformed(dns_rows)[case]
    path = _write(tmp_path / "dns.json", lines)
    monkeypatch.setattr(_zeek_json, "FAST", False)
    slow = _outcome(lambda: zeek.read_arrow(path))
    assert slow[0] == "error" and slow[1][2] is not None  # the line is named
    assert_same_everywhere(monkeypatch, path, batch_sizes=(1, 16, 1000))
    assert_same_everywhere(monkeypatch, _write(tmp_path / "dns-crlf.json", [b"# c"] + lines, b"\r\n"),
                           batch_sizes=(1000,), arrow=False)


@pytest.mark.slow
def test_bad_lines_in_default_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_data: Path) -> None:
    """The default batch size (65,536 rows for read_arrow): the vectorised path refuses the batches
    holding bad lines and the line-by-line path names the first; with skip, the same rows are dropped."""
    lines = _lines(shared_data, CONN)
    tiled = (lines * 16)[:70_000]
    row = json.loads(tiled[68_000])
    row["id.resp_p"] = "x"
    tiled[68_000] = _dump([row])[0]  # a value that is not a port, in the second batch
    tiled[1000] = tiled[1000][:40]  # a broken line in the first
    path = _write(tmp_path / "conn.json", tiled)
    fast, slow = _both(monkeypatch, lambda: zeek.read_arrow(path))
    assert fast == slow and fast[1][2] == 1001
    fast, slow = _both(monkeypatch, lambda: zeek.read_log(path, errors="skip"))
    pd.testing.assert_frame_equal(fast[1], slow[1], check_exact=True)
    assert fast[2] == slow[2] and fast[1].attrs["skipped_rows"] == 2 and len(fast[1]) == 69_998
    fast, slow = _both(monkeypatch, lambda: list(zeek.iter_batches(path, batch_rows=30_000, errors="skip")))
    assert [b.num_rows for b in fast[1]] == [b.num_rows for b in slow[1]] == [30_000, 30_000, 9_998]
    assert fast[2] == slow[2]


def test_iter_batches_memory_stays_bounded(tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 1 MB chunks, reading a 16 MB file batch by batch holds about a chunk and a batch, not the
    file (Python-side allocations, as tracemalloc sees them; Arrow's own pool is per batch)."""
    import tracemalloc

    from watchtower_lib import _zeek_io

    monkeypatch.setattr(_zeek_io, "CHUNK_BYTES", 1 << 20)
    path = _write(tmp_path / "conn.json", (_lines(shared_data, CONN) * 12)[:50_000])
    assert path.stat().st_size > 15 << 20
    tracemalloc.start()
    try:
        rows = sum(b.num_rows for b in zeek.iter_batches(path, batch_rows=2_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows == 50_000
    assert peak < 8 << 20, peak


def _rows_in(path: str) -> int:
    return zeek.read_arrow(path).num_rows


def test_a_forked_child_parses_in_its_own_threads(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parse threads are per process: a child forked after a read (multiprocessing's default on
    Linux) would otherwise wait for threads it does not have."""
    import multiprocessing

    monkeypatch.setattr(_zeek_json_fast, "PIECE_BYTES", 1 << 20)  # several pieces: the thread pool runs
    path = str(shared_data / DNS)
    assert _rows_in(path) == 53_615  # the parent's pool exists now
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.map_async(_rows_in, [path]).get(timeout=120) == [53_615]
