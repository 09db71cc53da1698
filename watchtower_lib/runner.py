"""Run the pipeline's notebooks with papermill, one executed notebook and one small JSON per phase.

Why notebooks: an analyst opens the executed ``runs/<run-id>/03_features.ipynb`` and sees exactly
what ran, with its tables and plots; a failure points at a cell. Each phase notebook calls
:func:`record_phase` at its end to leave its figures (rows, alerts, model version, ...) in
``NN_name.json`` beside the executed notebook; later phases and the weekly report read them with
:func:`read_phase`. The run as a whole is described by ``run.json`` (parameters, period, and the
times and status of each phase), rewritten after every phase so that even a killed run leaves a record.

The period rule (:mod:`watchtower_lib.periods`): ``--week 2026-W48`` is Monday 00:00 UTC to the next
Monday; ``--start/--end`` is ``[start, end)``. With neither, the period is the ISO week that contains
the newest ``conn`` day in the store, decided just before the first phase that needs a period -- that
is after phase 2 has ingested -- so ``watchtower run`` on old sample data (2022) reports on the week
the data is from, not on an empty current week.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import math
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._atomic import write_text_atomic
from .config import Settings
from .errors import ConfigError, PhaseError, WatchtowerError
from .periods import (PHASES, UTC, Period, collect_figures, collect_phase, collect_problems, collect_table,
                      newest_day, parse_phases, resolve_period, sensors_note, sync_figures, week_period)

__all__ = [
    "PHASES", "NEEDS_PERIOD", "Period", "PhaseRecord", "RunRecord", "list_runs", "newest_day", "notebooks_dir",
    "parse_phases", "phase_sources", "read_phase", "read_phases", "record_phase", "resolve_period",
    "run_phases", "week_period", "collect_phase", "collect_table", "collect_problems", "collect_figures",
    "sensors_note", "sync_figures",
]

log = logging.getLogger(__name__)

#: phases that work on a period of the store (1 collects and 2 ingests everything new)
NEEDS_PERIOD = frozenset({0, 3, 5, 6, 7})
REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SENSOR = "sample"  # sensor name of the shipped sample logs (as `watchtower demo` ingests them)

ProgressCallback = Callable[[str, "PhaseRecord"], None]


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
    if hasattr(value, "to_dict"):  # a small Series or DataFrame
        return _jsonable(value.to_dict())
    if hasattr(value, "item"):  # numpy / pandas scalar
        try:
            return _jsonable(value.item())
        except (ValueError, TypeError):
            pass
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
    write_text_atomic(path, json.dumps(body, indent=2, sort_keys=False) + "\n")
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


def phase_sources(settings: Settings, inputs: list[str] | tuple[str, ...] = (), sensor: str = "local",
                  include_sample: bool = True) -> dict[str, list[Path]]:
    """What phase 2 ingests, by sensor name: ``inputs`` if given, else each configured sensor's
    ``raw_dir/<sensor>`` folder that exists, plus the shipped sample (``data_dir/logs``, sensor
    ``"sample"``) when ``include_sample`` -- so every row in the store carries the sensor it came from.
    """
    if inputs:
        return {sensor: [Path(p) for p in inputs]}
    sources = {s.name: [Path(settings.raw_dir) / s.name] for s in settings.sensors
               if (Path(settings.raw_dir) / s.name).is_dir()}
    sample = Path(settings.data_dir) / "logs"
    if include_sample and sample.is_dir():
        sources.setdefault(SAMPLE_SENSOR, []).append(sample)
    return sources


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
        return write_text_atomic(self.run_dir / "run.json", json.dumps(_jsonable(self.to_dict()), indent=2) + "\n")

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
    return write_text_atomic(path, "# effective settings of this run (written by watchtower_lib.runner)\n"
                             + yaml.safe_dump(body, sort_keys=False))


def _new_run_id(job: str | None) -> str:
    stamp = dt.datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{job + '-' if job else ''}{secrets.token_hex(3)}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ARROW = re.compile(r"^-+>\s*(\d+)\s?(.*)$")


def _failing_cell(notebook: Path) -> str:
    """``line N: <code>`` of the failing cell (from the traceback's arrow), to show in the message."""
    if not notebook.is_file():
        return ""
    try:
        import nbformat

        cells = nbformat.read(notebook, as_version=4).cells
    except (OSError, ValueError):
        return ""
    for cell in cells:
        for out in cell.get("outputs", ()):
            if out.get("output_type") != "error":
                continue
            for line in (_ANSI.sub("", "\n".join(out.get("traceback", ()))).splitlines()):
                match = _ARROW.match(line.strip())
                if match:  # the first arrow points into the cell itself
                    code = match[2].strip()
                    return f"line {match[1]}: {code if len(code) <= 80 else code[:77] + '...'}"
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
    source = Path(notebooks).resolve() if notebooks is not None else notebooks_dir()
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
            with tempfile.TemporaryDirectory(prefix="wt-kernel-") as sockets:
                # no cwd=: papermill would os.chdir the whole process, which races between the
                # scheduler's threads; the notebooks use absolute paths from the settings anyway
                pm.execute_notebook(str(input_path), phase.notebook, parameters=params, kernel_name=kernel_name,
                                    progress_bar=progress_bar, execution_timeout=execution_timeout,
                                    report_mode=False, request_save_on_cell_execute=True,
                                    config=_kernel_config(Path(sockets)),
                                    kernel_manager_class=quiet_kernel_manager())
        except pm.PapermillExecutionError as exc:
            phase.seconds = round(time.monotonic() - began, 3)
            where = _failing_cell(Path(phase.notebook))
            message = (f"phase {phase.name} failed in cell {exc.cell_index} (In [{exc.exec_count}]"
                       f"{f', {where}' if where else ''}): {exc.ename}: {exc.evalue}\n"
                       f"  executed notebook (traceback in that cell): {phase.notebook}")
            _fail(record, phase, message, exc.cell_index)
            if progress:
                progress("failed", phase)
            raise PhaseError(phase.name, phase.notebook, message, cell_index=exc.cell_index,
                             ename=exc.ename, evalue=exc.evalue) from None
        except KeyboardInterrupt:
            phase.seconds = round(time.monotonic() - began, 3)
            _fail(record, phase, f"phase {phase.name} interrupted; executed notebook so far: {phase.notebook}")
            raise
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


def _kernel_config(sockets: Path) -> Any:
    """Kernels talk over Unix sockets in a private folder where the OS has them: local only, no
    "TCP without encryption" warning per phase, and no clash between kernels started at once."""
    from traitlets.config import Config

    config = Config()
    if os.name == "posix":
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = str(sockets / "kernel")
    return config


@functools.cache
def quiet_kernel_manager() -> type:
    """jupyter_client's kernel manager, minus the SIGINT it sends before every shutdown request.

    Why: a kernel still handling a message when that SIGINT lands logs "[IPKernelApp] ERROR |
    KeyboardInterrupt caught in kernel." into the run's output (seen in ``make demo``), which
    reads like a failed phase. The interrupt is there to stop a busy kernel; papermill's
    kernels are idle at shutdown (their last cell finished, failed or timed out), and
    jupyter_client still kills a kernel that does not answer the shutdown request in time.
    """
    from jupyter_client.manager import AsyncKernelManager

    class QuietShutdownKernelManager(AsyncKernelManager):
        async def _async_interrupt_kernel(self) -> None:
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    return QuietShutdownKernelManager


def _fail(record: RunRecord, phase: PhaseRecord, message: str, cell_index: int | None = None) -> None:
    now = dt.datetime.now(UTC).isoformat()
    phase.status, phase.finished, phase.error, phase.cell_index = "failed", now, message, cell_index
    record.status, record.finished = "failed", now
    record.save()


def _add_timing(run_dir: Path, phase: PhaseRecord) -> None:
    """Add the runner's wall time (kernel start included) to the phase's own record."""
    figures = read_phase(run_dir, phase.name)
    if figures:
        write_text_atomic(Path(run_dir) / f"{phase.name}.json",
                          json.dumps({**figures, "seconds": phase.seconds}, indent=2) + "\n")
