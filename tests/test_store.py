"""The Parquet store on real logs: idempotent ingest, crash safety, pruned loads, summaries.

Crashes are real: a subprocess ingesting real logs is SIGKILLed at a chosen
write or rename, then the store is inspected and the ingest re-run.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from watchtower_lib import store, zeek
from watchtower_lib.errors import StoreError, ZeekParseError

ROOT = Path(__file__).resolve().parents[1]
SDT = "labelled/stratosphere-sdt"
RAT_CONN = "scenarios/stratosphere-sdt/003-android-rat/conn.log"  # 361 rows, one day
CONN_008 = f"{SDT}/008-ctu-normal-40-day1/conn.log.labeled"  # 5663 rows over two UTC days
CONN_011 = f"{SDT}/011-ctu-normal-43-day1/conn.log.labeled"  # 9048 rows over two UTC days
PROVENANCE_SETS = ["labelled/stratosphere-sdt", "scenarios", "multi/zat-samples", "multi/wrccdc-2018/zeek-tsv"]


def _visible_parquet(store_dir: Path) -> set[Path]:
    return {p for p in store_dir.rglob("*.parquet") if not p.name.startswith(".")}


def _temp_files(store_dir: Path) -> list[Path]:
    return [p for p in store_dir.rglob(".*") if p.name.endswith(".parquet.tmp")]


# ----------------------------------------------------------------- provenance
def _provenance(shared: Path) -> dict[str, dict[str, object]]:
    """Per log type: rows, first and last ts, for the PROVENANCE.md rows under PROVENANCE_SETS."""
    pattern = re.compile(r"^\| `([^`]+)` \| (\S+)[^|]*\| (\d+) \| ([^|]+) \|")
    out: dict[str, dict[str, object]] = {}
    for line in (shared / "PROVENANCE.md").read_text().splitlines():
        m = pattern.match(line)
        if not m or not m.group(1).startswith(tuple(PROVENANCE_SETS)):
            continue
        entry = out.setdefault(m.group(2), {"rows": 0, "first": None, "last": None})
        entry["rows"] = int(entry["rows"]) + int(m.group(3))  # type: ignore[call-overload]
        span = m.group(4).strip()
        if span != "n/a":
            first, last = (pd.Timestamp(s.strip()) for s in span.split(".."))
            entry["first"] = first if entry["first"] is None else min(entry["first"], first)  # type: ignore
            entry["last"] = last if entry["last"] is None else max(entry["last"], last)  # type: ignore
    return out


@pytest.fixture(scope="module")
def corpus_store(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared corpus (labelled Stratosphere, scenarios, ZAT, WRCCDC TSV) in one store."""
    target = tmp_path_factory.mktemp("corpus") / "store"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = store.ingest([shared_data / s for s in PROVENANCE_SETS], target)
    assert not report.errors
    return target


def test_summary_matches_provenance(corpus_store: Path, shared_data: Path) -> None:
    expected = _provenance(shared_data)
    summary = store.summary(corpus_store).set_index("log_type")
    assert expected["conn"]["rows"] == 5663 + 9048 + 992 + 992 + 4504 + 361 + 992 + 18 + 50 + 360
    assert sorted(summary.index) == sorted(expected)
    for log_type, want in expected.items():
        got = summary.loc[log_type]
        assert got["rows"] == want["rows"], log_type
        if want["first"] is None:
            assert pd.isna(got["first_ts"]), log_type
        else:
            assert got["first_ts"].floor("s") == want["first"], log_type
            assert got["last_ts"].floor("s") == want["last"], log_type


def test_ingest_twice_adds_nothing(shared_data: Path, tmp_path: Path) -> None:
    target = tmp_path / "store"
    folder = shared_data / SDT / "008-ctu-normal-40-day1"
    first = store.ingest([folder], target)
    assert first.files_ingested == 7 and first.files_skipped == 0
    assert first.rows_by_log_type == {"conn": 5663, "http": 342, "notice": 16, "sip": 33, "ssl": 545,
                                      "tunnel": 6, "weird": 56}
    assert [Path(p).name for p in first.not_logs] == ["labels.config"]
    files_before = {p: p.stat().st_mtime_ns for p in _visible_parquet(target)}
    summary_before = store.summary(target)

    again = store.ingest([folder], target)
    renamed = tmp_path / "renamed-conn.log"  # same content under another name is the same log
    shutil.copyfile(folder / "conn.log.labeled", renamed)
    copy = store.ingest([renamed], target)

    assert (again.files_ingested, again.files_skipped, again.rows) == (0, 7, 0)
    assert (copy.files_ingested, copy.files_skipped) == (0, 1)
    assert {p: p.stat().st_mtime_ns for p in _visible_parquet(target)} == files_before
    pd.testing.assert_frame_equal(store.summary(target), summary_before)


# ---------------------------------------------------------------------- crashes
_CRASH_SCRIPT = """
import os, signal, sys
import pyarrow.parquet as pq
from watchtower_lib import store

where, kill_at, target, *paths = sys.argv[1:]
calls = [0]

def dying(real):
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return wrapper

if where == "rename":
    os.replace = dying(os.replace)
elif where == "unlink":
    import pathlib
    pathlib.Path.unlink = dying(pathlib.Path.unlink)
else:
    pq.ParquetWriter.write_table = dying(pq.ParquetWriter.write_table)
store.ingest(paths, target)
"""


@pytest.mark.parametrize(("where", "kill_at"), [("write", 2), ("rename", 3)])
def test_killed_ingest_leaves_nothing_partial_and_rerun_completes(
        shared_data: Path, tmp_path: Path, where: str, kill_at: int) -> None:
    """SIGKILL while writing the 2nd file's first part, or between the renames of its two parts."""
    target = tmp_path / "store"
    paths = [str(shared_data / RAT_CONN), str(shared_data / CONN_008)]
    proc = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, where, str(kill_at), str(target), *paths],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    # The first file is committed; nothing of the second is visible to readers.
    assert _temp_files(target), "the kill should have left a temporary part behind"
    committed = store.files(target, "conn")
    assert len(committed) == 1 and "date=2020-08-07" in str(committed[0])
    assert len(store.load(target, "conn")) == 361
    if where == "rename":  # one part of the second file was renamed but never committed
        assert len(_visible_parquet(target)) == 2

    report = store.ingest(paths, target)
    assert (report.files_skipped, report.files_ingested) == (1, 1)
    assert _temp_files(target) == []
    assert _visible_parquet(target) == set(store.files(target, "conn"))
    assert len(store.files(target, "conn")) == 3
    assert len(store.load(target, "conn")) == 361 + 5663


def test_exception_mid_file_removes_its_parts(shared_data: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "store"
    real = zeek.iter_batches

    def failing(path: Path, **kwargs: object):  # the real batches, then the source disappears
        yield from real(path, batch_rows=1000, **kwargs)  # type: ignore[arg-type]
        raise OSError("input/output error (the sensor's disk went away)")

    store.ingest([shared_data / RAT_CONN], target)
    monkeypatch.setattr(zeek, "iter_batches", failing)
    with pytest.raises(StoreError, match="input/output error"):
        store.ingest([shared_data / CONN_008], target)
    assert _temp_files(target) == []
    assert len(_visible_parquet(target)) == 1
    monkeypatch.undo()
    assert store.ingest([shared_data / CONN_008], target).files_ingested == 1
    assert len(store.load(target, "conn")) == 361 + 5663


def test_bad_file_raises_or_is_reported(shared_data: Path, tmp_path: Path) -> None:
    target = tmp_path / "store"
    bad = shared_data / "edge/zat-http-gzip-truncated-corrupt.log.gz"
    with pytest.raises(ZeekParseError, match="zat-http-gzip-truncated-corrupt"):
        store.ingest([shared_data / RAT_CONN, bad], target)
    assert store.log_types(target) == ["conn"]  # the good file before it stays committed
    assert _temp_files(target) == []
    with pytest.warns(UserWarning, match="recovered 150"):
        report = store.ingest([bad, shared_data / "edge/zeekcut-conn-plain-tsv-no-zeek-header.log"],
                              target, errors="skip")
    assert report.rows_by_log_type == {"http": 150}
    assert list(report.errors) == [str(shared_data / "edge/zeekcut-conn-plain-tsv-no-zeek-header.log")]
    with pytest.raises(StoreError, match="no such file"):
        store.ingest([tmp_path / "missing.log"], target)
    not_a_folder = tmp_path / "store-is-a-file"
    not_a_folder.write_text("")
    with pytest.raises(StoreError, match=f"cannot write the store at {not_a_folder}"):
        store.ingest([shared_data / RAT_CONN], not_a_folder)


# ------------------------------------------------------------------------ loads
@pytest.fixture(scope="module")
def two_days(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    target = tmp_path_factory.mktemp("twodays") / "store"
    store.ingest([shared_data / CONN_008, shared_data / CONN_011], target)
    frames = [zeek.read_log(shared_data / CONN_008), zeek.read_log(shared_data / CONN_011)]
    return target, pd.concat(frames, ignore_index=True)


def test_load_range_prunes_partitions(two_days: tuple[Path, pd.DataFrame], shared_data: Path,
                                      tmp_path: Path) -> None:
    source, both = two_days
    target = tmp_path / "store"
    shutil.copytree(source, target)
    start, end = pd.Timestamp("2022-06-13 06:00", tz="UTC"), pd.Timestamp("2022-06-13 12:00", tz="UTC")
    all_files = store.files(target, "conn")
    in_range = store.files(target, "conn", "2022-06-13 06:00", "2022-06-13 12:00")
    assert len(all_files) == 4 and len(in_range) == 2
    assert all("date=2022-06-13" in str(p) for p in in_range)
    for outside in set(all_files) - set(in_range):  # prove the other days are never opened
        outside.write_bytes(b"not parquet any more")

    df = store.load(target, "conn", start, end)
    want = both[(both["ts"] >= start) & (both["ts"] < end)]
    assert len(df) == len(want) == 4912
    assert df["ts"].min() >= start and df["ts"].max() < end
    assert df["ts"].is_monotonic_increasing
    assert sorted(df["uid"]) == sorted(want["uid"])
    assert store.load(target, "conn", "2022-06-13 06:00:00", "2022-06-13 06:00:00").empty
    with pytest.raises(StoreError) as info:  # a full load does open the damaged files
        store.load(target, "conn")
    first = min(set(all_files) - set(in_range))  # the manifest lists parts by path: date=2022-06-12 first
    source = _source_of(first, shared_data)
    message = str(info.value)
    assert message.startswith(f"{first}: this Parquet part of the store is damaged (")
    assert "Parquet magic bytes not found" in message  # pyarrow's own reason is kept
    assert f"from {source}. To repair:" in message and f"ingest {source} --store {target} --sensor local" in message
    assert f"DELETE FROM parts WHERE sha256 = '{first.name.split('-')[0]}'" in message


def _source_of(part: Path, shared: Path) -> Path:
    """Which of the two_days sources a part holds rows of (its name starts with the source's SHA-256)."""
    by_sha = {_sha(p): p for p in (shared / CONN_008, shared / CONN_011)}
    return by_sha[part.name.split("-")[0]]


@pytest.mark.parametrize("damage", ["truncated", "footer"])
def test_damaged_part_is_named_and_the_repair_it_gives_works(two_days: tuple[Path, pd.DataFrame], shared_data: Path,
                                                             tmp_path: Path, damage: str) -> None:
    """Half a part (a disk that lost its tail) or garbage in its footer (pyarrow raises OSError then, not
    ArrowInvalid): StoreError names the part; doing what it says brings every row back."""
    import sqlite3

    source_store, both = two_days
    target = tmp_path / "store"
    shutil.copytree(source_store, target)
    part = store.files(target, "conn")[-1]
    raw = part.read_bytes()
    if damage == "truncated":
        part.write_bytes(raw[: len(raw) // 2])
    else:
        footer = int.from_bytes(raw[-8:-4], "little")
        part.write_bytes(raw[: -8 - footer + 10] + b"\xff" * 50 + raw[-8 - footer + 60:])
    with pytest.raises(StoreError) as info:
        store.load(target, "conn")
    message = str(info.value)
    assert message.startswith(f"{part}: this Parquet part of the store is damaged")
    sql = re.search(r'sqlite3 (\S+) "([^"]+)"', message)
    assert sql and sql.group(1) == str(target / "_manifest.sqlite")
    with sqlite3.connect(sql.group(1)) as db:
        db.executescript(sql.group(2))
    db.close()
    again = re.search(r"watchtower ingest (\S+) --store (\S+) --sensor (\S+)\)", message)
    assert again and again.group(1) == str(_source_of(part, shared_data)) and again.group(2) == str(target)
    report = store.ingest([again.group(1)], again.group(2), sensor=again.group(3))
    assert report.files_ingested == 1
    df = store.load(target, "conn")
    assert len(df) == len(both) == 5663 + 9048
    assert sorted(df["uid"]) == sorted(both["uid"])
    assert _visible_parquet(target) == set(store.files(target, "conn"))  # the damaged file was replaced


def test_parts_whose_integers_a_double_cannot_hold_fail_clearly(shared_data: Path, tmp_path: Path) -> None:
    """Derived from real WRCCDC weird JSON rows: one file gives an extra field 2**53 + 1 (int64), another
    a float (double). Each reads fine alone; loading both would round the integer, so it fails, naming it."""
    import gzip
    import json

    lines = gzip.decompress((shared_data / "multi/wrccdc-2018/zeek-json/weird.json.gz").read_bytes()).splitlines()
    big, frac = tmp_path / "big" / "weird.json", tmp_path / "frac" / "weird.json"
    for path, line, value in ((big, lines[0], 2**53 + 1), (frac, lines[1], 0.5)):
        path.parent.mkdir()
        path.write_text(json.dumps(dict(json.loads(line), wt_extra=value)) + "\n")
    target = tmp_path / "store"
    store.ingest([big, frac], target)
    with pytest.raises(StoreError) as info:
        store.load(target, "weird")
    (part,) = [p for p in store.files(target, "weird") if _sha(big) in p.name]
    assert str(info.value).startswith(f"{part}: its weird rows (from {big}) do not convert to the types")
    assert "9007199254740993" in str(info.value)  # pyarrow's safe cast names the value it refused
    assert store.load(target, "weird", columns=["uid"])["uid"].tolist() == ["CsPzgh4tp5lHBTnsrf", "CZRT6d24wYO0w7ZcM3"]


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_load_gives_the_readers_frame(two_days: tuple[Path, pd.DataFrame], shared_data: Path,
                                      tmp_path: Path) -> None:
    target, _ = two_days
    df = store.load(target, "conn")
    assert len(df) == 5663 + 9048
    assert (df.pop("_sensor") == "local").all()
    for name in ("labelled", "json"):
        path = shared_data / (CONN_008 if name == "labelled" else "multi/wrccdc-2018/zeek-json/ssh.json.gz")
        one = tmp_path / name
        store.ingest([path], one, sensor="edge-01")
        expected = zeek.read_log(path).sort_values("ts", kind="stable").reset_index(drop=True)
        got = store.load(one, expected.attrs["log_type"])
        assert got.pop("_sensor").unique().tolist() == ["edge-01"]
        pd.testing.assert_frame_equal(got, expected)
    assert str(df["ts"].dtype) == "datetime64[ns, UTC]" and str(df["duration"].dtype) == "timedelta64[ns]"
    assert str(df["id.resp_p"].dtype) == "UInt16" and str(df["orig_bytes"].dtype) == "UInt64"


def test_load_columns_sensor_and_errors(two_days: tuple[Path, pd.DataFrame], shared_data: Path,
                                        tmp_path: Path) -> None:
    target, _ = two_days
    df = store.load(target, "conn", columns=["id.orig_h", "label"])
    assert list(df.columns) == ["id.orig_h", "label"] and len(df) == 5663 + 9048
    assert set(df["label"].dropna()) == {"Benign", "Malicious", "Background"}
    with pytest.raises(StoreError, match=r"no column 'nope'; columns: ts, uid"):
        store.load(target, "conn", columns=["nope"])
    with pytest.raises(StoreError, match=r"'con'.*did you mean 'conn'.*it has: conn"):
        store.load(target, "con")
    with pytest.raises(StoreError, match="no Watch Tower store at"):
        store.load(tmp_path / "nothing", "conn")
    with pytest.raises(StoreError, match="not a date"):
        store.load(target, "conn", start="yesterday-ish")

    mixed = tmp_path / "mixed"
    store.ingest([shared_data / RAT_CONN], mixed, sensor="s1")
    store.ingest([shared_data / "scenarios/stratosphere-sdt/006-ssh-honeypot-rpi/conn.log"], mixed, sensor="s2")
    assert len(store.load(mixed, "conn", sensor="s1")) == 361
    assert len(store.load(mixed, "conn", sensor=["s1", "s2"])) == 361 + 18


def test_schemas_of_different_zeek_versions_are_unified(shared_data: Path, tmp_path: Path) -> None:
    """Bro 2.x conn (no local_resp) next to Zeek conn with label columns: union, null where missing."""
    target = tmp_path / "store"
    store.ingest([shared_data / "multi/zat-samples/tsv/conn.log", shared_data / CONN_008], target)
    df = store.load(target, "conn")
    bro = df["ts"] < pd.Timestamp("2014-01-01", tz="UTC")
    assert bro.sum() == 360 and (~bro).sum() == 5663
    assert df.loc[bro, "label"].isna().all() and df.loc[~bro, "label"].notna().all()
    assert df.loc[bro, "local_resp"].isna().all() and df.loc[~bro, "local_resp"].notna().any()


def test_type_conflict_names_both_files(shared_data: Path, tmp_path: Path) -> None:
    # Derived, not real: the real ZAT conn.log with its #types line changed to call id.orig_p a string.
    real = shared_data / "multi/zat-samples/tsv/conn.log"
    text = real.read_text()
    types = next(line for line in text.splitlines() if line.startswith("#types"))
    altered = tmp_path / "conn-orig_p-as-string.log"
    altered.write_text(text.replace(types, types.replace("port", "string", 1)))
    target = tmp_path / "store"
    store.ingest([real, altered], target)
    with pytest.raises(StoreError) as info:
        store.load(target, "conn")
    message = str(info.value)
    assert "'id.orig_p'" in message and "uint16" in message and "string" in message
    assert str(real) in message and str(altered) in message


def test_json_column_that_widens_after_the_first_batch_loads(shared_data: Path, tmp_path: Path) -> None:
    """Derived from real rows: WRCCDC weird JSON repeated to 72,606 rows (ingest reads 65,536-row batches)
    with two fields the schema does not know: null in the whole first batch and then the row's real
    id.orig_p, and the real id.resp_p (an int) in the first batch and then the real ts as a float.
    The second batch's parts have other types (int64, double) than the first's (null, int64);
    a load must widen them, giving what read_log gives."""
    import gzip
    import json

    lines = gzip.decompress((shared_data / "multi/wrccdc-2018/zeek-json/weird.json.gz").read_bytes()).splitlines()
    rows = [json.loads(line) for line in lines * 3]
    assert len(rows) == 72_606
    for i, row in enumerate(rows):
        first = i < 65_536
        row["wt_late"] = None if first else row.get("id.orig_p")
        row["wt_widens"] = row.get("id.resp_p") if first else pd.Timestamp(row["ts"]).timestamp()
    path = tmp_path / "weird.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    target = tmp_path / "store"
    report = store.ingest([path], target)
    assert report.rows == 72_606 and report.files_written >= 2
    df = store.load(target, "weird")
    expected = zeek.read_log(path).sort_values("ts", kind="stable").reset_index(drop=True)
    assert str(df["wt_late"].dtype) == "Int64" and str(df["wt_widens"].dtype) == "Float64"
    pd.testing.assert_frame_equal(df.drop(columns="_sensor"), expected)
    # by eye: line 1 has id.resp_p 80 (first batch); the last line (late) has id.orig_p 56593 and
    # ts 2018-03-24T17:36:21.262091Z; 1 of the 24,202 lines has no id.orig_p
    assert df["wt_late"].notna().sum() == 72_606 - 65_536 - 1 and df["wt_late"].iloc[-1] == 56593
    assert 80.0 in set(df["wt_widens"]) and df["wt_widens"].iloc[-1] == 1521912981.262091


def test_unset_ts_goes_to_date_unknown(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "edge/zeek-baseline-canonified/json-null-field.json.log"
    target = tmp_path / "store"
    report = store.ingest([path], target)
    (log_type,) = report.rows_by_log_type
    parts = store.files(target, log_type)
    assert [p.parent.name for p in parts] == ["date=unknown"]
    assert len(store.load(target, log_type)) == 1
    assert store.load(target, log_type, start="1970-01-01").empty
    loaded_scripts = shared_data / "multi/wrccdc-2018/zeek-tsv/loaded_scripts.log.gz"  # no ts column at all
    store.ingest([loaded_scripts], target)
    assert [p.parent.name for p in store.files(target, "loaded_scripts")] == ["date=unknown"]
    assert len(store.load(target, "loaded_scripts")) == 512


def test_header_only_file_keeps_its_columns(shared_data: Path, tmp_path: Path) -> None:
    target = tmp_path / "store"
    report = store.ingest([shared_data / f"{SDT}/011-ctu-normal-43-day1/files.log.labeled"], target)
    assert report.files_ingested == 1 and report.files_written == 0
    df = store.load(target, "files")
    assert df.empty and {"ts", "fuid", "label", "_sensor"} <= set(df.columns)
    summary = store.summary(target)
    assert summary.loc[0, "rows"] == 0 and pd.isna(summary.loc[0, "first_ts"])


def test_sample_data_is_ingestible(tmp_path: Path) -> None:
    """Every log shipped in data/ goes in; the READMEs and label rules are skipped."""
    report = store.ingest([ROOT / "data"], tmp_path / "store")
    assert not report.errors and report.files_ingested == 62
    assert sorted(Path(p).name for p in report.not_logs) == [
        "GPL-2.0.txt", "MIT-zat.txt", "README.md", "labels.config", "labels.config"]
    assert os.path.getsize(tmp_path / "store" / "_manifest.sqlite") > 0


def test_every_sample_log_type_loads(tmp_path: Path) -> None:
    """What the demo's later phases do: load each log type of the sample store as one frame."""
    target = tmp_path / "store"
    store.ingest([ROOT / "data" / "logs"], target)
    for log_type in store.log_types(target):
        df = store.load(target, log_type)
        assert len(df) == int(store.summary(target).set_index("log_type").loc[log_type, "rows"])
    # JSON files without _path (zat's json/conn.log) take conn's built-in types from the file name
    assert str(store.load(target, "conn")["id.orig_p"].dtype) == "UInt16"


def test_folder_walk_skips_hidden_folders_and_stores(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "sensor"
    for sub in ("2020-08-07", ".snapshots"):
        (src / sub).mkdir(parents=True)
        shutil.copyfile(shared_data / RAT_CONN, src / sub / "conn.log")
    target = src / "store"  # a store inside the folder being ingested, as with `watchtower ingest .`
    first = store.ingest([src], target)
    second = store.ingest([src], target)
    assert first.files_ingested == 1 and first.not_logs == []
    assert second.files_skipped == 1 and second.not_logs == []  # the store's Parquet files are not read


def test_file_growing_during_ingest_is_not_committed(shared_data: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Zeek appending to the log being ingested: the rows read are not the content hashed."""
    log_file = tmp_path / "conn.log"
    shutil.copyfile(shared_data / RAT_CONN, log_file)
    real_rows = [line for line in log_file.read_bytes().splitlines(keepends=True) if not line.startswith(b"#")]
    real = zeek.iter_batches

    def appending(path: Path, **kwargs: object):
        for i, batch in enumerate(real(path, batch_rows=100, **kwargs)):  # type: ignore[arg-type]
            if i == 0:
                with open(log_file, "ab") as fh:  # one more real row arrives
                    fh.write(real_rows[0])
            yield batch

    monkeypatch.setattr(zeek, "iter_batches", appending)
    target = tmp_path / "store"
    with pytest.raises(StoreError, match="changed while it was being ingested"):
        store.ingest([log_file], target)
    assert _visible_parquet(target) == set() and _temp_files(target) == []
    monkeypatch.undo()
    assert store.ingest([log_file], target).rows_by_log_type == {"conn": 362}


def test_text_width_change_between_reader_versions_is_not_a_conflict(
        shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader moved text columns from string to large_string; stores written before must still load."""
    import pyarrow as pa

    def narrow(t: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(t):
            return pa.string()
        return pa.list_(narrow(t.value_type)) if pa.types.is_list(t) else t

    real = zeek.iter_batches

    def old_reader(path: Path, **kwargs: object):  # what the earlier reader version wrote
        for batch in real(path, **kwargs):  # type: ignore[arg-type]
            schema = pa.schema([f.with_type(narrow(f.type)) for f in batch.schema])
            yield batch.cast(schema)

    target = tmp_path / "store"
    monkeypatch.setattr(zeek, "iter_batches", old_reader)
    store.ingest([shared_data / RAT_CONN], target)
    monkeypatch.undo()
    store.ingest([shared_data / "scenarios/stratosphere-sdt/006-ssh-honeypot-rpi/conn.log"], target)
    df = store.load(target, "conn")
    assert len(df) == 361 + 18 and df["uid"].notna().all()
    assert df["uid"].dtype == zeek.read_log(shared_data / RAT_CONN)["uid"].dtype


# ------------------------------------------------------- a log that grows or is replaced at its path
def _first_half(path: Path) -> bytes:
    """The first half of a real log's lines, header included: what Zeek has written so far."""
    lines = path.read_bytes().splitlines(keepends=True)
    return b"".join(lines[: len(lines) // 2])


def test_grown_log_replaces_its_earlier_version(shared_data: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """current/conn.log ingested half-written, then complete: every row once, as in the source."""
    source = shared_data / RAT_CONN
    source_uids = zeek.read_log(source)["uid"]
    assert len(source_uids) == 361 and source_uids.is_unique
    live = tmp_path / "current" / "conn.log"
    live.parent.mkdir()
    live.write_bytes(_first_half(source))
    target = tmp_path / "store"

    first = store.ingest([live], target)
    assert first.rows_by_log_type == {"conn": 177} and first.files_replaced == 0
    old_parts = _visible_parquet(target)

    shutil.copyfile(source, live)  # Zeek wrote the rest (and #close)
    with caplog.at_level("INFO", logger="watchtower_lib.store"):
        grown = store.ingest([live], target)
    assert (grown.files_ingested, grown.files_replaced, grown.rows_replaced) == (1, 1, 177)
    assert grown.rows_by_log_type == {"conn": 361}
    assert any("grew from" in r.getMessage() and r.levelname == "INFO" for r in caplog.records)
    df = store.load(target, "conn")
    assert len(df) == 361 and df["uid"].is_unique
    assert sorted(df["uid"]) == sorted(source_uids)
    assert int(store.summary(target).loc[0, "rows"]) == 361 and int(store.summary(target).loc[0, "files"]) == 1
    assert old_parts.isdisjoint(_visible_parquet(target))  # the earlier version's files are gone
    assert _visible_parquet(target) == set(store.files(target, "conn"))

    again = store.ingest([live], target)  # unchanged: a no-op
    assert (again.files_ingested, again.files_skipped, again.files_replaced, again.rows) == (0, 1, 0, 0)
    assert len(store.load(target, "conn")) == 361


def test_rotation_to_the_same_name_replaces_with_a_warning(shared_data: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Different content at the same path (not a prefix): the new file's rows replace the old ones."""
    live = tmp_path / "conn.log"
    shutil.copyfile(shared_data / RAT_CONN, live)
    target = tmp_path / "store"
    store.ingest([live], target)
    other = tmp_path / "other"  # the same path under another sensor is another log, never replaced
    store.ingest([live], other, sensor="s1")

    shutil.copyfile(shared_data / "scenarios/stratosphere-sdt/006-ssh-honeypot-rpi/conn.log", live)  # 18 rows
    with caplog.at_level("WARNING", logger="watchtower_lib.store"):
        report = store.ingest([live], target)
    assert (report.files_replaced, report.rows_replaced, report.rows) == (1, 361, 18)
    assert any("does not start with the earlier version" in r.getMessage() for r in caplog.records)
    assert len(store.load(target, "conn")) == 18

    store.ingest([live], other, sensor="s2")
    assert len(store.load(other, "conn", sensor="s1")) == 361
    assert len(store.load(other, "conn", sensor="s2")) == 18


@pytest.mark.parametrize(("where", "kill_at", "rows"), [("rename", 1, 177), ("unlink", 1, 361)])
def test_killed_replacement_shows_one_version_and_rerun_completes(
        shared_data: Path, tmp_path: Path, where: str, kill_at: int, rows: int) -> None:
    """SIGKILL before the commit (renaming the new part: old rows stay) or after it (removing the old part)."""
    live = tmp_path / "conn.log"
    live.write_bytes(_first_half(shared_data / RAT_CONN))
    target = tmp_path / "store"
    store.ingest([live], target)
    shutil.copyfile(shared_data / RAT_CONN, live)
    proc = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, where, str(kill_at), str(target), str(live)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    df = store.load(target, "conn")  # never both versions, never neither
    assert len(df) == rows and df["uid"].is_unique
    assert len(_visible_parquet(target) | set(_temp_files(target))) == 2  # one file is an orphan

    report = store.ingest([live], target)
    assert report.files_ingested == (1 if where == "rename" else 0)
    assert _temp_files(target) == [] and _visible_parquet(target) == set(store.files(target, "conn"))
    df = store.load(target, "conn")
    assert len(df) == 361 and df["uid"].is_unique


def test_store_written_before_sizes_were_kept_is_upgraded(shared_data: Path, tmp_path: Path) -> None:
    """A version-1 manifest (no sources.size): the grown log still replaces its earlier version."""
    import sqlite3

    live = tmp_path / "conn.log"
    live.write_bytes(_first_half(shared_data / RAT_CONN))
    target = tmp_path / "store"
    store.ingest([live], target)
    with sqlite3.connect(target / "_manifest.sqlite") as db:  # what version 1 wrote
        db.execute("DROP INDEX sources_by_path")
        db.execute("ALTER TABLE sources DROP COLUMN size")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.close()
    shutil.copyfile(shared_data / RAT_CONN, live)
    report = store.ingest([live], target)
    assert (report.files_replaced, report.rows) == (1, 361)
    assert len(store.load(target, "conn")) == 361
    with sqlite3.connect(target / "_manifest.sqlite") as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
        assert db.execute("SELECT size FROM sources").fetchall() == [(live.stat().st_size,)]
    db.close()
