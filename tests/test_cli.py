"""The ``watchtower`` command: --help everywhere, ingest / show / demo on real logs, clean errors.

Error paths run the installed entry point in a subprocess, because what matters
there is what an analyst sees: one line naming the file, an exit status, no traceback.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from watchtower_lib import store
from watchtower_lib.cli import _COMMANDS, cli

ROOT = Path(__file__).resolve().parents[1]
SDT_008 = "labelled/stratosphere-sdt/008-ctu-normal-40-day1"
CORRUPT_GZ = "edge/zat-http-gzip-truncated-corrupt.log.gz"
NOT_ZEEK = "edge/zeekcut-conn-plain-tsv-no-zeek-header.log"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``watchtower ARGS`` as an analyst runs it (through ``main``), quiet logging."""
    code = "import sys; from watchtower_lib.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, "--log-level", "ERROR", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)


def _with_subcommands(name: str) -> list[tuple[list[str], click.Command]]:
    """The command and, for a group (alerts, es), each of its subcommands."""
    ctx = click.Context(cli)
    command = cli.get_command(ctx, name)
    assert command is not None, name
    found = [([name], command)]
    if isinstance(command, click.Group):
        found += [([name, sub], command.get_command(ctx, sub)) for sub in command.list_commands(ctx)]  # type: ignore
    return found


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_every_command_has_help(name: str) -> None:
    """``--help`` of every command and subcommand: a description, and every option listed in the
    Options section under its flags with its own description (as rendered, not only declared)."""
    for path, command in _with_subcommands(name):
        shown = " ".join(path)
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"Usage: cli {shown}") or f"Usage: watchtower {shown}" in result.output
        summary = result.output.split("\n\n")[1].strip()
        assert len(summary) > 20, f"{shown} --help has no description"
        assert CliRunner().invoke(cli, [*path, "-h"]).output == result.output
        section = result.output.split("\nOptions:\n", 1)[1].split("\nCommands:\n")[0]
        flat = "".join(section.split())  # click wraps lines, also after a hyphen ("apt-" / "get")
        assert re.search(r"^\s+-h, --help\s+Show this message and exit\.$", section, re.M), shown
        options = [p for p in command.params if isinstance(p, click.Option) and not p.hidden]
        for option in options:
            flags = option.opts + option.secondary_opts
            line = next((ln for ln in section.splitlines() if flags[0] in re.split(r"[\s,/=]+", ln.strip())), None)
            assert line is not None and line.lstrip().startswith("-"), f"{shown}: {flags[0]} not listed"
            assert all(flag in line for flag in flags), f"{shown}: {line!r} lacks one of {flags}"
            described = " ".join((option.help or "").split())
            assert len(described.split()) >= 3, f"{shown} {flags[0]}: no real description ({described!r})"
            assert "".join(described.split()) in flat, f"{shown} {flags[0]}: its description is not shown"
        if isinstance(command, click.Group):
            for sub in command.list_commands(click.Context(command)):
                assert re.search(rf"^\s+{re.escape(sub)}\s+\S", result.output, re.M), f"{shown}: {sub} not listed"


def test_group_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in _COMMANDS:
        assert re.search(rf"^\s+{name}\b", result.output, re.M), name


def test_ingest_twice_and_summary_table(shared_data: Path, tmp_path: Path) -> None:
    target = tmp_path / "store"
    runner = CliRunner()
    first = runner.invoke(cli, ["ingest", str(shared_data / SDT_008), "--store", str(target)])
    assert first.exit_code == 0, first.output
    assert re.search(r"^conn\s+5,663$", first.output, re.M)
    assert re.search(r"^total\s+6,661$", first.output, re.M)
    assert "7 file(s) ingested, 0 already in the store" in first.output
    assert "1 file(s) skipped as not Zeek logs" in first.output

    again = runner.invoke(cli, ["ingest", str(shared_data / SDT_008), "--store", str(target)])
    assert again.exit_code == 0
    assert "0 file(s) ingested, 7 already in the store, 0 Parquet file(s) written" in again.output
    assert int(store.summary(target)["rows"].sum()) == 6661


def test_ingest_store_defaults_to_the_config(shared_data: Path, tmp_path: Path) -> None:
    env = {"WATCHTOWER_STORE_DIR": str(tmp_path / "configured")}
    log = shared_data / "scenarios/stratosphere-sdt/006-ssh-honeypot-rpi/ssh.log"
    result = CliRunner().invoke(cli, ["ingest", str(log), "--sensor", "honeypot"], env=env)
    assert result.exit_code == 0, result.output
    df = store.load(tmp_path / "configured", "ssh")
    assert len(df) == 10 and set(df["_sensor"]) == {"honeypot"}


def test_bad_file_is_one_line_naming_it(shared_data: Path, tmp_path: Path) -> None:
    bad = shared_data / CORRUPT_GZ
    proc = _run("ingest", str(bad), "--store", str(tmp_path / "store"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}") and "truncated or corrupt" in lines[0]

    missing = _run("ingest", str(tmp_path / "nope.log"), "--store", str(tmp_path / "store"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"error: {tmp_path / 'nope.log'}: no such file or folder to ingest"


def test_skip_bad_rows_keeps_going_and_exits_1(shared_data: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="recovered 150 complete row"):
        result = CliRunner().invoke(cli, ["ingest", "--skip-bad-rows", str(shared_data / CORRUPT_GZ),
                                          str(shared_data / NOT_ZEEK), "--store", str(tmp_path / "store")])
    assert result.exit_code == 1
    assert re.search(r"^http\s+150$", result.stdout, re.M)
    assert "1 file(s) ingested" in result.stdout
    assert f"unreadable: {shared_data / NOT_ZEEK}: not a Zeek log" in result.stderr


def test_show_tsv_and_json(shared_data: Path) -> None:
    runner = CliRunner()
    tsv = runner.invoke(cli, ["show", str(shared_data / "multi/wrccdc-2018/zeek-tsv/ssh.log.gz"), "--rows", "2"])
    assert tsv.exit_code == 0, tsv.output
    assert "format:   Zeek TSV (gzip)" in tsv.output and "log type: ssh" in tsv.output
    assert re.search(r"^id\.orig_p\s+port\s+UInt16$", tsv.output, re.M)
    assert re.search(r"^ts\s+time\s+datetime64\[ns, UTC\]$", tsv.output, re.M)
    assert "C2MugGdsn3ZVI1wn6" in tsv.output and "CJqhXL1pzFV2qOuS1b" not in tsv.output  # rows 1-2 only

    js = runner.invoke(cli, ["show", str(shared_data / "multi/wrccdc-2018/zeek-json/ssh.json.gz"), "-n", "1"])
    assert js.exit_code == 0, js.output
    assert "format:   Zeek JSON (gzip)" in js.output and "log type: ssh" in js.output
    assert re.search(r"^auth_success\s+bool\s+boolean$", js.output, re.M)

    empty = runner.invoke(cli, ["show", str(shared_data / "edge/zat-http-header-only-zero-rows.log")])
    assert empty.exit_code == 0 and "(no rows: the file has a header only)" in empty.output


def test_show_bad_file_is_one_line(shared_data: Path) -> None:
    proc = _run("show", str(shared_data / NOT_ZEEK))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {shared_data / NOT_ZEEK}: not a Zeek log")


def _sample_rows() -> dict[str, int]:
    """Rows per log type of data/logs, from the table in data/README.md."""
    rows: dict[str, int] = {}
    for line in (ROOT / "data" / "README.md").read_text().splitlines():
        m = re.match(r"^\| `logs/[^`]+` \| (\S+) [^|]*\| (\d+) \|", line)
        if m:
            rows[m.group(1)] = rows.get(m.group(1), 0) + int(m.group(2))
    return rows


def test_demo_ingests_the_sample(tmp_path: Path) -> None:
    env = {"WATCHTOWER_DATA_DIR": str(ROOT / "data"), "WATCHTOWER_STORE_DIR": str(tmp_path / "store")}
    result = CliRunner().invoke(cli, ["demo", "--ingest-only"], env=env)
    assert result.exit_code == 0, result.output
    expected = _sample_rows()
    assert sum(expected.values()) == 13898
    summary = store.summary(tmp_path / "store").set_index("log_type")
    assert summary["rows"].to_dict() == expected
    assert re.search(r"^conn\s+6,285\s+6\s+1970-01-01 00:00\s+2022-09-29 15:47$", result.output, re.M)
    assert f"store: {(tmp_path / 'store').resolve()}" in result.output
    assert set(store.load(tmp_path / "store", "ssh")["_sensor"]) == {"sample"}

    again = CliRunner().invoke(cli, ["demo", "--ingest-only"], env=env)
    assert again.exit_code == 0 and "ingested 0 file(s) (0 rows), 44 already in the store" in again.output


def test_train_supervised_without_paths_uses_the_labelled_captures(tmp_path: Path) -> None:
    """`watchtower train --supervised` and phase 4 share models.training_files: data_dir/labelled/*/conn*.labeled."""
    import shutil

    from watchtower_lib import models
    from watchtower_lib.errors import ModelError
    from watchtower_lib.labels import read_labelled

    shipped = sorted((ROOT / "data/labelled").glob("*/conn.log.labeled"))
    assert models.training_files(ROOT / "data") == [str(p) for p in shipped] and len(shipped) == 2
    source = ROOT / "data/labelled/008-ctu-normal-40-day1"
    capture = tmp_path / "data/labelled/008-ctu-normal-40-day1"
    capture.mkdir(parents=True)
    for name in ("conn.log.labeled", "http.log.labeled", "labels.config"):  # only the conn log is for training
        shutil.copy(source / name, capture)
    assert models.training_files(tmp_path / "data") == [str(capture / "conn.log.labeled")]
    assert models.training_files(tmp_path / "data", [source / "conn.log.labeled"]) == [str(source / "conn.log.labeled")]
    (tmp_path / "watchtower.yml").write_text("data_dir: data\nmodels_dir: models\n")
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "watchtower.yml"), "train", "--supervised"])
    assert result.exit_code == 0, result.output
    (trained,) = models.versions(tmp_path / "models", "supervised")
    labels = read_labelled(capture / "conn.log.labeled")["label"]
    assert [f["path"] for f in trained.card["training"]["files"]] == [str(capture / "conn.log.labeled")]
    assert trained.card["training"]["rows"] == int((labels != "unknown").sum()) == 5603
    assert f"trained on {5603:,} rows" in result.output
    # what the forest looks at most (phase 4's figure): every feature's importance, named, largest first
    pipeline = trained.load()
    every = models.feature_importances(pipeline, None)
    assert len(every) == len(models.feature_names(pipeline)) and abs(every.sum() - 1.0) < 1e-9
    assert every.is_monotonic_decreasing and every.index.name == "feature"
    top = models.feature_importances(pipeline)
    assert len(top) == 20 and top.equals(every.head(20)) and top.iloc[0] > top.iloc[-1] > 0
    forest = pipeline[-1]
    assert top.iloc[0] == forest.feature_importances_.max()
    assert models.feature_names(pipeline)[int(forest.feature_importances_.argmax())] == top.index[0]
    with pytest.raises(ModelError, match="no feature importances"):
        models.feature_importances(models.build_unsupervised().fit(read_labelled(capture / "conn.log.labeled")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.yml").write_text("data_dir: empty\nmodels_dir: models\n")
    failed = _run("--config", str(tmp_path / "empty.yml"), "train", "--supervised")
    assert failed.returncode == 2 and "no labelled conn logs" in failed.stderr and "Traceback" not in failed.stderr
