"""Property tests for the Zeek reader (hypothesis).

1. Whatever bytes come in (random, or real logs mutated), the reader either returns
   a table or raises ZeekParseError: no other exception escapes.
2. Values written with Zeek's TSV escaping rules come back exactly.
"""
from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watchtower_lib import zeek
from watchtower_lib.errors import ZeekParseError

SEEDS = [  # small real logs (and derived fixtures) to mutate
    "edge/zeekcut-conn-bro2x-no-local_resp.log",
    "edge/zeek-baseline-canonified/all-types-set-vector-subnet-func.log",
    "edge/zeek-baseline-canonified/escaped-binary-bytes.log",
    "edge/zeek-baseline-2019/double-pipe-separator-with-escaped-separator.log",
    "edge/zeek-baseline-2019/smtp-set-string-with-commas-quotes.log",
    "edge/zeek-baseline-canonified/json-iso8601-timestamps-incl-pre-1970.json.log",
    "multi/zat-samples/json/dns.log",
    "edge/zeekcut-conn-comma-separator.log",
]
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def read_all_ways(path: Path) -> None:
    """read_log and iter_batches, both error modes; only ZeekParseError may escape."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zeek.ZeekDataWarning)
        for errors in ("raise", "skip"):
            try:
                df = zeek.read_log(path, errors=errors)
                assert df.attrs["skipped_rows"] >= 0
            except ZeekParseError as exc:
                assert exc.path == str(path)
            try:
                for batch in zeek.iter_batches(path, batch_rows=7, errors=errors):
                    assert batch.num_rows <= 7
            except ZeekParseError:
                pass


@SETTINGS
@given(data=st.binary(max_size=2000))
def test_random_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "random.log"
    path.write_bytes(data)
    read_all_ways(path)


@SETTINGS
@given(data=st.binary(max_size=600), prefix=st.sampled_from([b"#fields\ta\tb\n#types\tcount\tstring\n",
                                                              b"#separator \\x09\n#fields\tx\n", b"{", b"\x1f\x8b"]))
def test_random_bytes_after_a_plausible_start(tmp_path: Path, data: bytes, prefix: bytes) -> None:
    path = tmp_path / "plausible.log"
    path.write_bytes(prefix + data)
    read_all_ways(path)


MUTATIONS = st.lists(
    st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate", "dupline", "hashline", "tab"]),
              st.integers(min_value=0, max_value=10**6), st.binary(min_size=1, max_size=8)),
    min_size=1, max_size=6)


def mutate(raw: bytes, ops: list[tuple[str, int, bytes]]) -> bytes:
    data = bytearray(raw)
    for op, pos, blob in ops:
        i = pos % (len(data) + 1)
        if op == "flip" and data:
            data[i % len(data)] ^= blob[0] or 1
        elif op == "insert":
            data[i:i] = blob
        elif op == "delete":
            del data[i:i + len(blob)]
        elif op == "truncate":
            del data[i:]
        elif op == "dupline":
            lines = bytes(data).split(b"\n")
            k = pos % len(lines)
            lines.insert(k, lines[k])
            data = bytearray(b"\n".join(lines))
        elif op == "hashline":
            data[i:i] = b"\n#" + blob + b"\n"
        elif op == "tab":
            data[i:i] = b"\t"
    return bytes(data)


@SETTINGS
@given(seed=st.sampled_from(SEEDS), ops=MUTATIONS, compress=st.booleans())
def test_mutated_real_logs(shared_data: Path, tmp_path: Path, seed: str, ops: list, compress: bool) -> None:
    data = mutate((shared_data / seed).read_bytes(), ops)
    path = tmp_path / "mutated.log"
    path.write_bytes(gzip.compress(data) if compress else data)
    read_all_ways(path)


@SETTINGS
@given(ops=MUTATIONS, cut=st.integers(min_value=1, max_value=5000))
def test_mutated_and_truncated_gzip(shared_data: Path, tmp_path: Path, ops: list, cut: int) -> None:
    raw = (shared_data / "edge/zat-http-gzip-valid.log.gz").read_bytes()
    path = tmp_path / "broken.log.gz"
    path.write_bytes(mutate(raw[: max(2, len(raw) - cut)], ops[:1]))
    read_all_ways(path)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8)


@SETTINGS
@given(rows=st.lists(st.dictionaries(st.sampled_from(["ts", "uid", "id.orig_p", "_path", "x", "query", "TTLs"]),
                                     JSON_VALUES, max_size=5), min_size=1, max_size=8))
def test_json_lines_of_any_shape(tmp_path: Path, rows: list[dict]) -> None:
    path = tmp_path / "dns.log"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    read_all_ways(path)


# ------------------------------------------------------------------ round trip
PRINTABLE_OR_NOT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


def zeek_escape(value: str, sep: str, set_sep: str | None) -> str:
    r"""Zeek's TSV escaping: backslash doubled, control bytes / separators as \xNN."""
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or ch == sep or (set_sep is not None and ch == set_sep):
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    text = "".join(out)
    if len(sep) > 1:
        # Zeek escapes only whole occurrences of a multi-character separator, so a value
        # ending in "|" before "||" is ambiguous in real logs too; escape each character.
        for c in set(sep):
            text = text.replace(c, f"\\x{ord(c):02x}")
    if value == "-":
        return "\\x2d"
    if value == "(empty)":
        return "\\x28empty)"
    return text


def zeek_value(value: object, kind: str, sep: str, set_sep: str) -> str:
    if value is None:
        return "-"
    if kind == "string":
        text = zeek_escape(str(value), sep, None)
        return "(empty)" if text == "" else text
    if kind == "set[string]":
        assert isinstance(value, list)
        return set_sep.join(zeek_escape(v, sep, set_sep) for v in value) if value else "(empty)"
    if kind == "count":
        return str(value)
    if kind == "double":
        return repr(float(value))  # type: ignore[arg-type]
    if kind == "bool":
        return "T" if value else "F"
    raise AssertionError(kind)


ROW = st.fixed_dictionaries({
    "s": st.none() | PRINTABLE_OR_NOT,
    "ss": st.none() | st.lists(PRINTABLE_OR_NOT.filter(lambda v: v not in ("", "-")), min_size=1, max_size=4),
    "c": st.none() | st.integers(min_value=0, max_value=2**64 - 1),
    "d": st.none() | st.floats(allow_nan=False, width=64),
    "b": st.none() | st.booleans(),
})
KINDS = {"s": "string", "ss": "set[string]", "c": "count", "d": "double", "b": "bool"}


@SETTINGS
@given(rows=st.lists(ROW, min_size=1, max_size=20), sep=st.sampled_from(["\t", ",", "||", "\x00"]),
       crlf=st.booleans())
def test_values_round_trip(tmp_path: Path, rows: list[dict], sep: str, crlf: bool) -> None:
    sep_header = "".join(f"\\x{ord(c):02x}" for c in sep)
    set_sep = ";" if sep == "," else ","  # one comma for both would be ambiguous (Zeek's too)
    lines = [f"#separator {sep_header}", f"#set_separator{sep}{set_sep}", f"#empty_field{sep}(empty)",
             f"#unset_field{sep}-", f"#path{sep}roundtrip", f"#fields{sep}" + sep.join(KINDS),
             f"#types{sep}" + sep.join(KINDS.values())]
    for row in rows:
        fields = [zeek_value(row[k], kind, sep, set_sep) for k, kind in KINDS.items()]
        line = sep.join(fields)
        lines.append("\\x23" + line[1:] if line.startswith("#") else line)
    path = tmp_path / "roundtrip.log"
    path.write_bytes(("\r\n" if crlf else "\n").join(lines).encode("utf-8") + b"\n")
    df = zeek.read_log(path)
    assert len(df) == len(rows)
    for k in KINDS:
        got = [None if v is None or v is pd.NA else v for v in df[k].tolist()]
        want = [row[k] for row in rows]
        if k == "d":
            want = [None if w is None else float(w) for w in want]
        assert got == want, k


# ------------------------------------------------------- JSON batching does not change values
EXTRA_VALUES = st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64) | st.floats() \
    | st.sampled_from(["text", "2018-03-24T17:15:20.865716Z", ""]) \
    | st.lists(st.none() | st.integers(min_value=-5, max_value=5) | st.floats(width=32) | st.just("a"), max_size=3)


def _outcome(read: Any) -> tuple[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zeek.ZeekDataWarning)
        try:
            table = read()
        except ZeekParseError as exc:
            return "error", (exc.line, exc.field, exc.value, exc.expected)
    return "rows", (table.schema.remove_metadata(), table.to_pylist())


@SETTINGS
@given(extra=st.lists(EXTRA_VALUES, min_size=1, max_size=9), errors=st.sampled_from(["raise", "skip"]))
def test_json_batching_does_not_change_inferred_values(shared_data: Path, tmp_path: Path, extra: list,
                                                       errors: str) -> None:
    """Real zat dns JSON rows with one extra field of random values: read_arrow and the concatenated
    iter_batches (1 and 3 rows a batch) give the same table, or the same error (line, field, value)."""
    lines = (shared_data / "multi/zat-samples/json/dns.log").read_text().splitlines()[: len(extra)]
    rows = [dict(json.loads(line), wt_extra=value) for line, value in zip(lines, extra)]
    path = tmp_path / "dns.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    whole = _outcome(lambda: zeek.read_arrow(path, errors=errors))
    for batch_rows in (1, 3):
        def joined(n: int = batch_rows) -> pa.Table:
            tables = [pa.Table.from_batches([b]) for b in zeek.iter_batches(path, batch_rows=n, errors=errors)]
            return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
        assert _outcome(joined) == whole, batch_rows
