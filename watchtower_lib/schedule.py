"""Run the pipeline on cron expressions: the config's ``schedule`` jobs, or the OS scheduler's units.

A job (``{name: detect, phases: "2-6", cron: "0 * * * *"}``) is a :func:`runner.run_phases` call on a
cron expression, recorded in ``runs/`` like any run. Three rules make it safe to leave running:

* A job never overlaps itself, even across processes (the scheduler and a cron line, two
  schedulers): each run holds an exclusive ``fcntl`` lock on ``<runs_dir>/.locks/<job>.lock``;
  a run that finds the lock taken is skipped and logged, not queued.
* A failed run is logged (with the executed notebook and failing cell) and the scheduler goes on.
* Cron expressions are read in the machine's local time, as cron and systemd read them, so the
  three ways to schedule (``watchtower schedule``, ``--print crontab``, ``--print systemd``) agree.
  A sixth leading field (seconds) is accepted by ``watchtower schedule`` only.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ScheduleJob, Settings
from .errors import ConfigError, WatchtowerError

log = logging.getLogger(__name__)

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12), ("day_of_week", 0, 7))
_MONTHS = {m: i for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1)}
_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_SYSTEMD_DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]


@dataclass(frozen=True)
class JobOutcome:
    """What one scheduled run did: ``ok``, ``failed`` or ``skipped`` (the previous run still held the lock)."""

    job: str
    status: str
    run_id: str | None = None
    error: str | None = None
    started: str = ""


def lock_path(settings: Settings, job: str) -> Path:
    return Path(settings.runs_dir) / ".locks" / f"{job}.lock"


@contextlib.contextmanager
def job_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive, non-blocking ``fcntl`` lock on ``path``; yields False if another holds it.

    The lock belongs to the open file, so it is released when this process exits or dies -- a
    crashed run never leaves a stale lock behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()} {dt.datetime.now(dt.timezone.utc).isoformat()}\n")
            handle.flush()
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def run_job(settings: Settings, job: ScheduleJob, **run_kwargs: Any) -> JobOutcome:
    """Run one job once under its lock; never raises for a failed run (it is logged and returned).

    ``run_kwargs`` go to :func:`runner.run_phases` (e.g. ``notebooks`` in tests).
    """
    from . import runner

    started = dt.datetime.now(dt.timezone.utc).isoformat()
    with job_lock(lock_path(settings, job.name)) as acquired:
        if not acquired:
            log.warning("job %s: the previous run still holds %s; this run is skipped",
                        job.name, lock_path(settings, job.name))
            return JobOutcome(job.name, "skipped", started=started)
        log.info("job %s: running phases %s", job.name, job.phases)
        try:
            record = runner.run_phases(settings, job.phases, job=job.name, **run_kwargs)
        except WatchtowerError as exc:
            log.error("job %s failed: %s", job.name, exc)
            return JobOutcome(job.name, "failed", error=str(exc), started=started)
        except Exception as exc:  # the scheduler must outlive any failure of one run
            log.exception("job %s failed unexpectedly", job.name)
            return JobOutcome(job.name, "failed", error=f"{type(exc).__name__}: {exc}", started=started)
    log.info("job %s: run %s ok", job.name, record.run_id)
    return JobOutcome(job.name, "ok", run_id=record.run_id, started=started)


def find_job(settings: Settings, name: str) -> ScheduleJob:
    for job in settings.schedule:
        if job.name == name:
            return job
    known = ", ".join(j.name for j in settings.schedule) or "none configured"
    raise ConfigError(f"no schedule job named {name!r} (jobs: {known})")


def cron_trigger(expression: str) -> Any:
    """An APScheduler ``CronTrigger`` for a 5-field crontab line, or 6 fields with seconds first."""
    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    try:
        if len(fields) in (5, 6):
            second, minute, hour, day, month, dow = (["0"] if len(fields) == 5 else []) + fields
            # APScheduler 3 counts weekdays from Monday = 0 and its from_crontab passes crontab's
            # numbers through unchanged ("0 6 * * 1" would fire on Tuesdays): convert to names.
            if day != "*" and dow != "*":  # cron fires when EITHER matches; APScheduler wants both
                from apscheduler.triggers.combining import OrTrigger

                return OrTrigger([
                    CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month),
                    CronTrigger(second=second, minute=minute, hour=hour, month=month, day_of_week=_aps_dow(dow)),
                ])
            return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                               day_of_week=_aps_dow(dow))
    except ValueError as exc:
        raise ConfigError(f"cron {expression!r}: {exc}") from None
    raise ConfigError(f"cron {expression!r} needs 5 fields (minute hour day month weekday), "
                      f"or 6 with seconds first; got {len(fields)}")


def _aps_dow(field: str) -> str:
    if field == "*":
        return field
    return ",".join(_SYSTEMD_DAYS[d].lower() for d in sorted(_expand(field, 0, 7, _DAYS, "weekday")))


def schedule(settings: Settings, *, jobs: Sequence[ScheduleJob] | None = None,
             duration: float | None = None, stop: threading.Event | None = None,
             **run_kwargs: Any) -> list[JobOutcome]:
    """Run the scheduled jobs until ``duration`` seconds pass, ``stop`` is set, or Ctrl-C.

    Parameters
    ----------
    jobs : the jobs to schedule (default: ``settings.schedule``).
    duration : stop after this many seconds (tests, a bounded run); None runs until interrupted.
    run_kwargs : passed to :func:`runner.run_phases`.

    Returns
    -------
    The outcome of every run started while the scheduler ran, in order of finishing.

    Raises
    ------
    ConfigError
        No jobs, a duplicate job name, or a bad cron expression (checked before anything runs).
    """
    from apscheduler.schedulers.background import BackgroundScheduler

    jobs = list(settings.schedule if jobs is None else jobs)
    if not jobs:
        raise ConfigError("no schedule jobs: add a `schedule:` list to the config, e.g. "
                          "[{name: detect, phases: '2-6', cron: '0 * * * *'}]")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ConfigError(f"schedule job names must be unique: {', '.join(names)}")
    from . import runner

    triggers = {}
    for job in jobs:
        runner.parse_phases(job.phases)
        triggers[job.name] = cron_trigger(job.cron)
    outcomes: list[JobOutcome] = []
    lock = threading.Lock()

    def _run(job: ScheduleJob) -> None:
        outcome = run_job(settings, job, **run_kwargs)
        with lock:
            outcomes.append(outcome)

    scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                                  "misfire_grace_time": 60},
                                    executors={"default": {"type": "threadpool", "max_workers": len(jobs)}})
    for job in jobs:
        scheduler.add_job(_run, triggers[job.name], args=[job], id=job.name, name=job.name)
    stop = stop or threading.Event()
    scheduler.start()
    for aps_job in scheduler.get_jobs():
        log.info("scheduled %s (%s): next run %s", aps_job.id, find_in(jobs, aps_job.id).cron,
                 aps_job.next_run_time)
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            stop.wait(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic())))
    except KeyboardInterrupt:
        log.info("interrupted: waiting for running jobs to finish")
    finally:
        scheduler.shutdown(wait=True)
    return outcomes


def find_in(jobs: Sequence[ScheduleJob], name: str) -> ScheduleJob:
    return next(j for j in jobs if j.name == name)


# ----------------------------------------------------------------------------------------------
# the operating system's schedulers


def _expand(field: str, low: int, high: int, names: dict[str, int], what: str) -> set[int]:
    """One crontab field -> the set of values it matches (``*/15``, ``1-5``, ``mon,wed``, ``0-30/10``)."""
    values: set[int] = set()
    for part in field.lower().split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ConfigError(f"cron {what} field {field!r}: bad step {step_text!r}")

        def number(text: str) -> int:
            if text in names:
                return names[text]
            if not text.isdigit():
                raise ConfigError(f"cron {what} field {field!r}: {text!r} is not a number")
            return int(text)

        if body == "*":
            first, last = low, high
        elif "-" in body:
            a, b = body.split("-", 1)
            first, last = number(a), number(b)
        else:
            first = number(body)
            last = high if step else first
        if not (low <= first <= high and low <= last <= high and first <= last):
            raise ConfigError(f"cron {what} field {field!r}: values must be {low}-{high}")
        values.update(range(first, last + 1, step or 1))
    if what == "weekday" and 7 in values:
        values = (values - {7}) | {0}
    return values


def on_calendar(cron: str) -> list[str]:
    """Crontab expression -> systemd ``OnCalendar=`` values (two when cron's day OR weekday rule applies)."""
    fields = cron.split()
    if len(fields) != 5:
        raise ConfigError(f"cron {cron!r}: the OS schedulers take 5 fields (minute hour day month weekday)")
    minute, hour, day, month, dow = fields
    parsed = {}
    for (name, low, high), text in zip(_FIELDS, fields):
        names = _MONTHS if name == "month" else _DAYS if name == "day_of_week" else {}
        parsed[name] = None if text == "*" else sorted(_expand(text, low, high, names, name.replace("_", " ")
                                                                if name != "day_of_week" else "weekday"))

    def join(values: list[int] | None, width: int = 2) -> str:
        return "*" if values is None else ",".join(f"{v:0{width}d}" for v in values)

    time_part = f"{join(parsed['hour'])}:{join(parsed['minute'])}:00"
    month_part = join(parsed["month"])
    dows = None if parsed["day_of_week"] is None else ",".join(_SYSTEMD_DAYS[d] for d in parsed["day_of_week"])
    if parsed["day"] is not None and dows is not None:  # cron matches either; systemd would need both
        return [f"*-{month_part}-{join(parsed['day'])} {time_part}", f"{dows} *-{month_part}-* {time_part}"]
    prefix = f"{dows} " if dows else ""
    return [f"{prefix}*-{month_part}-{join(parsed['day'])} {time_part}"]


def _command(settings: Settings, job: ScheduleJob) -> list[str]:
    exe = Path(sys.executable).parent / "watchtower"
    base = [str(exe)] if exe.exists() else [shutil.which("watchtower") or "watchtower"]
    config = ["--config", str(settings.config_path)] if settings.config_path else []
    return [*base, *config, "schedule", "--run-job", job.name]


def _workdir(settings: Settings) -> Path:
    return settings.config_path.parent if settings.config_path else Path.cwd()


def crontab(settings: Settings) -> str:
    """Crontab lines running each job through ``watchtower schedule --run-job`` (same lock, same records)."""
    if not settings.schedule:
        raise ConfigError("no schedule jobs in the config to print")
    lines = [f"# Watch Tower schedule from {settings.config_path or 'the built-in defaults'}",
             "# install: crontab -l | cat - THIS_FILE | crontab -   (times are local time)",
             "SHELL=/bin/sh"]
    for job in settings.schedule:
        if len(job.cron.split()) != 5:
            raise ConfigError(f"job {job.name}: cron {job.cron!r} has a seconds field, which cron cannot do")
        on_calendar(job.cron)  # validates the fields
        logfile = Path(settings.runs_dir) / f"schedule-{job.name}.log"
        command = " ".join(shlex.quote(p) for p in _command(settings, job))
        line = (f"cd {shlex.quote(str(_workdir(settings)))} && mkdir -p {shlex.quote(str(settings.runs_dir))} && "
                f"{command} >> {shlex.quote(str(logfile))} 2>&1")
        lines.append(f"# {job.name}: phases {job.phases}")
        lines.append(f"{job.cron} {line.replace('%', chr(92) + '%')}")  # cron turns a bare % into a newline
    return "\n".join(lines) + "\n"


def systemd_units(settings: Settings) -> dict[str, str]:
    """``{unit file name: text}``: a oneshot service and a timer per job."""
    if not settings.schedule:
        raise ConfigError("no schedule jobs in the config to print")
    units: dict[str, str] = {}
    for job in settings.schedule:
        calendars = on_calendar(job.cron)
        unit = f"watchtower-{job.name}"
        command = " ".join(_systemd_quote(p) for p in _command(settings, job))
        units[f"{unit}.service"] = (
            f"[Unit]\nDescription=Watch Tower job {job.name} (phases {job.phases})\n"
            f"Wants=network-online.target\nAfter=network-online.target\n\n"
            f"[Service]\nType=oneshot\nWorkingDirectory={_workdir(settings)}\nExecStart={command}\n"
            f"Nice=10\n")
        units[f"{unit}.timer"] = (
            f"[Unit]\nDescription=Watch Tower job {job.name} on cron \"{job.cron}\"\n\n[Timer]\n"
            + "".join(f"OnCalendar={c}\n" for c in calendars)
            + f"Persistent=true\nUnit={unit}.service\n\n[Install]\nWantedBy=timers.target\n")
    return units


def _systemd_quote(text: str) -> str:
    return f'"{text}"' if any(c in text for c in " \t\"'\\") else text
