"""The runner: phases and periods, phase records, and real papermill runs of small notebooks.

The notebooks here are written by the tests (a parameters cell and a line or two), so each
papermill run costs one kernel start; tests/test_notebooks.py runs the real phase notebooks.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from nbformat.v4 import new_code_cell, new_notebook

from watchtower_lib import config, runner, store
from watchtower_lib.cli import cli
from watchtower_lib.errors import ConfigError, PhaseError, StoreError

ROOT = Path(__file__).resolve().parents[1]
UTC = dt.timezone.utc
PARAMS = '''config_path: str = ""  # config
output_dir: str = ""  # run folder
start: str = ""  # period start
end: str = ""  # period end'''


def write_notebook(folder: Path, name: str, *cells: str, params: str = PARAMS) -> Path:
    nb = new_notebook(cells=[new_code_cell(params, metadata={"tags": ["parameters"]}),
                             *(new_code_cell(c) for c in cells)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def settings_for(tmp_path: Path, **extra) -> config.Settings:
    cfg = tmp_path / "watchtower.yml"
    cfg.write_text("".join(f"{k}: {v}\n" for k, v in extra.items()), encoding="utf-8")
    return config.load(cfg, env={})


# ------------------------------------------------------------------ phases and periods
@pytest.mark.parametrize("spec, expected", [
    ("1-7", [1, 2, 3, 4, 5, 6, 7]), ("2,6", [2, 6]), ("1-3,6", [1, 2, 3, 6]), ("7", [7]), (3, [3]),
    ([6, 2], [2, 6]), (" 0 - 1 ".replace(" ", ""), [0, 1]),
])
def test_parse_phases(spec, expected):
    assert runner.parse_phases(spec) == expected


@pytest.mark.parametrize("spec", ["8", "1-9", "7-1", "a", "", "1;2"])
def test_parse_phases_rejects(spec):
    with pytest.raises(ConfigError, match="phases"):
        runner.parse_phases(spec)


def test_week_period_is_monday_to_monday_utc():
    period = runner.week_period("2026-W48")
    assert period.start == dt.datetime(2026, 11, 23, tzinfo=UTC)
    assert period.end == dt.datetime(2026, 11, 30, tzinfo=UTC)
    assert period.label == "2026-W48"
    assert period.previous().label == "2026-W47"
    assert runner.week_period("2020-w1").start == dt.datetime(2019, 12, 30, tzinfo=UTC)  # ISO week 1 of 2020
    with pytest.raises(ConfigError, match="ISO week"):
        runner.week_period("2026-48")
    assert runner.week_period("2026-W53").end == dt.datetime(2027, 1, 4, tzinfo=UTC)  # 2026 has 53 weeks
    with pytest.raises(ConfigError, match="no ISO week 53"):
        runner.week_period("2025-W53")


def test_resolve_period_explicit_range(tmp_path):
    s = settings_for(tmp_path)
    period = runner.resolve_period(s, "2022-06-12", "2022-06-14T06:00:00Z")
    assert period.start == dt.datetime(2022, 6, 12, tzinfo=UTC)
    assert period.end == dt.datetime(2022, 6, 14, 6, tzinfo=UTC)
    assert period.label == "2022-06-12_2022-06-14"
    assert runner.resolve_period(s, week="2022-W24").label == "2022-W24"
    with pytest.raises(ConfigError, match="both start and end"):
        runner.resolve_period(s, "2022-06-12", "")
    with pytest.raises(ConfigError, match="not after"):
        runner.resolve_period(s, "2022-06-12", "2022-06-12")
    with pytest.raises(ConfigError, match="not an ISO date"):
        runner.resolve_period(s, "yesterday", "today")
    with pytest.raises(ConfigError, match="either a week"):
        runner.resolve_period(s, "2022-06-12", "2022-06-13", week="2022-W24")


def test_default_period_is_the_week_of_the_newest_conn_data(tmp_path):
    s = settings_for(tmp_path)
    with pytest.raises(StoreError, match="holds no data"):
        runner.resolve_period(s)
    # real logs: the Android RAT capture is 2020-08-07 (a Friday), the honeypot 2020-07-27..28
    store.ingest([ROOT / "data/logs/stratosphere/003-android-rat/conn.log",
                  ROOT / "data/logs/stratosphere/006-ssh-honeypot-rpi"], s.store_dir)
    assert runner.newest_day(s.store_dir) == dt.date(2020, 8, 7)
    period = runner.resolve_period(s)
    assert (period.start, period.end) == (dt.datetime(2020, 8, 3, tzinfo=UTC), dt.datetime(2020, 8, 10, tzinfo=UTC))
    assert period.label == "2020-W32"


# ------------------------------------------------------------------ phase records
def test_record_and_read_phase(tmp_path):
    path = runner.record_phase(tmp_path, "06_detect", rows=np.int64(4504), alerts=0, share=np.float64(0.25),
                               when=pd.Timestamp("2022-09-29T14:40:56Z"), by_kind=pd.Series({"known": 3}),
                               missing=pd.NA, ratio=float("nan"), where=tmp_path)
    assert path == tmp_path / "06_detect.json"
    body = json.loads(path.read_text())
    assert body["rows"] == 4504 and body["share"] == 0.25 and body["by_kind"] == {"known": 3}
    assert body["when"] == "2022-09-29T14:40:56+00:00" and body["missing"] is None and body["ratio"] is None
    assert runner.read_phase(tmp_path, "06_detect")["rows"] == 4504
    assert runner.read_phase(tmp_path, "05_unsupervised") == {}
    assert list(runner.read_phases(tmp_path)) == ["06_detect"]
    assert runner.record_phase("", "06_detect", rows=1) is None  # run by hand: nothing recorded
    assert runner.read_phase("", "06_detect") == {}


def test_phase_sources(tmp_path):
    s = settings_for(tmp_path, data_dir=str(ROOT / "data"),
                     sensors="[{name: edge, kind: local, remote_dir: /x}, {name: gone, kind: local, remote_dir: /y}]")
    (s.raw_dir / "edge").mkdir(parents=True)
    assert runner.phase_sources(s) == {"edge": [s.raw_dir / "edge"], "sample": [ROOT / "data/logs"]}
    assert runner.phase_sources(s, include_sample=False) == {"edge": [s.raw_dir / "edge"]}
    assert runner.phase_sources(s, ["a.log"], "mine") == {"mine": [Path("a.log")]}


# ------------------------------------------------------------------ real papermill runs
def test_run_phases_records_each_phase(tmp_path):
    nbs = tmp_path / "nbs"
    write_notebook(nbs, "01_collect", "import watchtower_lib as wt",
                   "wt.runner.record_phase(output_dir, '01_collect', rows=3, start=start)")
    write_notebook(nbs, "03_features", "import watchtower_lib as wt\nsettings = wt.config.load(config_path)",
                   "wt.runner.record_phase(output_dir, '03_features', rows=max_rows, store=str(settings.store_dir),"
                   " start=start, end=end, earlier=wt.runner.read_phase(output_dir, '01_collect')['rows'])",
                   params=PARAMS + '\nmax_rows: int = 10  # rows')
    s = settings_for(tmp_path)
    events = []
    record = runner.run_phases(s, "1,3", week="2022-W39", notebooks=nbs, parameters={"max_rows": 7},
                               progress=lambda event, phase: events.append((event, phase.name)))
    assert record.ok
    assert events == [("start", "01_collect"), ("ok", "01_collect"), ("start", "03_features"), ("ok", "03_features")]
    run_dir = s.runs_dir / record.run_id
    saved = json.loads((run_dir / "run.json").read_text())
    assert saved["status"] == "ok" and saved["period"]["label"] == "2022-W39"
    assert [p["status"] for p in saved["phases"]] == ["ok", "ok"]
    assert all(p["seconds"] > 0 and p["started"] < p["finished"] for p in saved["phases"])
    assert saved["parameters"]["max_rows"] == 7
    assert (run_dir / "01_collect.ipynb").is_file() and (run_dir / "03_features.ipynb").is_file()
    features = runner.read_phase(run_dir, "03_features")
    assert features["rows"] == 7 and features["earlier"] == 3  # parameter passed, earlier record read
    assert features["store"] == str(s.store_dir)  # the kernel saw the run's settings
    assert features["start"] == "2022-09-26T00:00:00+00:00" and features["end"] == "2022-10-03T00:00:00+00:00"
    assert features["seconds"] == saved["phases"][1]["seconds"]
    # 01 does not declare max_rows, so papermill was not handed it (no "unknown parameter" warning)
    injected = nbformat.read(run_dir / "01_collect.ipynb", 4).cells[1]
    assert "injected-parameters" in injected.metadata.tags and "max_rows" not in injected.source
    assert runner.RunRecord.load(run_dir).phases[1].seconds == features["seconds"]
    assert [r.run_id for r in runner.list_runs(s.runs_dir)] == [record.run_id]


def test_failing_phase_stops_the_run_and_names_the_cell(tmp_path):
    nbs = tmp_path / "nbs"
    write_notebook(nbs, "01_collect", "x = 1")
    write_notebook(nbs, "02_parse", "y = 2", "import json\njson.loads('{broken')", "z = 3")
    write_notebook(nbs, "03_features", "never = True")
    s = settings_for(tmp_path)
    with pytest.raises(PhaseError) as info:
        runner.run_phases(s, "1-3", week="2022-W39", notebooks=nbs)
    err = info.value
    assert err.phase == "02_parse" and err.ename == "JSONDecodeError"
    assert err.cell_index == 3  # parameters, injected parameters, y = 2, the failing cell
    assert Path(err.notebook).is_file() and err.notebook.endswith("02_parse.ipynb")
    assert "json.loads('{broken')" in str(err) and err.notebook in str(err)
    saved = json.loads((Path(err.notebook).parent / "run.json").read_text())
    assert saved["status"] == "failed"
    assert [p["status"] for p in saved["phases"]] == ["ok", "failed", "pending"]
    assert not (Path(err.notebook).parent / "03_features.ipynb").exists()


def test_missing_notebook_and_empty_store(tmp_path):
    s = settings_for(tmp_path)
    with pytest.raises(ConfigError, match="no notebook 04_supervised.ipynb"):
        runner.run_phases(s, "4", notebooks=tmp_path)
    write_notebook(tmp_path / "nbs", "03_features", "pass")
    with pytest.raises(StoreError, match="holds no data"):  # no period given, nothing in the store
        runner.run_phases(s, "3", notebooks=tmp_path / "nbs")
    (failed,) = runner.list_runs(s.runs_dir)
    assert failed.status == "failed" and "holds no data" in failed.phases[0].error


def test_cli_run_failure_exit_code_and_message(tmp_path):
    nbs = tmp_path / "nbs"
    write_notebook(nbs, "01_collect", "raise RuntimeError('sensor on fire')")
    s_path = tmp_path / "watchtower.yml"
    s_path.write_text("store_dir: store\n")
    result = CliRunner().invoke(cli, ["--config", str(s_path), "run", "--phases", "1", "--notebooks", str(nbs)])
    assert result.exit_code == 1
    assert "01_collect failed in cell 2" in result.output and "RuntimeError: sensor on fire" in result.output
    assert "01_collect.ipynb" in result.output
    write_notebook(nbs, "01_collect", "ok = True")
    result = CliRunner().invoke(cli, ["--config", str(s_path), "run", "--phases", "1", "--notebooks", str(nbs)])
    assert result.exit_code == 0, result.output
    assert "[1] 01_collect done in" in result.output and "run.json" in result.output


# ------------------------------------------------------------------ kernel shutdown
def _signals_at_shutdown(manager_class: type) -> list[int]:
    """Start a real kernel with ``manager_class``, shut it down, and return the signals sent to it."""
    import asyncio

    sent: list[int] = []

    class Recording(manager_class):  # type: ignore[misc,valid-type]
        async def _async_signal_kernel(self, signum: int) -> None:
            sent.append(signum)
            await super()._async_signal_kernel(signum)

    async def start_and_stop() -> None:
        km = Recording(kernel_name="python3")
        await km.start_kernel()
        try:
            client = km.client()
            client.start_channels()
            await client.wait_for_ready(timeout=60)
            client.stop_channels()
        finally:
            await km.shutdown_kernel()

    asyncio.run(start_and_stop())
    return sent


def test_runner_kernels_get_no_sigint_at_shutdown():
    """jupyter_client interrupts every kernel before shutting it down, which can make an idle
    kernel log 'KeyboardInterrupt caught in kernel' into a run; the runner's manager does not."""
    import signal

    from jupyter_client.manager import AsyncKernelManager

    assert signal.SIGINT in _signals_at_shutdown(AsyncKernelManager)  # what the stock manager does
    assert signal.SIGINT not in _signals_at_shutdown(runner.quiet_kernel_manager())
