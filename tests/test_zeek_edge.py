"""Exact values from the tricky files of the edge corpus (and the derived fixtures in
tests/data/zeek/): escapes, sets, vectors, separators, blocks, doubles, times, gzip."""
from __future__ import annotations

import gzip
import math
import warnings
from pathlib import Path

import pandas as pd
import pytest

from watchtower_lib import zeek
from watchtower_lib.errors import ZeekParseError, ZeekSchemaConflict

FIXTURES = Path(__file__).parent / "data" / "zeek"


@pytest.fixture(scope="module")
def edge(shared_data: Path) -> Path:
    return shared_data / "edge"


def col(path: Path, name: str, **kw: str) -> list:
    return zeek.read_log(path, **kw)[name].tolist()


# ------------------------------------------------------------------ escapes
def test_binary_escapes_and_invalid_utf8(edge: Path) -> None:
    values = col(edge / "zeek-baseline-canonified/escaped-binary-bytes.log", "s")
    assert values == [
        "AB\x00CD\x00",
        "AB\\xffCD\x00",  # byte 0xff is not UTF-8: comes back as \xff text
        "AB\\xffCD\x00",  # a literal backslash (written \\) followed by "xff"
        " ",
        "abc\\x00def",
        " ",
        "abc\x00def",
        " ",
        "foo \u00ae bar \\xc2\\xae baz",  # \xc2\xae is valid UTF-8 (®); the \\-escaped one is text
        "foo\x00bar\\0baz",
        "foo \x0e bar ^N baz",
    ]


def test_unset_dash_vs_escaped_dash_vs_empty(edge: Path) -> None:
    df = zeek.read_log(edge / "zeek-baseline-canonified/escaped-unset-dash-vs-literal.log")
    assert df["x"].iloc[0] == "-"  # \x2d
    assert df["y"].isna().iloc[0]  # -
    assert df["z"].iloc[0] == ""  # (empty)


def test_set_separator_escaped_inside_elements(edge: Path) -> None:
    assert col(edge / "zeek-baseline-canonified/escaped-set-separator-in-set.log", "ss") == [[",", "CC", ",,", "AA"]]


def test_escaped_empty_marker_is_a_value(edge: Path) -> None:
    assert col(edge / "zeek-baseline-canonified/escaped-empty-field-marker.log", "ss") == [["EMPTY"]]


def test_vector_with_unset_elements(edge: Path) -> None:
    assert col(edge / "zeek-baseline-canonified/vector-with-unset-elements.log", "vec") == [[None, "2", None, None, "5"]]


def test_row_starting_with_escaped_hash_is_data(edge: Path) -> None:
    df = zeek.read_log(edge / "zeek-baseline-canonified/data-row-starting-with-hash-escaped.log")
    assert df["data"].tolist() == ["Test1", "#Kaputt", "Test2"]
    assert df["c"].tolist() == [42, 42, 42]


def test_raw_utf8_and_escaped_bytes(edge: Path) -> None:
    assert col(edge / "zeek-baseline-canonified/utf8-raw-non-ascii.log", "s") == [
        "foo \u00ae bar", "\u0926\u0941\u0928\u093f\u092f\u093e \u0915\u094b \u0928\u092e\u0938\u094d\u0924\u0947",
        "hello \U0002070e"]
    uri = col(edge / "zeek-baseline-2019/http-uri-with-spaces-and-xfc-byte.log", "uri")[0]
    assert uri.startswith("/~cect/teoreetilised seminarid_2010/arheoloogia_uurimisr\\xfchma_seminar/Joyce et al")
    assert col(edge / "zeek-baseline-2019/syslog-escaped-nul.log", "message") == ["Apr  5 12:56:51 robin: Hello, syslog!\x00"]
    dhcp = zeek.read_log(edge / "zeek-baseline-2019/dhcp-escaped-control-byte.log")
    assert dhcp["agent_remote_id"].tolist() == ["\x13"]
    assert dhcp["subscriber_id"].tolist() == ["-subID-"]  # contains '-' but is not the unset marker
    assert dhcp["lease_time"].tolist() == [pd.Timedelta(hours=1)]
    assert dhcp["msg_types"].tolist() == [["ACK"]]


def test_all_types_with_a_real_time(edge: Path, tmp_path: Path) -> None:
    """Every Zeek type. The baseline canonified its time to XXXXXXXXXX.XXXXXX; we put one back."""
    raw = (edge / "zeek-baseline-canonified/all-types-set-vector-subnet-func.log").read_bytes()
    path = tmp_path / "all-types.log"
    path.write_bytes(raw.replace(b"XXXXXXXXXX.XXXXXX", b"1329843175.736107"))
    df = zeek.read_log(path)
    row = df.iloc[0]
    assert dict(df.dtypes.astype(str)) == {
        "b": "boolean", "i": "Int64", "e": "string", "c": "UInt64", "p": "UInt16", "sn": "string", "a": "string",
        "d": "Float64", "t": "datetime64[ns, UTC]", "iv": "timedelta64[ns]", "s": "string",
        "sc": "list<item: uint64>[pyarrow]", "ss": "list<item: large_string>[pyarrow]",
        "se": "list<item: large_string>[pyarrow]", "vc": "list<item: uint64>[pyarrow]",
        "ve": "list<item: large_string>[pyarrow]", "f": "string"}
    assert bool(row["b"]) is True and row["i"] == -42 and row["e"] == "SSH::LOG" and row["c"] == 21
    assert row["p"] == 123 and row["sn"] == "10.0.0.0/24" and row["a"] == "1.2.3.4" and row["d"] == 3.14
    assert row["t"] == pd.Timestamp("2012-02-21T16:52:55.736107Z")
    assert row["iv"] == pd.Timedelta(seconds=100) and row["s"] == "hurz"
    assert row["sc"] == [4, 2, 3, 1] and row["ss"] == ["CC", "BB", "AA"] and row["se"] == []  # EMPTY marker
    assert row["vc"] == [10, 20, 30] and row["ve"] == []
    assert row["f"] == ("SSH::foo: function(i:count) : string\n{ \nif (0 < SSH::i) \n\treturn (Foo);\n"
                        "else\n\treturn (Bar);\n\n}")


# ------------------------------------------------------------------ numbers and times
def test_doubles_huge_tiny_inf_nan(edge: Path) -> None:
    s = zeek.read_log(edge / "zeek-baseline-canonified/double-formatting.log")["d"]
    assert str(s.dtype) == "Float64"
    values = s.tolist()
    assert values[:11] == [2153226000.0, 2153226000.1, 2153226000.123457, 1.0, 1.1, 1.123457, -1.123457,
                           1.1234, 0.1234, 50000.0, -50000.0]
    assert values[13] == 1.79e308 and values[14] == -1.79e308
    assert values[11:13] == [3140000000000000.0, -3140000000000000.0]
    assert values[15:21] == [0.000012, 0.0, -0.0, math.inf, -math.inf, 0.0]
    assert math.copysign(1.0, values[17]) == -1.0  # -0.0 keeps its sign
    assert math.isnan(values[21]) and len(values) == 22
    assert not s.isna().any()  # nan is a value, not NA


def test_times_unset_zero_and_custom_unset(edge: Path) -> None:
    k = zeek.read_log(edge / "zeekcut-kerberos-unset-time-fields.log")
    assert pd.isna(k["from"].iloc[0]) and k["till"].iloc[0] == pd.Timestamp(0, tz="UTC")
    assert k["ts"].iloc[0] == pd.Timestamp("2015-04-21T02:34:05.478441Z")
    custom = zeek.read_log(edge / "zeekcut-kerberos-custom-unset-field.log")
    assert custom["error_msg"].isna().all() and pd.isna(custom["from"].iloc[0])
    assert custom["cipher"].iloc[0] == "aes256-cts-hmac-sha1-96"
    assert bool(custom["renewable"].iloc[0]) is False
    zero = zeek.read_log(edge / "zeekcut-zero-time.log")
    assert zero["ts"].iloc[0] == pd.Timestamp(0, tz="UTC")
    two = zeek.read_log(edge / "zeekcut-two-time-columns.log")
    assert (two["ts2"] - two["ts1"]).tolist()[:2] == [pd.Timedelta(seconds=10), pd.Timedelta(microseconds=110890)]
    last = zeek.read_log(edge / "zeekcut-conn-ts-last-column.log")
    assert last.columns[-1] == "ts" and last["ts"].iloc[0] == pd.Timestamp("2012-02-21T16:52:55.736107Z")


def test_invalid_time_values(edge: Path) -> None:
    path = edge / "zeekcut-invalid-time-values-no-separator-header.log"
    with pytest.raises(ZeekParseError) as info:
        zeek.read_log(path)
    err = info.value
    assert (err.line, err.field, err.value, err.expected) == (3, "ts", "hello", "time")
    with pytest.warns(zeek.ZeekDataWarning, match="skipped 3 malformed row"):
        df = zeek.read_log(path, errors="skip")
    # -12345.123456 (before 1970) and 123456789 parse; hello, 20 digits (past 2262) and "" do not
    assert df["test"].tolist() == ["b", "e"]
    assert df["ts"].tolist() == [pd.Timestamp("1969-12-31T20:34:14.876544Z"), pd.Timestamp("1973-11-29T21:33:09Z")]
    assert df.attrs["skipped_rows"] == 3


def test_json_iso_timestamps_before_1970(edge: Path) -> None:
    t = col(edge / "zeek-baseline-canonified/json-iso8601-timestamps-incl-pre-1970.json.log", "t")
    assert t[0] == pd.Timestamp("2008-07-09T16:13:30.005432Z")
    assert t[2:4] == [pd.Timestamp("1969-12-31T23:59:59.6Z"), pd.Timestamp("1969-12-31T23:59:59.5Z")]
    assert t[-1] == pd.Timestamp("1969-12-31T23:58:21Z")


def test_json_null_and_invalid_utf8(edge: Path) -> None:
    df = zeek.read_log(edge / "zeek-baseline-canonified/json-null-field.json.log")
    assert str(df["ts"].dtype) == "datetime64[ns, UTC]" and df["ts"].isna().all()
    assert df["msg"].tolist() == ["Testing 1 2 3 "]
    s = col(edge / "zeek-baseline-canonified/json-invalid-utf8-escapes.json.log", "s")
    assert s[:5] == ["a", "\b\f\n\r\t\x00\x15", "\u00f1", "\\xc3(", "\\xc0\\x81"]


# ------------------------------------------------------------------ containers
def test_sets_vectors_and_bro2x_tables(edge: Path, shared_data: Path) -> None:
    smtp = zeek.read_log(edge / "zeek-baseline-2019/smtp-set-string-with-commas-quotes.log")
    assert smtp["rcptto"].tolist()[1] == ["davis_mark1@outlook.com", "felica4uu@hotmail.com", "ericlim220@yahoo.com"]
    assert smtp["from"].tolist()[0] == '"Gurpartap Singh" <gurpartap@patriots.in>'  # quotes stay
    assert smtp["path"].tolist()[0] == ["74.53.140.153", "10.10.1.4"]  # vector[addr]
    assert smtp["cc"].isna().tolist() == [True, False]
    dns = zeek.read_log(edge / "zeek-baseline-2019/dns-ipv6-txt-vector-fields.log")
    assert dns["TTLs"].tolist()[0] == [pd.Timedelta(seconds=1)]
    assert dns["answers"].tolist()[0][0].startswith("TXT 33 This TXT record should be ignored")
    ext = zeek.read_log(edge / "zeek-baseline-2019/conn-extension-fields-set-count.log")
    assert ext["_innerLogged.d"].tolist()[0] == [2, 4, 1, 3]
    assert ext["_system_name"].isna().all() and ext["_write_ts"].iloc[0] == pd.Timestamp("2011-03-18T19:06:13.475401Z")
    files = zeek.read_log(shared_data / "multi/zat-samples/tsv/files.log")
    assert files.attrs["zeek_types"]["tx_hosts"] == "table[addr]"
    assert all(isinstance(v, list) for v in files["tx_hosts"].dropna())


# ------------------------------------------------------------------ separators and blocks
def test_separators(edge: Path) -> None:
    comma = zeek.read_log(edge / "zeekcut-conn-comma-separator.log")
    assert comma["uid"].iloc[0] == "CNbXUV0IZ29or3MK6" and comma["tunnel_parents"].iloc[0] == []
    assert comma["orig_ip_bytes"].tolist() == [216, 216, 614, 2164, 349]
    pipes = zeek.read_log(edge / "zeek-baseline-2019/double-pipe-separator-with-escaped-separator.log")
    assert pipes["status"].tolist() == ["success", "failure", "fa||ure", "su||ess", "failure"]
    assert pipes["country"].tolist() == ["unknown", "US", "UK", "BR", "MX"]
    tab_variant = zeek.read_log(edge / "zat-conn-separator-directive-tab-variant.log")
    assert tab_variant["history"].tolist() == ["F", "D", "ShADdaFf"]
    assert col(edge / "zeekcut-null-separator.log", "a") == ["hi"]
    assert col(edge / "zeekcut-missing-separator-value.log", "a") == ["hi"]
    assert col(edge / "zeekcut-one-column.log", "id.orig_h") == ["79.26.245.236"]
    v6 = zeek.read_log(edge / "zeekcut-ipv6-addresses.log")
    assert v6["id.resp_h"].iloc[0] == "2001:470:4867:99::21" and v6["id.orig_p"].iloc[0] == 49186


def test_concatenated_blocks(edge: Path) -> None:
    weird = zeek.read_log(edge / "zeek-baseline-2019/weird-8-logs-concatenated-open-close-blocks.log")
    assert len(weird) == 8 and weird["name"].iloc[0] == "truncated_IP"
    assert weird["notice"].tolist() == [False] * 8
    both = zeek.read_log(edge / "zeek-baseline-canonified/concat-two-logs-header-changes-midfile.log")
    assert len(both) == 10 and both.columns[0] == "ts" and both.shape[1] == 20  # union, first-seen order
    assert both["ts"].iloc[0] == both["ts"].iloc[5] == pd.Timestamp("2012-02-21T16:52:55.736107Z")
    assert both.attrs["log_type"] == "conn"
    seps = zeek.read_log(edge / "zeek-baseline-canonified/concat-separator-changes-midfile-tab-then-comma.log")
    assert seps["uid"].tolist()[4:6] == ["CXWv6p3arKYeMETxOg", "CNbXUV0IZ29or3MK6"]
    assert seps["proto"].tolist() == ["tcp"] * 10


def test_union_of_columns_fills_nulls(tmp_path: Path, edge: Path) -> None:
    """A block without a column gives nulls there (two real logs concatenated with cat)."""
    path = tmp_path / "cat.log"
    path.write_bytes((edge / "zeekcut-one-column.log").read_bytes() + (edge / "zeekcut-ipv6-addresses.log").read_bytes())
    df = zeek.read_log(path)
    assert df.columns.tolist() == ["id.orig_h", "ts", "uid", "id.orig_p", "id.resp_h"]
    assert len(df) == 7 and df["ts"].isna().tolist() == [True] + [False] * 6
    assert str(df["id.orig_p"].dtype) == "UInt16"
    batches = list(zeek.iter_batches(path, batch_rows=3))
    assert [b.num_rows for b in batches] == [3, 3, 1]
    assert all(b.schema.names == df.columns.tolist() for b in batches)


def test_type_conflict_between_blocks() -> None:
    with pytest.raises(ZeekSchemaConflict) as info:
        zeek.read_log(FIXTURES / "type-conflict-two-blocks.log")
    assert (info.value.field, info.value.value, info.value.expected) == ("ts2", "string", "time")
    assert isinstance(info.value, ZeekParseError)


def test_crlf_line_endings(edge: Path) -> None:
    crlf = zeek.read_log(FIXTURES / "conn-crlf.log")
    plain = zeek.read_log(edge / "zeekcut-conn-bro2x-no-local_resp.log")
    pd.testing.assert_frame_equal(crlf, plain)


def test_malformed_rows_raise_or_skip() -> None:
    path = FIXTURES / "malformed-rows.log"
    with pytest.raises(ZeekParseError, match="wrong number of fields") as info:
        zeek.read_log(path)
    assert info.value.line == 10 and "CCvvfg3TEfuqmmG4bh" in info.value.value
    with pytest.warns(zeek.ZeekDataWarning, match="skipped 2 malformed"):
        df = zeek.read_log(path, errors="skip")
    assert df["uid"].tolist() == ["CjhGID4nQcgTWjvg4c", "CsRx2w45OKnoww6xl4", "CXWv6p3arKYeMETxOg",
                                  "CPbrpk1qSsw6ESzHV4"]
    assert df.attrs["skipped_rows"] == 2
    with pytest.warns(zeek.ZeekDataWarning):
        table = zeek.read_arrow(path, errors="skip")
    assert table.schema.metadata[b"skipped_rows"] == b"2"


def test_bad_port_value_names_field_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad-port.log"
    text = (FIXTURES / "malformed-rows.log").read_text().splitlines(keepends=True)
    del text[9]  # keep only the out-of-range port
    path.write_text("".join(text))
    with pytest.raises(ZeekParseError) as info:
        zeek.read_log(path)
    assert (info.value.line, info.value.field, info.value.value, info.value.expected) == (11, "id.orig_p", "99999", "port")


# ------------------------------------------------------------------ gzip and not-Zeek
def test_gzip_valid_truncated_and_concatenated(edge: Path, tmp_path: Path) -> None:
    valid = zeek.read_log(edge / "zat-http-gzip-valid.log.gz")
    assert len(valid) == 150
    bad = edge / "zat-http-gzip-truncated-corrupt.log.gz"
    with pytest.raises(ZeekParseError, match="truncated or corrupt") as info:
        zeek.read_log(bad)
    assert info.value.path == str(bad)
    with pytest.warns(zeek.ZeekDataWarning, match="recovered 150 complete row"):
        part = zeek.read_log(bad, errors="skip")
    pd.testing.assert_frame_equal(part, valid)
    two = tmp_path / "two.log.gz"
    two.write_bytes((edge / "zat-dhcp-gzip.log.gz").read_bytes() + (edge / "zat-dhcp-gzip.log.gz").read_bytes())
    assert len(zeek.read_log(two)) == 4  # cat a.gz b.gz: both members
    renamed = tmp_path / "no-suffix"
    renamed.write_bytes(gzip.compress((edge / "zeekcut-one-column.log").read_bytes()))
    assert col(renamed, "id.orig_h") == ["79.26.245.236"]  # gzip by magic bytes, not name


def test_not_a_zeek_log_fails_at_once(edge: Path, tmp_path: Path) -> None:
    with pytest.raises(ZeekParseError, match="no '#fields' header and no JSON lines") as info:
        zeek.read_log(edge / "zeekcut-conn-plain-tsv-no-zeek-header.log")
    assert info.value.value.startswith("ts\tuid\tid.orig_h")
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    with pytest.raises(ZeekParseError, match="not a Zeek log"):
        zeek.read_log(empty)
    with pytest.raises(ZeekParseError, match="not a Zeek log"):
        list(zeek.iter_batches(edge / "zeekcut-conn-plain-tsv-no-zeek-header.log"))


def test_header_only_file_has_typed_columns(edge: Path) -> None:
    df = zeek.read_log(edge / "zat-http-header-only-zero-rows.log")
    assert len(df) == 0 and df.shape[1] == 27
    assert str(df["ts"].dtype) == "datetime64[ns, UTC]" and str(df["status_code"].dtype) == "UInt64"


def test_skip_warning_is_silent_on_clean_files(edge: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zeek.read_log(edge / "zeekcut-zero-time.log", errors="skip")


# ------------------------------------------------------------------ exact rows of more real files
# Expected values are copied from the raw file text (cat -A / xxd), not from the reader.
def _ts(text: str) -> pd.Timestamp:
    """A Zeek time as printed (``1354328870.191989``) -> Timestamp, via its integer microseconds."""
    seconds, micros = text.split(".")
    return pd.Timestamp(int(seconds) * 10**6 + int(micros), unit="us", tz="UTC")


def test_non_printable_escaping_http(edge: Path, tmp_path: Path) -> None:
    r"""Zeek's own baseline: a raw 4-byte emoji (f0 9f 98 84), an escaped BEL (\x07 in the file) and a
    literal backslash before "x07" (\\x07 in the file). Its times are canonified to
    XXXXXXXXXX.XXXXXX, so the raw file fails on line 10 and a tmp copy gets a real time."""
    raw = (edge / "zeek-baseline-canonified/non-printable-escaping-http.tsv.log").read_bytes()
    with pytest.raises(ZeekParseError) as info:
        zeek.read_log(edge / "zeek-baseline-canonified/non-printable-escaping-http.tsv.log")
    assert (info.value.line, info.value.field, info.value.value) == (10, "ts", "XXXXXXXXXX.XXXXXX")
    path = tmp_path / "http.log"
    path.write_bytes(raw.replace(b"XXXXXXXXXX.XXXXXX", b"1329843175.736107"))
    df = zeek.read_log(path)
    assert df["uri"].tolist() == ["/regular_file.html", "/printable_\U0001F604", "/non_printable_\x07",
                                  "/non_printable_literal_\\x07"]
    assert len(df["uri"].iloc[2]) == len("/non_printable_") + 1  # one BEL character
    assert df["uri"].iloc[3].endswith("_\\x07") and len(df["uri"].iloc[3]) == len("/non_printable_literal_") + 4
    assert df["uid"].tolist() == ["CHhAvVGS1DHFjwGM9", "ClEkJM2Vm5giqnMf4h", "C4J4Th3PJpwUYZZ6gc", "CtPZjS20MLrsMUOJi2"]
    assert df["id.orig_p"].tolist() == [55122, 55134, 55142, 55154]
    assert (df["ts"] == pd.Timestamp("2012-02-21T16:52:55.736107Z")).all()
    assert df["user_agent"].tolist() == ["Python-urllib/3.12"] * 4 and df["referrer"].isna().all()
    assert df["status_code"].tolist() == [404] * 4 and df["status_msg"].tolist() == ["File not found"] * 4
    assert df["response_body_len"].tolist() == [335] * 4 and df["tags"].tolist() == [[]] * 4
    assert df["resp_fuids"].tolist() == [["FiQHEW1Z5mVQT0VMtd"], ["FohOlx2DI0LrhjncC7"], ["FLQcdMkvd8G7536U2"],
                                         ["FXuGe510Cc7660dID8"]]
    assert df["resp_mime_types"].tolist() == [["text/html"]] * 4 and df["resp_filenames"].isna().all()


def test_http_odd_methods_star_and_empty_uri(edge: Path) -> None:
    """OPTIONS * (uri "*"), OPTIONS with an empty URI ("(empty)" -> ""), and 23 requests Zeek could not
    parse at all (method, host and uri unset -> NA, not "" and not "-")."""
    df = zeek.read_log(edge / "zeek-baseline-2019/http-odd-methods-empty-uri.log")
    assert len(df) == 49
    first, second, third = df.iloc[0], df.iloc[1], df.iloc[2]
    assert (first["method"], first["host"], first["uri"], first["version"]) == ("OPTIONS", "www.google.com", "*", "1.1")
    assert first["ts"] == _ts("1354328870.191989") and first["status_code"] == 405
    assert first["status_msg"] == "Method Not Allowed" and first["response_body_len"] == 962
    assert (second["method"], second["uri"], second["status_code"], second["status_msg"]) == (
        "OPTIONS", "", 400, "Bad Request")
    assert pd.isna(third["method"]) and pd.isna(third["host"]) and pd.isna(third["uri"])
    assert third["uid"] == "C4J4Th3PJpwUYZZ6gc" and third["resp_fuids"] == ["FrYoRN2EwpZyXbyvF8"]
    assert int(df["uri"].isna().sum()) == 23 and int(df["method"].isna().sum()) == 23
    assert df["uri"].dropna().value_counts().to_dict() == {"/": 16, "/HTTP/1.1": 8, "*": 1, "": 1}
    assert df["method"].value_counts().to_dict() == {
        "GET": 4, "CCM_POST": 3, "CONNECT": 3, "DELETE": 3, "HEAD": 3, "PUT": 3, "TRACE": 3, "OPTIONS": 2, "POST": 2}
    head = df[df["method"] == "HEAD"]  # no body: resp_fuids unset (NA), tags "(empty)" ([])
    assert head["resp_fuids"].isna().all() and head["tags"].tolist() == [[]] * 3
    assert head["status_code"].tolist() == [200, 200, 400]


def test_conn_ipv6_teredo_tunnel_parents(edge: Path) -> None:
    """tunnel_parents: unset (NA), one uid, and two uids split at the set separator; IPv6 addresses."""
    df = zeek.read_log(edge / "zeek-baseline-2019/conn-ipv6-teredo-tunnel-parents.log")
    assert len(df) == 21
    parents = dict(zip(df["uid"], df["tunnel_parents"]))
    assert parents["CNnMIj2QSd84NKf7U3"] == ["Ck51lg1bScffFj34Ri"]
    assert parents["CP5puj4I8PtEU4qzYg"] == ["CmES5u32sYpV7JYN"]
    assert parents["C9mvWx3ezztgzcexV7"] == ["CtPZjS20MLrsMUOJi2", "Ck51lg1bScffFj34Ri"]
    assert parents["CUM0KZ3MLUfNB0cl11"] == ["CtPZjS20MLrsMUOJi2"]
    assert parents["ClEkJM2Vm5giqnMf4h"] is pd.NA or parents["ClEkJM2Vm5giqnMf4h"] is None
    assert int(df["tunnel_parents"].notna().sum()) == 4
    six = df.set_index("uid").loc["C9mvWx3ezztgzcexV7"]
    assert (six["id.orig_h"], six["id.orig_p"], six["id.resp_h"], six["id.resp_p"]) == (
        "2001:0:4137:9e50:8000:f12a:b9c8:2815", 128, "2001:4860:0:2001::68", 129)
    assert six["proto"] == "icmp" and six["duration"] == pd.Timedelta(microseconds=463615)
    assert six["ts"] == _ts("1210953060.829303") and pd.isna(six["service"]) and pd.isna(six["history"])
    teredo = df.set_index("uid").loc["Ck51lg1bScffFj34Ri"]  # the tunnel itself
    assert (teredo["service"], teredo["orig_bytes"], teredo["resp_bytes"], teredo["history"]) == (
        "teredo", 2359, 11243, "Dd")
    assert df.set_index("uid").loc["ClEkJM2Vm5giqnMf4h", "history"] == "^fA"  # "^": direction flipped


def test_dhcp_gzip_interval_in_e_notation_and_large_count(edge: Path) -> None:
    """lease_time printed as 4.294967e+09 (an interval: 4,294,967,000 s, about 136 years, not 2**32) and
    trans_id 2218089335 (above 2**31)."""
    df = zeek.read_log(edge / "zat-dhcp-gzip.log.gz")
    assert len(df) == 2 and str(df["lease_time"].dtype) == "timedelta64[ns]"
    assert df["lease_time"].tolist() == [pd.Timedelta(seconds=4_294_967_000)] * 2
    assert df["trans_id"].tolist() == [2218089335, 2227948382] and str(df["trans_id"].dtype) == "UInt64"
    assert df["ts"].tolist() == [_ts("1379288650.691137"), _ts("1379288663.734159")]
    assert df["uid"].tolist() == ["Cm5veU18MVTniYSKAl"] * 2 and df["mac"].tolist() == ["00:20:18:eb:ca:21"] * 2
    assert df["assigned_ip"].tolist() == ["192.168.33.10"] * 2
    assert (df["id.orig_p"].tolist(), df["id.resp_p"].tolist()) == ([68, 68], [67, 67])


def test_http_gzip_valid_rows(edge: Path) -> None:
    """zat's gzipped Bro 2.x http.log (table[enum] tags): rows 1, 3 and 150, and counts from the raw text."""
    df = zeek.read_log(edge / "zat-http-gzip-valid.log.gz")
    assert len(df) == 150
    first = df.iloc[0]
    assert first["ts"] == _ts("1379288667.668082") and first["uid"] == "CyIaMO7IheOh38Zsi"
    assert (first["id.orig_h"], first["id.orig_p"], first["id.resp_h"], first["id.resp_p"]) == (
        "192.168.33.10", 1031, "54.245.228.191", 80)
    assert (first["method"], first["host"], first["uri"], first["status_code"], first["status_msg"]) == (
        "GET", "guyspy.com", "/", 301, "Moved Permanently")
    assert first["user_agent"] == "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 5.1; Trident/4.0)"
    assert first["response_body_len"] == 184 and pd.isna(first["referrer"]) and first["tags"] == []
    assert first["resp_fuids"] == ["Fnjq3r4R0VGmHVWiN5"] and first["resp_mime_types"] == ["text/html"]
    third = df.iloc[2]
    assert third["trans_depth"] == 2 and third["referrer"] == "http://www.guyspy.com/"
    assert third["uri"] == "/wp-content/plugins/slider-pro/css/advanced-slider-base.css?ver=3.3.1"
    assert (third["status_code"], third["response_body_len"]) == (404, 55817)
    last = df.iloc[-1]
    assert last["ts"] == _ts("1379288899.495720") and (last["method"], last["host"]) == ("POST", "j.maxmind.com")
    assert (last["request_body_len"], last["response_body_len"], last["resp_mime_types"]) == (74993, 512, ["text/plain"])
    assert pd.isna(last["user_agent"])
    assert df["status_code"].value_counts(dropna=False).to_dict() == {200: 134, 302: 7, 301: 1, 404: 4, pd.NA: 4}
    assert df["method"].value_counts().to_dict() == {"GET": 133, "POST": 10, "OPTIONS": 7}
    unanswered = df[df["status_code"].isna()]  # rows 105, 106, 123, 124: no response, so no files either
    assert unanswered["uid"].tolist() == ["CnZuft1xELwUH6nLCb", "CnZuft1xELwUH6nLCb", "Cp9hNy3nE9FQR8MA17",
                                          "CctrmTO7E3fx0rzsh"]
    assert unanswered["response_body_len"].tolist() == [0] * 4 and unanswered["resp_fuids"].isna().all()


def test_bro2x_conn_without_local_resp_rows(edge: Path) -> None:
    """A Bro 2.x conn.log: no local_resp column, local_orig unset, tunnel_parents "(empty)", rows not in
    ts order (the last row is the earliest: the ftp control connection)."""
    df = zeek.read_log(edge / "zeekcut-conn-bro2x-no-local_resp.log")
    assert len(df) == 5 and "local_resp" not in df.columns and df["local_orig"].isna().all()
    assert df["uid"].tolist() == ["CjhGID4nQcgTWjvg4c", "CCvvfg3TEfuqmmG4bh", "CsRx2w45OKnoww6xl4",
                                  "CRJuHdVW0XPVINV8a", "CXWv6p3arKYeMETxOg"]
    assert df["ts"].tolist() == [_ts(t) for t in ("1329843175.736107", "1329843179.871641", "1329843194.151526",
                                                   "1329843197.783443", "1329843161.968492")]
    ftp = df.iloc[4]
    assert (ftp["id.orig_h"], ftp["id.orig_p"], ftp["id.resp_h"], ftp["id.resp_p"]) == (
        "141.142.220.235", 50003, "199.233.217.249", 21)
    assert (ftp["proto"], ftp["service"], ftp["conn_state"], ftp["history"]) == ("tcp", "ftp", "SF", "ShAdDfFa")
    assert ftp["duration"] == pd.Timedelta(microseconds=38_055_625)
    assert (ftp["orig_bytes"], ftp["resp_bytes"], ftp["missed_bytes"]) == (180, 3146, 0)
    assert (ftp["orig_pkts"], ftp["orig_ip_bytes"], ftp["resp_pkts"], ftp["resp_ip_bytes"]) == (38, 2164, 25, 4458)
    assert df["service"].tolist() == ["ftp-data"] * 4 + ["ftp"]
    assert df["resp_bytes"].tolist() == [342, 77, 0, 0, 3146] and df["tunnel_parents"].tolist() == [[]] * 5
