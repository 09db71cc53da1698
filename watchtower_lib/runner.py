"""Run the pipeline's notebooks with papermill, one executed notebook and one small JSON per phase.

Why notebooks: an analyst opens the executed ``runs/<run-id>/03_features.ipynb`` and sees exactly
what ran, with its tables and plots; a failure points at a cell. Each phase notebook calls
:func:`record_phase` at its end to leave its figures (rows, alerts, model version, ...) in
``NN_name.json`` beside the executed notebook; later phases and the weekly report read them with
:func:`read_phase`. The run as a whole is described by ``run.json`` (parameters, period, and the
times and status of each phase), rewritten after every phase so that even a killed run leaves a record.

The period rule: ``--week 2026-W48`` is Monday 00:00 UTC to the next Monday; ``--start/--end`` is
``[start, end)``. With neither, the period is the ISO week that contains the newest ``conn`` day in
the store (any log type when there is no conn), decided just before the first phase that needs a
period -- that is after phase 2 has ingested -- so ``watchtower run`` on old sample data (2022) reports
on the week the data is from, not on an empty current week.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import ConfigError, PhaseError, StoreError, WatchtowerError

log = logging.getLogger(__name__)

#: phase number -> notebook name (``notebooks/<name>.ipynb``); 0 is the explorer, not part of ``1-7``.
PHASES: dict[int, str] = {
    0: "00_explore", 1: "01_collect", 2: "02_parse", 3: "03_features", 4: "04_supervised",
    5: "05_unsupervised", 6: "06_detect", 7: "07_weekly_report",
}
#: phases that work on a period of the store (1 collects and 2 ingests everything new)
NEEDS_PERIOD = frozenset({0, 3, 4, 5, 6, 7})
REPO_ROOT = Path(__file__).resolve().parents[1]
UTC = dt.timezone.utc

ProgressCallback = Callable[[str, "PhaseRecord"], None]


# ----------------------------------------------------------------------------------------------
# periods


@dataclass(frozen=True)
class Period:
    """A half-open UTC interval ``[start, end)`` with a label used in file names (``2022-W39``)."""

    start: dt.datetime
    end: dt.datetime

    @property
    def label(self) -> str:
        iso = self.start.isocalendar()
        if (self.start == _week_start(self.start) and self.end - self.start == dt.timedelta(days=7)):
            return f"{iso.year}-W{iso.week:02d}"
        last = (self.end - dt.timedelta(microseconds=1)).date()
        return f"{self.start:%Y-%m-%d}_{last:%Y-%m-%d}"

    def previous(self) -> Period:
        """The period of the same length just before this one (the report's comparison week)."""
        length = self.end - self.start
        return Period(self.start - length, self.start)

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "label": self.label}


def _week_start(when: dt.datetime) -> dt.datetime:
    day = when.astimezone(UTC).date()
    monday = day - dt.timedelta(days=day.weekday())
    return dt.datetime(monday.year, monday.month, monday.day, tzinfo=UTC)


def _parse_time(text: str | dt.datetime | dt.date, what: str) -> dt.datetime:
    if isinstance(text, dt.datetime):
        value = text
    elif isinstance(text, dt.date):
        value = dt.datetime(text.year, text.month, text.day)
    else:
        try:
            value = dt.datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{what} {text!r} is not an ISO date or time "
                              f"(e.g. 2026-11-23 or 2026-11-23T06:00:00Z)") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def week_period(week: str) -> Period:
    """``"2026-W48"`` -> Monday 00:00 UTC of that ISO week to the following Monday."""
    match = re.fullmatch(r"\s*(\d{4})-?W(\d{1,2})\s*", week, flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"week {week!r} is not an ISO week such as 2026-W48")
    year, number = int(match[1]), int(match[2])
    try:
        monday = dt.date.fromisocalendar(year, number, 1)
    except ValueError:
        raise ConfigError(f"week {week!r}: {year} has no ISO week {number}") from None
    start = dt.datetime(monday.year, monday.month, monday.day, tzinfo=UTC)
    return Period(start, start + dt.timedelta(days=7))


def newest_day(store_dir: Path) -> dt.date | None:
    """The newest ``date=`` partition of the store: conn first, else any log type; None if empty."""
    store_dir = Path(store_dir)
    if not store_dir.is_dir():
        return None
    candidates = [store_dir / "conn"] + sorted(p for p in store_dir.iterdir() if p.is_dir())
    for log_dir in candidates:
        days = []
        for part in log_dir.glob("date=*") if log_dir.is_dir() else ():
            try:
                if any(part.iterdir()):
                    days.append(dt.date.fromisoformat(part.name[len("date="):]))
            except ValueError:
                continue
        if days:
            return max(days)
    return None


def resolve_period(settings: Settings, start: str | dt.datetime | None = None,
                   end: str | dt.datetime | None = None, week: str | None = None) -> Period:
    """The period a run or a notebook works on (see the module docstring for the rule).

    Raises
    ------
    ConfigError
        A week together with start/end, only one of start/end, or end not after start.
    StoreError
        No period given and the store holds no data to take the newest week from.
    """
    start = start or None
    end = end or None
    if week:
        if start or end:
            raise ConfigError("give either a week or start/end, not both")
        return week_period(week)
    if start or end:
        if not (start and end):
            raise ConfigError("give both start and end (or a week, or neither for the newest week)")
        period = Period(_parse_time(start, "start"), _parse_time(end, "end"))
        if period.end <= period.start:
            raise ConfigError(f"end {period.end.isoformat()} is not after start {period.start.isoformat()}")
        return period
    day = newest_day(settings.store_dir)
    if day is None:
        raise StoreError(f"the store {settings.store_dir} holds no data, so there is no newest week to "
                         f"work on: ingest first (phase 2, `watchtower ingest`) or give --week/--start/--end")
    start_of_week = _week_start(dt.datetime(day.year, day.month, day.day, tzinfo=UTC))
    return Period(start_of_week, start_of_week + dt.timedelta(days=7))


def parse_phases(spec: str | int | list[int] | tuple[int, ...]) -> list[int]:
    """``"1-7"``, ``"2,3,6"``, ``"1-3,6"`` or ``3`` -> sorted phase numbers (0 is the explorer)."""
    if isinstance(spec, int):
        spec = str(spec)
    if isinstance(spec, (list, tuple)):
        numbers = set(int(p) for p in spec)
    else:
        numbers = set()
        for part in str(spec).replace(" ", "").split(","):
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not match:
                raise ConfigError(f"phases {spec!r}: {part!r} is not a number or a range such as 1-7")
            low, high = int(match[1]), int(match[2] or match[1])
            if high < low:
                raise ConfigError(f"phases {spec!r}: range {part!r} runs backwards")
            numbers.update(range(low, high + 1))
    unknown = sorted(n for n in numbers if n not in PHASES)
    if unknown or not numbers:
        raise ConfigError(f"phases {spec!r}: phases are 0-7 (0 explore, 1 collect ... 7 weekly report)")
    return sorted(numbers)


# ----------------------------------------------------------------------------------------------
# phase records (called from the notebooks)


def _jsonable(value: Any) -> Any:
    """Numbers, text, lists and dicts as JSON; numpy/pandas scalars, times and paths made plain."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "isoformat"):  # pandas Timestamp
        return value.isoformat()
    if hasattr(value, "item"):  # numpy / pandas scalar
        try:
            return _jsonable(value.item())
        except (ValueError, TypeError):
            pass
    if hasattr(value, "to_dict"):  # a small Series or DataFrame
        return _jsonable(value.to_dict())
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (ImportError, TypeError, ValueError):
        pass
    return str(value)


def record_phase(output_dir: str | Path | None, phase: str, **figures: Any) -> Path | None:
    """Write ``<output_dir>/<phase>.json`` with this phase's figures; called at a notebook's end.

    Parameters
    ----------
    output_dir : the run folder (the notebook's ``output_dir`` parameter). Empty or None, as when
        a notebook is run by hand, records nothing (and says so in the log).
    phase : the notebook name, e.g. ``"03_features"``.
    **figures : JSON-able figures (numpy/pandas scalars, times and paths are converted).

    Returns
    -------
    The path written, or None.
    """
    if not output_dir:
        log.info("no output_dir: %s figures not recorded", phase)
        return None
    path = Path(output_dir) / f"{phase}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"phase": phase, "recorded_at": dt.datetime.now(UTC).isoformat(), **_jsonable(figures)}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    log.info("recorded %s", path)
    return path


def read_phase(output_dir: str | Path | None, phase: str) -> dict[str, Any]:
    """The figures an earlier phase recorded in this run (``{}`` when it did not run or record)."""
    if not output_dir:
        return {}
    path = Path(output_dir) / f"{phase}.json"
    if not path.is_file():
        log.info("no record of phase %s in %s", phase, output_dir)
        return {}
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def read_phases(output_dir: str | Path | None) -> dict[str, dict[str, Any]]:
    """Every phase record of a run, by phase name (the report's "this run" table)."""
    return {name: rec for name in PHASES.values() if (rec := read_phase(output_dir, name))}


# ----------------------------------------------------------------------------------------------
# run records


@dataclass
class PhaseRecord:
    """One executed phase as written in ``run.json``."""

    number: int
    name: str
    notebook: str  # the executed notebook
    status: str = "pending"  # pending, running, ok, failed
    started: str | None = None
    finished: str | None = None
    seconds: float | None = None
    error: str | None = None
    cell_index: int | None = None


@dataclass
class RunRecord:
    """A run: its parameters, period and phases; saved as ``runs/<run-id>/run.json``."""

    run_id: str
    run_dir: Path
    phases: list[PhaseRecord]
    parameters: dict[str, Any] = field(default_factory=dict)
    period: dict[str, str] | None = None
    status: str = "running"  # running, ok, failed
    started: str = field(default_factory=lambda: dt.datetime.now(UTC).isoformat())
    finished: str | None = None
    job: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def notebook(self, phase: int | str) -> Path:
        """The executed notebook of a phase (by number or name)."""
        name = PHASES[phase] if isinstance(phase, int) else phase
        return self.run_dir / f"{name}.ipynb"

    def to_dict(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        body["run_dir"] = str(self.run_dir)
        return body

    def save(self) -> Path:
        path = self.run_dir / "run.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(_jsonable(self.to_dict()), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> RunRecord:
        path = Path(run_dir) / "run.json"
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WatchtowerError(f"{path}: not a readable run record ({exc})") from None
        body["run_dir"] = Path(run_dir)
        body["phases"] = [PhaseRecord(**p) for p in body.get("phases", [])]
        return cls(**body)


def list_runs(runs_dir: str | Path) -> list[RunRecord]:
    """Every recorded run under ``runs_dir``, oldest first."""
    runs = []
    for path in sorted(Path(runs_dir).glob("*/run.json")):
        try:
            runs.append(RunRecord.load(path.parent))
        except WatchtowerError as exc:
            log.warning("skipping %s", exc)
    return sorted(runs, key=lambda r: r.started)


# ----------------------------------------------------------------------------------------------
# running


def notebooks_dir() -> Path:
    """Where the phase notebooks live: ``notebooks/`` of the repository this package runs from."""
    return REPO_ROOT / "notebooks"


def write_settings(settings: Settings, path: Path) -> Path:
    """Write the effective settings as YAML, so every kernel of a run sees exactly these."""
    import yaml

    body = _jsonable({k: v for k, v in dataclasses.asdict(settings).items() if k != "config_path"})
    path.write_text("# effective settings of this run (written by watchtower_lib.runner)\n"
                    + yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path


def _new_run_id(job: str | None) -> str:
    stamp = dt.datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{job + '-' if job else ''}{secrets.token_hex(3)}"


def _failing_cell(notebook: Path) -> str:
    """The first line of the cell whose output is the error, to show in the message."""
    if not notebook.is_file():
        return ""
    try:
        import nbformat

        cells = nbformat.read(notebook, as_version=4).cells
    except (OSError, ValueError):
        return ""
    for cell in cells:
        if any(out.get("output_type") == "error" for out in cell.get("outputs", ())):
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            return first if len(first) <= 80 else first[:77] + "..."
    return ""


def run_phases(settings: Settings, phases: str | list[int] = "1-7", start: str | dt.datetime | None = None,
               end: str | dt.datetime | None = None, *, week: str | None = None,
               parameters: Mapping[str, Any] | None = None, run_id: str | None = None,
               job: str | None = None, notebooks: Path | None = None, kernel_name: str = "python3",
               progress: ProgressCallback | None = None, progress_bar: bool = False,
               execution_timeout: int | None = None) -> RunRecord:
    """Execute phase notebooks in order into ``<runs_dir>/<run-id>/`` and record the run.

    Parameters
    ----------
    settings : the configuration; written to ``<run>/settings.yml`` and passed to every notebook
        as its ``config_path``, so each kernel sees the same settings.
    phases : ``"1-7"``, ``"2,6"``, or a list of numbers (see :func:`parse_phases`).
    start, end, week : the period (see :func:`resolve_period`); none means the newest week in the
        store, decided before the first phase that needs one.
    parameters : extra notebook parameters (e.g. ``labelled_path``); each notebook gets the ones
        its ``parameters`` cell declares.
    run_id, job : the run folder name (default: UTC time and a random suffix) and the scheduler
        job that started it, if any.
    notebooks : the folder holding ``NN_name.ipynb`` (default :func:`notebooks_dir`).
    progress : called with ``("start"|"ok"|"failed", PhaseRecord)`` around each phase.
    progress_bar : papermill's per-cell progress bar (for a terminal).
    execution_timeout : seconds one cell may run.

    Returns
    -------
    RunRecord
        The finished run, ``status == "ok"``.

    Raises
    ------
    PhaseError
        A phase failed: the run stops there, ``run.json`` says so, and the message names the
        executed notebook and the failing cell.
    ConfigError, StoreError
        Bad phases or period, or no period given and an empty store.
    """
    import papermill as pm

    numbers = parse_phases(phases)
    source = Path(notebooks) if notebooks is not None else notebooks_dir()
    missing = [PHASES[n] for n in numbers if not (source / f"{PHASES[n]}.ipynb").is_file()]
    if missing:
        raise ConfigError(f"no notebook {', '.join(m + '.ipynb' for m in missing)} in {source}")
    period = resolve_period(settings, start, end, week) if (week or start or end) else None
    run_id = run_id or _new_run_id(job)
    run_dir = Path(settings.runs_dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    config_path = write_settings(settings, run_dir / "settings.yml")
    extra = dict(parameters or {})
    record = RunRecord(
        run_id=run_id, run_dir=run_dir, job=job,
        phases=[PhaseRecord(n, PHASES[n], str(run_dir / f"{PHASES[n]}.ipynb")) for n in numbers],
        parameters={"phases": ",".join(map(str, numbers)), "config_path": str(config_path),
                    "source_config": str(settings.config_path) if settings.config_path else None,
                    **extra},
        period=period.to_dict() if period else None,
    )
    record.save()
    used: set[str] = set()
    for phase in record.phases:
        if period is None and phase.number in NEEDS_PERIOD:
            try:
                period = resolve_period(settings)
            except WatchtowerError as exc:
                _fail(record, phase, str(exc))
                raise
            record.period = period.to_dict()
            log.info("period: %s (%s .. %s), the newest week in the store", period.label,
                     period.start.isoformat(), period.end.isoformat())
        input_path = source / f"{phase.name}.ipynb"
        declared = pm.inspect_notebook(str(input_path))
        offered = {"config_path": str(config_path), "output_dir": str(run_dir), "run_id": run_id,
                   **({"start": period.start.isoformat(), "end": period.end.isoformat()} if period else {}),
                   **extra}
        params = {k: v for k, v in offered.items() if k in declared}
        used.update(params)
        phase.status, phase.started = "running", dt.datetime.now(UTC).isoformat()
        record.save()
        if progress:
            progress("start", phase)
        began = time.monotonic()
        try:
            pm.execute_notebook(str(input_path), phase.notebook, parameters=params, kernel_name=kernel_name,
                                progress_bar=progress_bar, cwd=str(run_dir), execution_timeout=execution_timeout,
                                report_mode=False, request_save_on_cell_execute=True)
        except pm.PapermillExecutionError as exc:
            phase.seconds = round(time.monotonic() - began, 3)
            where = _failing_cell(Path(phase.notebook))
            message = (f"phase {phase.name} failed in cell {exc.cell_index} (In [{exc.exec_count}]"
                       f"{f': {where}' if where else ''}): {exc.ename}: {exc.evalue}\n"
                       f"  executed notebook (traceback in that cell): {phase.notebook}")
            _fail(record, phase, message, exc.cell_index)
            if progress:
                progress("failed", phase)
            raise PhaseError(phase.name, phase.notebook, message, cell_index=exc.cell_index,
                             ename=exc.ename, evalue=exc.evalue) from None
        except Exception as exc:  # kernel died, timeout, unreadable notebook: still a failed phase
            phase.seconds = round(time.monotonic() - began, 3)
            message = (f"phase {phase.name} failed: {type(exc).__name__}: {exc}\n"
                       f"  executed notebook: {phase.notebook}")
            _fail(record, phase, message)
            if progress:
                progress("failed", phase)
            raise PhaseError(phase.name, phase.notebook, message, ename=type(exc).__name__,
                             evalue=str(exc)) from exc
        phase.seconds = round(time.monotonic() - began, 3)
        phase.status, phase.finished = "ok", dt.datetime.now(UTC).isoformat()
        _add_timing(run_dir, phase)
        record.save()
        if progress:
            progress("ok", phase)
    unused = sorted(set(extra) - used)
    if unused:
        log.warning("parameters not declared by any notebook of this run: %s", ", ".join(unused))
    record.status, record.finished = "ok", dt.datetime.now(UTC).isoformat()
    record.save()
    return record


def _fail(record: RunRecord, phase: PhaseRecord, message: str, cell_index: int | None = None) -> None:
    now = dt.datetime.now(UTC).isoformat()
    phase.status, phase.finished, phase.error, phase.cell_index = "failed", now, message, cell_index
    record.status, record.finished = "failed", now
    record.save()


def _add_timing(run_dir: Path, phase: PhaseRecord) -> None:
    """Add the runner's wall time (kernel start included) to the phase's own record."""
    figures = read_phase(run_dir, phase.name)
    if figures:
        figures["seconds"] = phase.seconds
        record_phase(run_dir, phase.name, **{k: v for k, v in figures.items() if k != "phase"})
