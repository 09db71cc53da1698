"""Scheduling: cron parsing, the cross-process job lock, failures that do not stop the scheduler,
and the printed crontab lines and systemd units -- checked by systemd's own parser and by running them.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from conftest import require
from watchtower_lib import config, schedule
from watchtower_lib.config import ScheduleJob
from watchtower_lib.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def notebook(folder: Path, name: str, *cells: str) -> None:
    params = 'config_path: str = ""  # config\noutput_dir: str = ""  # run folder'
    nb = new_notebook(cells=[new_code_cell(params, metadata={"tags": ["parameters"]}),
                             *(new_code_cell(c) for c in cells)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{name}.ipynb")


def settings_for(tmp_path: Path, jobs: str = "") -> config.Settings:
    path = tmp_path / "watchtower.yml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(f"data_dir: {ROOT / 'data'}\n" + (f"schedule:\n{jobs}" if jobs else ""), encoding="utf-8")
    return config.load(path, env={})


def runs_of(settings: config.Settings) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(settings.runs_dir).glob("*/run.json"))]


# ------------------------------------------------------------------ cron expressions
def test_cron_weekday_numbers_follow_crontab_not_apscheduler():
    # APScheduler 3 counts Monday as 0 and its from_crontab passes "1" through: that fires on Tuesdays
    now = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.timezone.utc)  # a Thursday
    fire = schedule.cron_trigger("0 6 * * 1").get_next_fire_time(None, now)
    assert fire.strftime("%a %H:%M") == "Mon 06:00" and fire.date() == dt.date(2026, 12, 7)
    assert schedule.cron_trigger("0 6 * * 0").get_next_fire_time(None, now).strftime("%a") == "Sun"
    assert schedule.cron_trigger("0 6 * * 7").get_next_fire_time(None, now).strftime("%a") == "Sun"
    assert schedule.cron_trigger("5 4 * * sun").get_next_fire_time(None, now).strftime("%a %H:%M") == "Sun 04:05"


def test_cron_day_and_weekday_match_either_as_in_cron():
    now = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.timezone.utc)
    fire = schedule.cron_trigger("30 2 1,15 * mon-fri").get_next_fire_time(None, now)
    assert fire.date() == dt.date(2026, 12, 4)  # Friday the 4th: the weekday rule, not the 15th


def test_cron_seconds_field_and_errors():
    now = dt.datetime(2026, 12, 3, 12, 0, 0, 500000, tzinfo=dt.timezone.utc)
    fire = schedule.cron_trigger("*/2 * * * * *").get_next_fire_time(None, now)
    assert fire - now < dt.timedelta(seconds=2)
    for bad in ("* * * *", "61 * * * *", "0 6 * * funday", "*/0 * * * *"):
        with pytest.raises(ConfigError, match="cron"):
            schedule.cron_trigger(bad)


# ------------------------------------------------------------------ systemd, checked by systemd
CRONS = ["*/15 * * * *", "0 * * * *", "0 6 * * 1", "30 2 1,15 * mon-fri", "0-30/10 8-18 * jan,jul 7", "5 4 * * sun",
         "0 0 29 2 *"]


def _elapses(expressions: list[str], n: int) -> list[str]:
    out = subprocess.run([SYSTEMD_ANALYZE, "calendar", f"--iterations={n}", *expressions],
                         capture_output=True, text=True, check=True).stdout
    times = re.findall(r"(?:Next elapse|Iter\. #\d+): \w{3} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", out)
    return sorted(set(times))[:n]


@pytest.mark.parametrize("cron", CRONS)
def test_on_calendar_fires_when_the_scheduler_does(cron):
    require("SYSTEMD", SYSTEMD_ANALYZE is not None, "systemd-analyze, to check the OnCalendar= values")
    trigger = schedule.cron_trigger(cron)
    when, ours = dt.datetime.now().astimezone(), []
    for _ in range(4):
        when = trigger.get_next_fire_time(None, when + dt.timedelta(seconds=1))
        ours.append(when.strftime("%Y-%m-%d %H:%M:%S"))
    assert _elapses(schedule.on_calendar(cron), 4) == ours


def test_systemd_units_verify_and_crontab(tmp_path):
    require("SYSTEMD", SYSTEMD_ANALYZE is not None, "systemd-analyze, to verify the units")
    jobs = "".join(f"  - {{name: job{i}, phases: '1', cron: '{c}'}}\n" for i, c in enumerate(CRONS))
    s = settings_for(tmp_path, jobs)
    units = schedule.systemd_units(s)
    assert sorted(units) == sorted([f"watchtower-job{i}.{k}" for i in range(len(CRONS)) for k in ("service", "timer")])
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    done = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", *sorted(str(p) for p in tmp_path.glob("watchtower-*"))],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "Failed" not in done.stderr, done.stderr
    assert "OnCalendar=*-*-01,15 02:30:00\nOnCalendar=Mon,Tue,Wed,Thu,Fri *-*-* 02:30:00\n" in units["watchtower-job3.timer"]
    assert f"--config {s.config_path} schedule --run-job job2" in units["watchtower-job2.service"]
    lines = [line for line in schedule.crontab(s).splitlines() if line and not line.startswith(("#", "SHELL"))]
    assert [line.split(" cd ")[0] for line in lines] == CRONS
    seconds = settings_for(tmp_path / "s", "  - {name: fast, phases: '1', cron: '*/5 * * * * *'}\n")
    with pytest.raises(ConfigError, match="seconds field"):
        schedule.crontab(seconds)


# ------------------------------------------------------------------ the lock, for real
def test_lock_held_by_another_process_skips_the_run(tmp_path):
    nbs = tmp_path / "nbs"
    notebook(nbs, "01_collect", "x = 1")
    s = settings_for(tmp_path)
    job = ScheduleJob("collect", "1", "* * * * *")
    lock = schedule.lock_path(s, "collect")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, sys, time, pathlib
        p = pathlib.Path({str(lock)!r}); p.parent.mkdir(parents=True, exist_ok=True)
        f = open(p, "a+"); fcntl.flock(f, fcntl.LOCK_EX); print("held", flush=True); time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        outcome = schedule.run_job(s, job, notebooks=nbs)
        assert outcome.status == "skipped" and outcome.run_id is None
        assert runs_of(s) == []
    finally:
        holder.kill()
        holder.wait()
    outcome = schedule.run_job(s, job, notebooks=nbs)  # the holder died: its lock went with it
    assert outcome.status == "ok" and [r["job"] for r in runs_of(s)] == ["collect"]


def test_cron_lines_run_the_real_phase_once_even_when_started_twice(tmp_path):
    """Two copies of the printed cron line started together: one runs phase 1, the other is skipped."""
    s = settings_for(tmp_path, "  - {name: collect, phases: '1', cron: '*/15 * * * *'}\n")
    (line,) = [ln for ln in schedule.crontab(s).splitlines() if ln.startswith("*/15")]
    command = line[len("*/15 * * * * "):]
    procs = [subprocess.Popen(["sh", "-c", command]) for _ in range(2)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    (run,) = runs_of(s)
    assert run["status"] == "ok" and run["job"] == "collect" and run["phases"][0]["name"] == "01_collect"
    record = json.loads((Path(run["run_dir"]) / "01_collect.json").read_text())
    assert record["sensors"] == 0 and record["files"] == 0  # no sensors configured: it says so, records 0
    log_text = (s.runs_dir / "schedule-collect.log").read_text()
    assert "job collect: ok" in log_text and "job collect: skipped" in log_text


def test_scheduler_never_overlaps_a_job_and_survives_failures(tmp_path, caplog):
    nbs = tmp_path / "nbs"
    notebook(nbs, "01_collect", "import time\ntime.sleep(1.5)")
    notebook(nbs, "02_parse", "raise ValueError('bad input')")
    s = settings_for(tmp_path)
    jobs = [ScheduleJob("slow", "1", "* * * * * *"), ScheduleJob("broken", "2", "* * * * * *")]
    stop = threading.Event()

    def enough_runs() -> None:  # stop once each job finished twice (a loaded machine starts kernels slowly)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not stop.is_set():
            done = [r for r in runs_of(s) if r["status"] != "running"]
            if all(sum(r["job"] == name for r in done) >= 2 for name in ("slow", "broken")):
                break
            time.sleep(0.2)
        stop.set()

    watcher = threading.Thread(target=enough_runs)
    watcher.start()
    with caplog.at_level("INFO", logger="watchtower_lib.schedule"):
        outcomes = schedule.schedule(s, jobs=jobs, stop=stop, notebooks=nbs)
    watcher.join()
    by_job = {name: [o for o in outcomes if o.job == name] for name in ("slow", "broken")}
    assert len(by_job["broken"]) >= 2 and all(o.status == "failed" for o in by_job["broken"])
    assert "ValueError: bad input" in by_job["broken"][0].error and "02_parse.ipynb" in by_job["broken"][0].error
    assert len(by_job["slow"]) >= 2 and all(o.status == "ok" for o in by_job["slow"])
    spans = sorted((r["started"], r["finished"]) for r in runs_of(s) if r["job"] == "slow")
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:])), spans  # one at a time
    assert any("job broken failed" in r.message for r in caplog.records)
    with pytest.raises(ConfigError, match="no schedule jobs"):
        schedule.schedule(s)


def test_cli_print_and_run_job_errors(tmp_path):
    from click.testing import CliRunner

    from watchtower_lib.cli import cli

    s = settings_for(tmp_path, "  - {name: detect, phases: '3-6', cron: '0 * * * *'}\n")
    result = CliRunner().invoke(cli, ["--config", str(s.config_path), "schedule", "--print", "crontab"])
    assert result.exit_code == 0 and "0 * * * * cd " in result.output and "--run-job detect" in result.output
    result = CliRunner().invoke(cli, ["--config", str(s.config_path), "schedule", "--print", "systemd"])
    assert "# ---- watchtower-detect.timer ----" in result.output and "OnCalendar=*-*-* *:00:00" in result.output
    result = CliRunner().invoke(cli, ["--config", str(s.config_path), "schedule", "--print", "systemd",
                                      "--write", str(tmp_path / "units")])
    assert result.exit_code == 0 and (tmp_path / "units/watchtower-detect.service").is_file()
    from watchtower_lib.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(s.config_path), "schedule", "--run-job", "nope"])
    assert exit_info.value.code == 2
